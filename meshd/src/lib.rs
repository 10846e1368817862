//! meshd agent library.

pub mod identity;
