//! Taking messages out of the spool and putting them where they belong.

pub mod bounce;
pub mod local;
pub mod trace;
