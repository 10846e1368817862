//! Embeds meshd's eBPF object when it has been built (`cargo xtask build-ebpf`), so the agent
//! binary is self-contained. Without it the library still builds (unit tests need no eBPF
//! toolchain) and the agent explains at start-up how to build the object.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(meshd_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=MESHD_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let default = manifest.join("../target/bpfel-unknown-none/release/meshd-ebpf");
    let object = env::var_os("MESHD_EBPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR")?).join("meshd-ebpf.o");
    if object.is_file() {
        fs::copy(&object, &out)?;
        println!("cargo::rustc-cfg=meshd_ebpf_embedded");
    } else {
        fs::write(&out, [])?;
    }
    Ok(())
}
