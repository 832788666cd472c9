//! Authentication: who may authenticate here (the `auth_users` file and the crypt(3) password hashes in it),
//! and how this host authenticates elsewhere (`smarthost_credentials`).

pub mod credentials;
pub mod password;
pub mod users;

pub use credentials::Credentials;
pub use users::{AuthUsers, AuthUsersError};
