//! Where the workspace's built binaries are. `cargo xtask test` builds them first and passes
//! their folder in `MESHD_BIN_DIR`; otherwise `target/debug` of this workspace is used.

use std::path::PathBuf;

/// The folder holding `meshd` and `testkit`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("MESHD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
    }
}

/// Path of a workspace binary, failing with instructions when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo xtask test` (it builds the eBPF object, meshd and testkit first)",
        path.display()
    );
    path
}

/// A scratch folder for one run, under the system temp dir.
pub fn run_dir(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("meshd-{id}"))
}
