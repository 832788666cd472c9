//! Who may authenticate: the `auth_users` file and the crypt(3) password hashes in it.

pub mod password;
pub mod users;

pub use users::{AuthUsers, AuthUsersError};
