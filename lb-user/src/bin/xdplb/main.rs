//! `xdplb`: the agent (`xdplb run`) and the CLI that drives it over its API socket.

mod cli;
mod commands;
mod conn;
mod stats;
mod top;

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use lb_user::{client::CallError, config::Config};

use crate::cli::{AutoscaleCommand, Cli, Command, Output};

/// The exit codes (`xdplb --help` and the README list them).
mod exit {
    /// The operation failed here: missing capabilities, no such interface, the kernel refused.
    pub const FAILED: u8 = 1;
    /// Bad arguments or a bad config file (clap's own usage errors are 2 too).
    pub const BAD_INPUT: u8 = 2;
    /// The agent cannot be reached or did not answer in time.
    pub const UNREACHABLE: u8 = 3;
    /// The agent refused the request (HTTP 4xx).
    pub const REFUSED: u8 = 4;
    /// The agent failed at the request (HTTP 5xx).
    pub const AGENT_FAILED: u8 = 5;
}

/// The exit code that says what kind of error `err` is: the first cause in its chain that
/// tells.
fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            return match call {
                CallError::Unreachable { .. } | CallError::Timeout { .. } => exit::UNREACHABLE,
                CallError::Refused(_) => exit::REFUSED,
                CallError::Failed(_) => exit::AGENT_FAILED,
            };
        }
        if cause.is::<lb_user::config::ConfigError>() || cause.is::<lb_user::model::BadInput>() {
            return exit::BAD_INPUT;
        }
        if let Some(model) = cause.downcast_ref::<lb_user::model::Error>() {
            return match model {
                lb_user::model::Error::Maps(_) => exit::FAILED,
                _ => exit::BAD_INPUT,
            };
        }
    }
    exit::FAILED
}

/// `xdplb --version`: the crate's version, the git revision it was built from and the
/// fingerprint of the embedded XDP program (as pin directories and `status` name it).
fn version() -> String {
    format!(
        "{} (git {}, program {})",
        env!("CARGO_PKG_VERSION"),
        env!("XDPLB_GIT_REVISION"),
        lb_user::loader::object_fingerprint()
    )
}

fn parse() -> Result<Cli, clap::Error> {
    let command = Cli::command().version(version());
    Cli::from_arg_matches(&command.try_get_matches()?)
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            eprintln!("xdplb: error: {}", one_line(&err.to_string()));
            return ExitCode::from(exit::BAD_INPUT);
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
            lb_user::autoscale::cli::simulate_command(&args, cli.output == Output::Json)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "xdplb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man_pages(&dir),
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
            ExitCode::from(exit_code(&err))
        }
    }
}

/// `xdplb man DIR`: xdplb.1 and a page per subcommand (xdplb-vip-add.1, ...), hidden ones left
/// out.
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = Cli::command().version(version());
    for hidden in ["completions", "man"] {
        command = command.mut_subcommand(hidden, |sub| sub.hide(true));
    }
    command.build();
    write_pages(&command, "xdplb", dir)
}

fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    let page = command.clone().name(name.to_owned());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
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
            ExitCode::from(exit::BAD_INPUT)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand: its `--help` has an example, and each positional argument
    /// a description.
    #[test]
    fn every_help_has_an_example_and_every_positional_a_description() {
        fn walk(command: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name()).trim().to_owned();
            let after = command
                .get_after_help()
                .or(command.get_after_long_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            if !after.contains("Example") {
                problems.push(format!("{path}: no example"));
            }
            for arg in command.get_positionals() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    problems.push(format!("{path}: <{}> has no description", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &path, problems);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut problems = Vec::new();
        walk(&command, "", &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_follow_the_kind_of_error() {
        let refused = anyhow::Error::new(CallError::Refused("no VIP".into()));
        assert_eq!(exit_code(&refused), exit::REFUSED);
        let failed = anyhow::Error::new(CallError::Failed("maps".into())).context("adding");
        assert_eq!(exit_code(&failed), exit::AGENT_FAILED);
        let unreachable = anyhow::Error::new(CallError::Unreachable {
            socket: "/nowhere".into(),
            why: "No such file or directory".into(),
        });
        assert_eq!(exit_code(&unreachable), exit::UNREACHABLE);
        let bad = anyhow::Error::new(lb_user::model::Error::BadBackend("x".into()));
        assert_eq!(exit_code(&bad), exit::BAD_INPUT);
        assert_eq!(exit_code(&anyhow::anyhow!("EPERM")), exit::FAILED);
    }
}
