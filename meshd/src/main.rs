//! `meshd`: parse the command line, then run the agent or talk to it.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshd::{
    admin::{client, Request},
    cli::{CaCommand, Cli, Command, PolicyCommand},
    config::{Config, WorkloadConfig},
};

/// EX_USAGE: the configuration is invalid.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` installs logging itself once its configuration (OTLP export) is known.
    if !matches!(cli.command, Command::Run(_)) {
        let _ = meshd::telemetry::init(cli.log_format, None);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd: {}", message(&e));
            if e.downcast_ref::<meshd::config::Error>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, each cause only when the message does not already
/// contain it (most of meshd's messages include their cause).
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::load(&args.config)?;
            let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
            let telemetry = runtime.block_on(async {
                meshd::telemetry::init(cli.log_format, config.otlp.as_ref().map(|o| (o, config.node.as_str())))
            })?;
            let result = runtime.block_on(async {
                let agent = meshd::app::Agent::start(config, args.ebpf_object).await?;
                agent.serve().await
            });
            // The runtime still runs: the exporter's last batch goes out through it.
            telemetry.shutdown();
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            println!("{}", serde_yaml::to_string(&config).context("print the configuration")?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { admin, json } => {
            let body = call(&admin.socket()?, &Request::Status)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", meshd::status::render(&body));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll { admin, name, cgroup, netns, spiffe_id, labels } => {
            let workload = WorkloadConfig { name, cgroup, netns, spiffe_id, labels: labels.into_iter().collect() };
            let body = call(&admin.socket()?, &Request::Enroll { workload })?;
            println!("{}", serde_json::to_string(&body)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Unenroll { admin, name } => {
            let body = call(&admin.socket()?, &Request::Unenroll { name })?;
            println!("{}", serde_json::to_string(&body)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(CaCommand::Init { dir, trust_domain, force }) => {
            let td = meshd::identity::TrustDomain::new(&trust_domain)?;
            meshd::identity::DevCa::init(&dir, &td, force)?;
            println!("development CA for {trust_domain} written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(CaCommand::Issue { dir, spiffe_id, out, ttl }) => {
            let ca = meshd::identity::DevCa::load(&dir)?;
            let id = meshd::identity::SpiffeId::new(&spiffe_id)?;
            let ttl = meshd::config::parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            if ttl < std::time::Duration::from_secs(1) {
                bail!("--ttl {ttl:?}: an SVID must live at least 1s");
            }
            let svid = ca.issue(&id, ttl)?;
            meshd::identity::write_svid_dir(&out, &svid, &ca.bundle())?;
            println!("SVID for {spiffe_id} written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Apply { admin, file }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read policy {}", file.display()))?;
            let body = call(&admin.socket()?, &Request::PolicyApply { path: file.display().to_string(), text })?;
            println!("{}", serde_json::to_string(&body)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn call(socket: &std::path::Path, request: &Request) -> Result<serde_json::Value> {
    let response = client::call(socket, request)?;
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "the agent refused without a reason".into()));
    }
    Ok(response.body)
}
