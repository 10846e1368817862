//! meshd agent library.
