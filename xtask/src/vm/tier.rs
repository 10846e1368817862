//! The VM test tier: boots each test kernel and runs the privileged kernel-TLS tests
//! (`tests/tests/vm_ktls.rs`) inside it, two VMs at once, then writes
//! `target/vm-test/report.json` — kernel versions, tests passed/failed, the tls_stat deltas and
//! the CPU ratio the tests measured.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    initramfs,
    kernel::{self, Kernel, KernelChoice},
    qemu::{self, VmRun},
    tail, workspace_root,
};

/// The test binary of `tests/tests/<name>.rs`, built if needed.
pub fn test_binary(name: &str) -> Result<PathBuf> {
    let out = Command::new(crate::compile::cargo())
        .current_dir(workspace_root())
        .env("MESHD_EBPF_OBJECT", crate::compile::ebpf_object())
        .args(["test", "--package", "meshd-tests", "--test", name, "--no-run", "--message-format=json"])
        .output()
        .context("build the VM test binary")?;
    if !out.status.success() {
        bail!("build the VM test binary {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo did not report the executable of test {name}")
}

pub fn run_tier(refresh: bool, filter: &[String]) -> Result<()> {
    let start = Instant::now();
    let exe = test_binary("vm_ktls")?;
    let mut kernels = Vec::new();
    for choice in [KernelChoice::Bookworm, KernelChoice::Newest] {
        let k = kernel::ensure(choice, refresh)?;
        initramfs::ensure(&k)?;
        kernels.push(k);
    }
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels.iter().map(|k| scope.spawn(|| run_one(k, &exe, filter))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| json!({ "ok": false, "error": "VM thread panicked" })))
            .collect()
    });
    let ok = results.iter().all(|r| r["ok"] == true);
    println!("\n== VM tier ({:.0} s)", start.elapsed().as_secs_f64());
    for r in &results {
        println!(
            "{} {} {}: {} passed, {} failed ({:.0} s){}",
            if r["ok"] == true { "PASS" } else { "FAIL" },
            r["choice"].as_str().unwrap_or("?"),
            r["release"].as_str().unwrap_or("?"),
            r["passed"],
            r["failed"],
            r["vm_seconds"].as_f64().unwrap_or(0.0),
            r["error"].as_str().map(|e| format!("\n{e}")).unwrap_or_default()
        );
        let cpu = &r["results"]["cpu_per_byte"];
        if let (Some(all), Some(user)) =
            (cpu["ktls_over_userspace"].as_f64(), cpu["ktls_over_userspace_user_cpu"].as_f64())
        {
            println!("  agent CPU per byte, kernel TLS / userspace: {all:.2} in all, {user:.2} in userspace (emulated CPU: ratios, not speeds)");
        }
    }
    let report = json!({ "ok": ok, "total_seconds": start.elapsed().as_secs_f64(), "kernels": results });
    let path = workspace_root().join("target/vm-test/report.json");
    std::fs::create_dir_all(path.parent().context("report dir")?)?;
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", path.display()))?;
    println!("report: {}", path.display());
    if !ok {
        bail!("the VM tier failed (see above and {})", path.display());
    }
    Ok(())
}

fn run_one(k: &Kernel, exe: &Path, filter: &[String]) -> Value {
    let mut r = json!({ "choice": k.choice, "release": k.release, "package_version": k.version, "suite": k.suite,
                        "ktls_rekey_expected": k.has_ktls_rekey(), "ok": false });
    let out = workspace_root().join("target/vm-test").join(&k.choice);
    let _ = std::fs::remove_dir_all(&out);
    if let Err(e) = std::fs::create_dir_all(&out) {
        r["error"] = json!(format!("create {}: {e}", out.display()));
        return r;
    }
    let mut command: Vec<String> = vec![exe.display().to_string(), "--test-threads=1".into()];
    command.extend(filter.iter().cloned());
    let mut run = VmRun::new(k.clone(), &[]);
    run.command = command;
    run.timeout = Duration::from_secs(900);
    run.memory_mb = 2048;
    run.out_dir = Some(out.clone());
    run.env.push(("MESHD_BIN_DIR".into(), crate::compile::bin_dir().display().to_string()));
    run.env.push(("RUST_BACKTRACE".into(), "1".into()));
    match qemu::run(&run) {
        Ok(outcome) => {
            let _ = std::fs::write(out.join("output.log"), &outcome.output);
            let _ = std::fs::write(out.join("console.log"), &outcome.console);
            let (passed, failed) = counts(&outcome.output);
            r["passed"] = json!(passed);
            r["failed"] = json!(failed);
            r["exit_code"] = json!(outcome.exit_code);
            r["vm_seconds"] = json!(outcome.duration.as_secs_f64());
            r["results"] = collect(&out);
            r["ok"] = json!(outcome.exit_code == 0 && failed == 0 && passed > 0);
            if outcome.exit_code != 0 {
                r["error"] = json!(tail(&outcome.output, 60));
            }
        }
        Err(e) => r["error"] = json!(format!("{e:#}")),
    }
    r
}

/// Passed and failed counts from libtest's summary line.
fn counts(output: &str) -> (u64, u64) {
    let line = output.lines().rev().find(|l| l.starts_with("test result:")).unwrap_or("");
    let num = |word: &str| {
        line.split(';')
            .find_map(|part| part.trim().strip_suffix(word).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok()))
    };
    (num(" passed").unwrap_or(0), num(" failed").unwrap_or(0))
}

/// The JSON results the tests wrote to `$MESHD_VM_OUT`.
fn collect(dir: &Path) -> Value {
    let mut all = serde_json::Map::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            if let (Some(stem), Ok(text)) = (path.file_stem(), std::fs::read_to_string(&path)) {
                all.insert(stem.to_string_lossy().into(), serde_json::from_str(&text).unwrap_or(Value::Null));
            }
        }
    }
    Value::Object(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summaries_parse() {
        let out =
            "…\ntest result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s\n";
        assert_eq!(counts(out), (3, 1));
        assert_eq!(counts("garbage"), (0, 0));
    }
}
