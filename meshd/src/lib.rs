//! meshd agent library.

pub mod identity;
pub mod tls;
