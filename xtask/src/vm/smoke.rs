//! `cargo xtask vm-test`: for each kernel, boot it and run `smoke.py` in the guest, which proves
//! the environment the real VM tests need (see that file). Writes `target/vm-test/report.json`.

use super::accel;
use super::kernel::{self, Kernel, KernelChoice};
use super::qemu::{self, VmOutcome, VmRun};
use super::{initramfs, tail, workspace_root};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const SMOKE_PY: &str = include_str!("smoke.py");

#[derive(clap::Args, Debug)]
pub struct VmTestArgs {
    /// Kernels to test (default: all).
    #[arg(long = "kernel", value_enum)]
    kernels: Vec<KernelChoice>,
    /// Re-resolve the kernels on the Debian mirror instead of using the cached choice.
    #[arg(long)]
    refresh: bool,
    /// Boot the kernels one after another instead of two VMs at once.
    #[arg(long)]
    sequential: bool,
    /// Only the environment smoke check (python), not the kernel-TLS test tier.
    #[arg(long)]
    smoke: bool,
    /// Per-VM timeout in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Debugging: run this command in each guest instead of the smoke check, e.g.
    /// `cargo xtask vm-test --kernel newest -- cat /proc/net/tls_stat`.
    #[arg(last = true)]
    command: Vec<String>,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self { kernels: Vec::new(), refresh: false, sequential: false, smoke: false, timeout: 300, command: Vec::new() }
    }
}

pub fn vm_test(args: &VmTestArgs) -> Result<()> {
    if !args.smoke && args.command.is_empty() {
        crate::compile::build_all()?;
        return super::tier::run_tier(args.refresh, &[]);
    }
    let start = Instant::now();
    let choices =
        if args.kernels.is_empty() { vec![KernelChoice::Bookworm, KernelChoice::Newest] } else { args.kernels.clone() };
    let mut kernels = Vec::new();
    for choice in choices {
        let k = kernel::ensure(choice, args.refresh)?;
        initramfs::ensure(&k)?;
        let rekey = if k.has_ktls_rekey() { "has kTLS rekey" } else { "NO kTLS rekey (< 6.14)" };
        println!("kernel {:8} {} (linux-image-amd64 {} from {}; {rekey})", k.choice, k.release, k.version, k.suite);
        kernels.push(k);
    }
    let prepared = start.elapsed();
    let first = kernels.first().context("no kernel selected")?;
    let accel = accel::accel(first)?;
    if !args.command.is_empty() {
        return run_command(&kernels, &args.command, Duration::from_secs(args.timeout));
    }

    let results: Vec<Value> = if args.sequential {
        kernels.iter().map(|k| smoke_one(k, args.timeout)).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = kernels.iter().map(|k| scope.spawn(move || smoke_one(k, args.timeout))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| json!({ "error": "smoke thread panicked" })))
                .collect()
        })
    };

    let ok = results.iter().all(|r| r["ok"] == true);
    println!(
        "\n== vm-test summary ({}, {} VMs {})",
        accel.name(),
        results.len(),
        if args.sequential { "in turn" } else { "at once" }
    );
    for r in &results {
        println!(
            "{} {} {} — boot to userspace {:.2} s, whole VM {:.1} s",
            if r["ok"] == true { "PASS" } else { "FAIL" },
            r["choice"].as_str().unwrap_or("?"),
            r["release"].as_str().unwrap_or("?"),
            r["guest_uptime_at_start_s"].as_f64().unwrap_or(f64::NAN),
            r["vm_seconds"].as_f64().unwrap_or(f64::NAN)
        );
        for c in r["checks"].as_array().into_iter().flatten() {
            let status = c["status"].as_str().unwrap_or("?").to_uppercase();
            println!("  {status:4} {:16} {}", c["name"].as_str().unwrap_or("?"), c["detail"].as_str().unwrap_or(""));
        }
        if let Some(e) = r["error"].as_str() {
            println!("  ERROR {e}");
        }
        let delta = &r["tls_stat_delta"];
        let nonzero: Vec<String> = delta
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_i64() != Some(0))
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        println!("  tls_stat delta: {}", nonzero.join(", "));
    }
    let total = start.elapsed();
    println!("total {:.1} s (kernel/initramfs preparation {:.1} s)", total.as_secs_f64(), prepared.as_secs_f64());
    let report = json!({
        "ok": ok,
        "accel": accel.name(),
        "parallel": !args.sequential,
        "total_seconds": total.as_secs_f64(),
        "prepare_seconds": prepared.as_secs_f64(),
        "kernels": results,
    });
    let path = workspace_root().join("target/vm-test/report.json");
    write(&path, &report)?;
    println!("report: {}", path.display());
    if !ok {
        bail!("vm-test failed (see above and {})", path.display());
    }
    Ok(())
}

fn write(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).context("serializing the vm-test report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Runs the smoke check on one kernel; never fails, the result records errors.
fn smoke_one(k: &Kernel, timeout_s: u64) -> Value {
    let mut result = json!({
        "choice": k.choice, "suite": k.suite, "package_version": k.version, "release": k.release,
        "ktls_rekey_expected": k.has_ktls_rekey(), "ok": false,
    });
    match run_smoke(k, Duration::from_secs(timeout_s)) {
        Ok((outcome, guest)) => {
            let failed = guest["checks"].as_array().is_none_or(|cs| cs.iter().any(|c| c["status"] == "fail"));
            result["ok"] = json!(outcome.exit_code == 0 && !failed);
            result["exit_code"] = json!(outcome.exit_code);
            result["vm_seconds"] = json!(outcome.duration.as_secs_f64());
            result["accel"] = json!(outcome.accel.name());
            result["guest_uptime_at_start_s"] = guest["uptime_at_start"].clone();
            for key in ["checks", "tls_stat_before", "tls_stat_after", "tls_stat_delta"] {
                result[key] = guest[key].clone();
            }
            if outcome.exit_code != 0 && guest.is_null() {
                result["error"] =
                    json!(format!("smoke.py exited {}:\n{}", outcome.exit_code, tail(&outcome.output, 30)));
            }
        }
        Err(e) => result["error"] = json!(format!("{e:#}")),
    }
    result
}

fn run_smoke(k: &Kernel, timeout: Duration) -> Result<(VmOutcome, Value)> {
    let out = workspace_root().join("target/vm-test").join(&k.choice);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = out.join("smoke.py");
    std::fs::write(&script, SMOKE_PY).with_context(|| format!("writing {}", script.display()))?;
    let script_s = script.to_str().context("smoke.py path is not UTF-8")?;
    let mut run = VmRun::new(k.clone(), &["/usr/bin/python3", "-u", script_s]);
    run.timeout = timeout;
    run.out_dir = Some(out.clone());
    run.env.push(("MESHD_EXPECT_RELEASE".into(), k.release.clone()));
    run.env.push(("MESHD_EXPECT_REKEY".into(), if k.has_ktls_rekey() { "1" } else { "0" }.into()));
    let outcome = qemu::run(&run)?;
    std::fs::write(out.join("output.log"), &outcome.output).context("writing output.log")?;
    std::fs::write(out.join("console.log"), &outcome.console).context("writing console.log")?;
    let result_path = out.join("result.json");
    let guest = match std::fs::read_to_string(&result_path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", result_path.display()))?,
        Err(_) => Value::Null,
    };
    Ok((outcome, guest))
}

/// `vm-test -- CMD…`: runs CMD in each guest, shows its output, fails if any exit code is non-zero.
fn run_command(kernels: &[Kernel], command: &[String], timeout: Duration) -> Result<()> {
    let mut failed = Vec::new();
    for k in kernels {
        let mut run = VmRun::new(k.clone(), &[]);
        run.command = command.to_vec();
        run.timeout = timeout;
        let outcome = qemu::run(&run)?;
        println!("== {} ({}): exit {} after {:.1?}", k.release, k.choice, outcome.exit_code, outcome.duration);
        print!("{}", outcome.output);
        if outcome.exit_code != 0 {
            failed.push(k.release.clone());
        }
    }
    if !failed.is_empty() {
        bail!("the command failed on {failed:?}");
    }
    Ok(())
}
