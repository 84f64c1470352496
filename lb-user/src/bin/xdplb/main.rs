//! `xdplb`: the agent (`xdplb run`) and the CLI that drives it over its API socket.

mod cli;
mod commands;
mod conn;
mod stats;
mod top;

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use lb_user::config::Config;

use crate::cli::{AutoscaleCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            eprintln!("xdplb: error: {}", one_line(&err.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let level = if cli.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Run(mut options) => {
            options.socket = cli.socket;
            lb_user::daemon::run(*options)
        }
        Command::Check { file } => return check(&file),
        Command::Decap {
            iface,
            detach,
            xdp_mode,
            pin_root,
        } => {
            if detach {
                lb_user::decap::detach(&pin_root, &iface)
            } else {
                lb_user::decap::attach(&pin_root, &iface, xdp_mode)
            }
        }
        Command::Autoscale(AutoscaleCommand::Simulate(args)) => {
            lb_user::autoscale::cli::simulate_command(&args)
        }
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                let endpoint = lb_user::client::Endpoint {
                    socket: &cli.socket,
                    timeout: std::time::Duration::from_secs_f64(cli.timeout),
                };
                rt.block_on(commands::client_command(command, endpoint, cli.output))
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xdplb: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xdplb check -f FILE`: the config's errors, one line each, or what it holds.
fn check(file: &Path) -> ExitCode {
    let checked = Config::load(file).and_then(|config| {
        lb_user::config::check_rules(&config)
            .map_err(|err| lb_user::config::ConfigError::Invalid(vec![err.to_string()]))?;
        Ok(config)
    });
    match checked {
        Ok(config) => {
            let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: ok ({} VIPs, {backends} backends)",
                file.display(),
                config.vips.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            let message = match err {
                lb_user::config::ConfigError::InFile { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            for line in message.lines() {
                eprintln!("xdplb: error: {}: {line}", file.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: the error and, if it lists them, the values it accepts.
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match lines.find(|l| l.starts_with("[possible values") || l.starts_with("tip:")) {
        Some(more) => format!("{first} {more}"),
        None => first.to_owned(),
    }
}
