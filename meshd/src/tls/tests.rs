//! In-process handshake tests over tokio duplex pipes.

mod handshake;
mod matrix;
mod rotation;
mod support;
