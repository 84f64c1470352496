//! Every `xdplb` command in the README is run by a test, so that the README and the binary
//! cannot drift apart.
//!
//! The commands come from the README itself: lines of its code blocks that run `xdplb`, the
//! first cell of its command tables (synopses such as `xdplb backend set VIP ADDR:PORT
//! [--weight W] [--state up|draining|down]`) and every other inline span that starts with
//! `xdplb `. A synopsis is expanded into its shortest form and its longest (every optional
//! part), once per alternative, and its placeholders (`VIP`, `ADDR:PORT`, `SECS`, `CSV`, ...)
//! are given real values; a placeholder the test does not know fails it.
//!
//! Layer one runs each with the real binary. Commands that talk to the agent are run against
//! a socket that does not exist and must exit 3 ("agent unreachable"), not 2 ("bad input"):
//! clap took them. Those that need no agent (`check`, `autoscale simulate`, `--version`) run
//! for real; `run` and `decap` run for real in a namespace of their own (as root). A span in
//! prose may be a fragment (`xdplb run --no-icmp-echo`): it may lack required arguments, and
//! nothing else.
//!
//! Layer two checks that each subcommand the README shows is run by some end-to-end test:
//! the tests' sources are read for the CLI calls they make (literal argument arrays such as
//! `agent.ok(&["vip", "set", ...])`), and a subcommand none runs needs an entry, with its
//! reason, in [`NOT_RUN_BY_TESTS`] or [`RUN_THROUGH`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{bin, path_str},
    netns::{NS_PREFIX, add_namespace, run_bounded, run_ok},
};

const README: &str = include_str!("../../README.md");

/// How long one command may take (the simulator's week included).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Where a command was found: its kind decides what counts as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A line of a code block: a whole command.
    Block,
    /// The first cell of a command table: a synopsis, whole.
    Table,
    /// A span in prose (or another table cell): may lack required arguments.
    Prose,
}

#[derive(Debug, Clone)]
struct Found {
    /// `xdplb ...` as the README writes it (`\|` read as `|`, `sudo` and the path dropped).
    text: String,
    kind: Kind,
    /// The README's line (1-based).
    line: usize,
}

/// Every `xdplb` command of `readme`.
fn extract(readme: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    let flush = |paragraph: &mut Vec<(usize, &str)>, found: &mut Vec<Found>| {
        if let Some(&(line, _)) = paragraph.first() {
            let text: Vec<&str> = paragraph.iter().map(|(_, l)| *l).collect();
            for span in spans(&text.join(" ")) {
                if let Some(cmd) = as_command(&span) {
                    found.push(Found {
                        text: cmd,
                        kind: Kind::Prose,
                        line,
                    });
                }
            }
        }
        paragraph.clear();
    };
    for (i, line) in readme.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            flush(&mut paragraph, &mut found);
            fence = match fence {
                None => Some(lang.trim().to_owned()),
                Some(_) => None,
            };
            continue;
        }
        if let Some(lang) = &fence {
            if !["", "sh", "shell", "text", "console"].contains(&lang.as_str()) {
                continue;
            }
            if let Some(rest) = line.strip_suffix('\\') {
                pending.push_str(rest);
                continue;
            }
            let whole = std::mem::take(&mut pending) + line;
            if let Some(cmd) = block_command(&whole) {
                found.push(Found {
                    text: cmd,
                    kind: Kind::Block,
                    line: number,
                });
            }
            continue;
        }
        if trimmed.starts_with('|') {
            flush(&mut paragraph, &mut found);
            let row = trimmed.replace("\\|", "\u{1}");
            let cells: Vec<&str> = row.split('|').collect();
            for (c, cell) in cells.iter().enumerate() {
                let cell = cell.replace('\u{1}', "|");
                let command_table = c == 1 && cell.trim_start().starts_with("`xdplb ");
                for span in spans(&cell) {
                    let span = span.trim();
                    let (text, kind) = if command_table {
                        let text = if span.starts_with("xdplb ") {
                            span.to_owned()
                        } else {
                            format!("xdplb {span}")
                        };
                        (Some(text), Kind::Table)
                    } else {
                        (as_command(span), Kind::Prose)
                    };
                    if let Some(text) = text {
                        found.push(Found {
                            text,
                            kind,
                            line: number,
                        });
                    }
                }
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            flush(&mut paragraph, &mut found);
        } else {
            paragraph.push((number, line));
        }
    }
    flush(&mut paragraph, &mut found);
    found
}

/// The inline code spans of `text`.
fn spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// A span that is an `xdplb` or `cargo xtask` command, without a shell redirection.
fn as_command(span: &str) -> Option<String> {
    let span = span.trim();
    (span.starts_with("xdplb ") || span.starts_with("cargo xtask"))
        .then(|| span.split(" > ").next().unwrap_or(span).trim().to_owned())
}

/// A code block's line that runs `xdplb` (after `$ ` and `sudo`, by any path), as `xdplb
/// ...`, or `cargo xtask`, without its comment and redirection.
fn block_command(line: &str) -> Option<String> {
    let line = line.trim().trim_start_matches("$ ");
    let line = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    let line = line.split(" > ").next().unwrap_or(line).trim();
    let line = line.strip_prefix("sudo ").unwrap_or(line);
    if line.starts_with("cargo xtask") {
        return Some(line.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    let (program, rest) = line.split_once(' ').unwrap_or((line, ""));
    (program == "xdplb" || program.ends_with("/xdplb")).then(|| {
        format!(
            "xdplb {}",
            rest.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })
}

/// What the README's meta placeholders stand for (see "CLI": SOURCES and HEALTH).
const META: &[(&str, &str)] = &[
    (
        "SOURCES",
        "--allow CIDR --deny 10.1.0.0/16 --source-rate-limit N --source-prefix-len LEN",
    ),
    (
        "HEALTH",
        "--health http --health-interval 2s --health-timeout 1s --health-rise 2 \
         --health-fall 3 --health-port 8081 --health-method GET --health-uri /healthz \
         --health-expect-status 200",
    ),
    (
        "HOOKS",
        "--notify-up CMD --notify-down CMD|none --sorry ADDR:PORT|ADDR|none",
    ),
];

/// `text` with its optional parts (`[...]`, nested too) dropped, or kept.
fn optional(text: &str, keep: bool) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 || keep => out.push(c),
            _ => {}
        }
    }
    out
}

/// The argument lists a synopsis stands for: shortest and longest, once per alternative of
/// each `a|b|c`, placeholders filled in (or an error naming the one not known).
fn variants(text: &str, files: &Files) -> Result<Vec<Vec<String>>, String> {
    let mut text = text.to_owned();
    for (meta, expansion) in META {
        text = text.replace(meta, expansion);
    }
    let mut all: Vec<Vec<String>> = Vec::new();
    for keep in [false, true] {
        let tokens: Vec<String> = shlex::split(&optional(&text, keep))
            .ok_or("unbalanced quotes")?
            .into_iter()
            .filter(|t| t != "..." && t != "xdplb")
            .collect();
        let mut lists: Vec<Vec<String>> = vec![Vec::new()];
        for (i, token) in tokens.iter().enumerate() {
            let previous = i.checked_sub(1).map(|p| tokens[p].as_str());
            let choices: Vec<&str> = if token.contains('|') && !token.contains('{') {
                token.split('|').collect()
            } else {
                vec![token.as_str()]
            };
            let filled: Vec<String> = choices
                .iter()
                .map(|c| fill(previous, c, files))
                .collect::<Result<_, _>>()?;
            lists = lists
                .into_iter()
                .flat_map(|list| {
                    filled.iter().map(move |f| {
                        let mut list = list.clone();
                        list.push(f.clone());
                        list
                    })
                })
                .collect();
        }
        for list in lists {
            if !all.contains(&list) {
                all.push(list);
            }
        }
    }
    Ok(all)
}

/// Files the commands are given; the scratch directory goes on drop.
struct Files {
    /// A config file that validates: the package's example.
    config: PathBuf,
    /// A load trace.
    trace: PathBuf,
    /// Where commands may write (the README's `/tmp/...`).
    scratch: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

/// A value for `token` (after `previous`): placeholders and paths made real, the rest as is.
fn fill(previous: Option<&str>, token: &str, files: &Files) -> Result<String, String> {
    let value = match (previous, token) {
        (_, "VIP" | "ADDR:PORT/PROTO") => "198.19.0.1:80/tcp",
        (_, "ADDR:PORT") => "10.0.0.2:8080",
        (_, "ADDR") => "10.0.0.2",
        (_, "S") => "wlc",
        (Some("--ring-size"), "N") => "65537",
        (_, "N") => "5",
        (_, "W") => "3",
        (Some("--xdp-mode"), "M") => "native",
        (Some("--forwarding"), "M") => "dsr-l2",
        (_, "IF") => "eth1",
        (_, "SECS") => "0.5",
        (_, "CIDR") => "10.0.0.0/8",
        (_, "LEN") => "24",
        (_, "CMD") => "/bin/true",
        (_, "CSV") => return Ok(path_str(&files.trace)),
        (_, "FILE") => return Ok(path_str(&files.config)),
        (_, t) if t.ends_with(".toml") => return Ok(path_str(&files.config)),
        (_, t) if t.starts_with("/tmp/") => {
            return Ok(path_str(&files.scratch.join(&t["/tmp/".len()..])));
        }
        // Upper-case values that are not placeholders.
        (Some("--health-method"), t) => t,
        (_, t)
            if t.len() > 1
                && t.chars()
                    .all(|c| c.is_ascii_uppercase() || "_:/[]".contains(c))
                && t.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            return Err(format!("a placeholder this test does not know: {t}"));
        }
        (_, t) => t,
    };
    Ok(value.to_owned())
}

/// Options every command takes before its subcommand, with a value.
const GLOBAL_WITH_VALUE: &[&str] = &["-o", "--output", "--socket", "--timeout"];

/// Subcommands that group others (`vip add`, `conn list`).
const GROUPS: &[&str] = &[
    "vip",
    "backend",
    "conn",
    "iface",
    "autoscale",
    "config",
    "cluster",
];

/// The subcommand of an argument list (`vip set`, `stats`, `--version`), global options
/// skipped; `None` if it has none.
fn subcommand<S: AsRef<str>>(args: &[S]) -> Option<String> {
    let mut words = args.iter().map(AsRef::as_ref);
    let first = loop {
        let word = words.next()?;
        if GLOBAL_WITH_VALUE.contains(&word) {
            words.next()?;
        } else if word == "-v" || word == "--verbose" {
        } else {
            break word;
        }
    };
    if GROUPS.contains(&first) {
        match words.next() {
            Some(second) if !second.starts_with('-') => Some(format!("{first} {second}")),
            _ => Some(first.to_owned()),
        }
    } else {
        Some(first.to_owned())
    }
}

/// The example config and a trace, from the repository; a scratch directory of the test
/// `test`'s own.
fn files(test: &str) -> Files {
    let root = repo();
    let scratch = std::env::temp_dir().join(format!("xdplb-readme-{}-{test}", std::process::id()));
    fs::create_dir_all(&scratch).expect("scratch directory");
    Files {
        config: root.join("packaging/xdplb.toml"),
        trace: root.join("examples/traces/flash-sale.csv"),
        scratch,
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_owned()
}

/// Every README command with its argument lists; panics on a placeholder not known.
fn commands(files: &Files) -> Vec<(Found, Vec<Vec<String>>)> {
    let found = extract(README)
        .into_iter()
        .filter(|f| f.text.starts_with("xdplb "));
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for f in found {
        match variants(&f.text, files) {
            Ok(v) => out.push((f, v)),
            Err(err) => problems.push(format!("README line {}: `{}`: {err}", f.line, f.text)),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    out
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Whether `output` is clap's refusal for required arguments alone (a prose fragment).
fn lacks_required_only(output: &Output) -> bool {
    output.status.code() == Some(2)
        && text(&output.stderr).contains("the following required arguments were not provided")
}

/// Commands that run without an agent, for real.
const OFFLINE: &[&str] = &[
    "check",
    "autoscale simulate",
    "--version",
    "completions",
    "man",
];

/// Commands that change the machine (attach XDP programs): run by the root test, in a
/// namespace of their own.
const IN_A_NAMESPACE: &[&str] = &["run", "decap"];

/// The README finds what it should: commands of every kind, the synopses of the command
/// table among them, and each expands without an unknown placeholder.
#[test]
fn the_readme_commands_are_found_and_expanded() {
    let files = files("found");
    let all = commands(&files);
    let count = |kind| all.iter().filter(|(f, _)| f.kind == kind).count();
    eprintln!(
        "{} commands: {} in code blocks, {} synopses, {} in prose",
        all.len(),
        count(Kind::Block),
        count(Kind::Table),
        count(Kind::Prose)
    );
    assert!(count(Kind::Block) >= 10 && count(Kind::Table) >= 20 && count(Kind::Prose) >= 10);
    let texts: Vec<&str> = all.iter().map(|(f, _)| f.text.as_str()).collect();
    for expected in [
        "xdplb conn flush --backend 198.18.1.2:8080",
        "xdplb vip show VIP",
        "xdplb autoscale simulate --trace examples/traces/diurnal-week.csv --policy all \
         --target-per-backend 500 --provisioning-delay 300 --out-csv /tmp/sim.csv --out-svg \
         /tmp/sim.svg",
        "xdplb run --iface eth0 --iface eth1 --config /etc/xdplb.toml --metrics 127.0.0.1:9782",
    ] {
        assert!(texts.contains(&expected), "{expected:?} not in {texts:#?}");
    }
    let set = all
        .iter()
        .find(|(f, _)| f.kind == Kind::Table && f.text.starts_with("xdplb backend set"))
        .expect("the backend set synopsis");
    let states: BTreeSet<&str> = set
        .1
        .iter()
        .filter_map(|args| args.iter().skip_while(|a| *a != "--state").nth(1))
        .map(String::as_str)
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["up", "draining", "down"]),
        "{:?}",
        set.1
    );
    assert!(set.1.contains(&vec![
        "backend".to_owned(),
        "set".into(),
        "198.19.0.1:80/tcp".into(),
        "10.0.0.2:8080".into()
    ]));
}

/// Layer one without root: every command that talks to the agent is taken by clap (exit 3,
/// the agent unreachable, never 2), and those that need no agent succeed.
#[test]
fn every_readme_command_parses_and_the_offline_ones_run() {
    let files = files("parse");
    let missing_socket = files.scratch.join("no-agent.sock");
    let mut problems = Vec::new();
    let mut ran = 0;
    for (found, lists) in commands(&files) {
        for args in lists {
            let key = subcommand(&args).unwrap_or_default();
            if IN_A_NAMESPACE.contains(&key.as_str()) {
                continue;
            }
            let output = run_bounded(
                Command::new(bin())
                    .args(&args)
                    .env("XDPLB_SOCKET", &missing_socket)
                    .current_dir(repo()),
                COMMAND_LIMIT,
            );
            ran += 1;
            eprintln!(
                "line {:>4} {:?}: xdplb {} -> {}",
                found.line,
                found.kind,
                args.join(" "),
                output.status
            );
            let want = if OFFLINE.contains(&key.as_str()) {
                0
            } else {
                3
            };
            let fragment = found.kind == Kind::Prose && lacks_required_only(&output);
            if output.status.code() != Some(want) && !fragment {
                problems.push(format!(
                    "README line {} ({:?}) `{}`: xdplb {} exited {} (want {want}): {}",
                    found.line,
                    found.kind,
                    found.text,
                    args.join(" "),
                    output.status,
                    text(&output.stderr).trim()
                ));
            }
        }
    }
    eprintln!("{ran} command lines run");
    // What the offline commands were asked to write, they wrote.
    for written in ["sim.csv", "sim.svg"] {
        let path = files.scratch.join(written);
        assert!(
            fs::metadata(&path).is_ok_and(|m| m.len() > 0),
            "{} not written",
            path.display()
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A network namespace with `lo` and two interfaces, `eth0` and `eth1`, as the
/// README's commands name them; deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("{NS_PREFIX}{}-readme", std::process::id());
        add_namespace(&name).expect("namespace");
        let ns = Self(name);
        // A veth pair (this kernel has no dummy module).
        run_ok(Command::new("ip").args([
            "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]))
        .expect("veth pair");
        for iface in ["eth0", "eth1"] {
            run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", iface, "up"]))
                .expect("interface up");
        }
        ns
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.0))
            .arg(bin());
        cmd
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// `xdplb ARGS` as `xdplb run` in `ns`, with its own pin directory and state file: it must
/// come up (then it is stopped with `stop --detach`), or, for a fragment, lack required
/// arguments only. `Err` says what went wrong.
fn run_agent(
    ns: &Namespace,
    args: &[String],
    fragment_ok: bool,
    n: usize,
) -> Result<&'static str, String> {
    let dir = std::env::temp_dir().join(format!("xdplb-readme-run-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).expect("directory");
    let socket = dir.join("xdplb.sock");
    let pin_dir = format!("/sys/fs/bpf/xdplb-readme-{}-{n}", std::process::id());
    let log_path = dir.join("run.log");
    let log = fs::File::create(&log_path).expect("log");
    let mut child = ns
        .command()
        .args(args)
        .args(["--pin-dir", &pin_dir, "--state-file"])
        .arg(dir.join("state.json"))
        .env("XDPLB_SOCKET", &socket)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("starting xdplb run");
    let deadline = Instant::now() + COMMAND_LIMIT;
    let result = loop {
        let logged = fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = child.try_wait().expect("waiting for xdplb run") {
            let required = status.code() == Some(2)
                && logged.contains("the following required arguments were not provided");
            break if fragment_ok && required {
                Ok("a fragment: lacks required arguments")
            } else {
                Err(format!("exited {status} before it was ready: {logged}"))
            };
        }
        if logged.contains("agent ready") {
            let stop = run_bounded(
                ns.command()
                    .args(["stop", "--detach"])
                    .env("XDPLB_SOCKET", &socket),
                COMMAND_LIMIT,
            );
            let stopped_by = Instant::now() + COMMAND_LIMIT;
            let status = loop {
                if let Some(status) = child.try_wait().expect("waiting for xdplb run") {
                    break Some(status);
                }
                if Instant::now() > stopped_by {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                thread::sleep(Duration::from_millis(20));
            };
            break if stop.status.success() && status.is_some_and(|s| s.success()) {
                Ok("came up, stopped")
            } else {
                Err(format!(
                    "stop --detach: {} {}; run exited {status:?}",
                    stop.status,
                    text(&stop.stderr)
                ))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("not ready within {COMMAND_LIMIT:?}: {logged}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = fs::remove_dir_all(&pin_dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

/// `xdplb ARGS` as `xdplb decap` in `ns`: it must succeed (or, for a fragment, lack
/// required arguments only). An attach is followed by its detach, so that the next command
/// finds the interface free; a detach is preceded by its attach, so that it has something to
/// remove.
fn decap(ns: &Namespace, args: &[String], fragment_ok: bool) -> Result<&'static str, String> {
    let attach: Vec<&String> = args.iter().filter(|a| *a != "--detach").collect();
    let detaching = attach.len() < args.len();
    let run = |args: &[&String]| run_bounded(ns.command().args(args), COMMAND_LIMIT);
    let check = |what: &str, out: Output| {
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} exited {}: {}",
                out.status,
                text(&out.stderr)
            ))
        }
    };
    if detaching {
        let before = run(&attach);
        if fragment_ok && lacks_required_only(&before) {
            return Ok("a fragment: lacks required arguments");
        }
        check("attaching first", before)?;
    }
    let output = run(&args.iter().collect::<Vec<_>>());
    if fragment_ok && lacks_required_only(&output) {
        return Ok("a fragment: lacks required arguments");
    }
    check("it", output)?;
    if !detaching {
        let mut detach = attach.clone();
        let flag = "--detach".to_owned();
        detach.push(&flag);
        check("detaching after", run(&detach))?;
        return Ok("attached, detached");
    }
    Ok("attached first, detached")
}

/// Layer one as root: the README's `xdplb run` and `xdplb decap` commands run for real in a
/// namespace whose interfaces have the README's names: each agent comes up and stops, each
/// decap attaches and detaches.
#[test]
#[ignore = "needs root"]
fn the_readme_run_and_decap_commands_run_in_a_namespace() {
    let files = files("run");
    let ns = Namespace::new();
    let mut problems = Vec::new();
    let (mut runs, mut came_up) = (0, 0);
    for (found, lists) in commands(&files) {
        for args in lists {
            let key = subcommand(&args).unwrap_or_default();
            let fragment_ok = found.kind == Kind::Prose;
            let result = match key.as_str() {
                "run" => {
                    runs += 1;
                    run_agent(&ns, &args, fragment_ok, runs)
                }
                "decap" => decap(&ns, &args, fragment_ok),
                _ => continue,
            };
            eprintln!(
                "line {:>4}: xdplb {}: {result:?}",
                found.line,
                args.join(" ")
            );
            came_up += usize::from(result == Ok("came up, stopped"));
            if let Err(err) = result {
                problems.push(format!(
                    "README line {} `{}`: xdplb {}: {err}",
                    found.line,
                    found.text,
                    args.join(" ")
                ));
            }
        }
    }
    for iface in ["eth0", "eth1"] {
        let _ = run_bounded(
            ns.command().args(["decap", "--iface", iface, "--detach"]),
            COMMAND_LIMIT,
        );
    }
    eprintln!("{runs} run commands, {came_up} agents came up");
    assert!(
        came_up >= 2,
        "the README's whole `xdplb run` commands were not found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The README's `cargo xtask` commands are taken by xtask's parser: each is run with
/// `--help` after it, which clap reaches only once every argument before it is taken, and
/// nothing runs. (CI runs `cargo xtask test`, which runs the package round trip and `demo` as
/// root; `bench` is run by hand.)
#[test]
fn every_readme_cargo_xtask_command_parses() {
    let xtask = lb_tests::xdplb_bin().with_file_name("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: `cargo xtask` builds it",
        xtask.display()
    );
    let mut problems = Vec::new();
    let mut subcommands = BTreeSet::new();
    for found in extract(README) {
        let Some(rest) = found.text.strip_prefix("cargo xtask") else {
            continue;
        };
        let args = shlex::split(rest).expect("balanced quotes");
        subcommands.extend(args.first().cloned());
        let output = run_bounded(
            Command::new(&xtask).args(&args).arg("--help"),
            COMMAND_LIMIT,
        );
        if !output.status.success() || !text(&output.stdout).contains("Usage") {
            problems.push(format!(
                "README line {} `{}`: {} {}",
                found.line,
                found.text,
                output.status,
                text(&output.stderr).trim()
            ));
        }
    }
    eprintln!("cargo xtask {subcommands:?}");
    for expected in ["demo", "test", "build", "package", "setup", "bench"] {
        assert!(
            subcommands.contains(expected),
            "{expected}: {subcommands:?}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Subcommands the tests run without a literal argument array, so that the scan cannot see
/// them: the subcommand, the file, and the text in it that runs it.
const RUN_THROUGH: &[(&str, &str, &str)] = &[
    // `xdplb top` is typed into a tmux pane, as a string.
    ("top", "tests/tests/observe.rs", "top; echo top-exited"),
    // Every agent test starts `xdplb run` through the harness's argument vector.
    ("run", "tests/src/agent.rs", "\"run\".into()"),
];

/// README subcommands that no end-to-end test needs to run against a live agent, each with
/// its reason. Empty today: add one only with the reason in a comment.
const NOT_RUN_BY_TESTS: &[(&str, &str)] = &[];

/// The leading string literals of each array literal (`["vip", "set", VIP]`) and `.arg("x")`
/// call in `source`.
fn literal_calls(source: &str) -> Vec<Vec<String>> {
    let mut calls = Vec::new();
    let starts = source
        .match_indices('[')
        .map(|(i, _)| i + 1)
        .chain(source.match_indices(".arg(").map(|(i, m)| i + m.len()));
    for start in starts {
        let mut rest = &source[start..];
        let mut words = Vec::new();
        loop {
            rest = rest.trim_start();
            let Some(after) = rest.strip_prefix('"') else {
                break;
            };
            let Some(end) = after.find('"') else {
                break;
            };
            words.push(after[..end].to_owned());
            rest = &after[end + 1..];
            for suffix in [".into()", ".to_owned()", ".to_string()"] {
                rest = rest.strip_prefix(suffix).unwrap_or(rest);
            }
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(next) => rest = next,
                None => break,
            }
        }
        if !words.is_empty() {
            calls.push(words);
        }
    }
    calls
}

/// The subcommands the tests' sources run (`tests/tests/*.rs` but this file, `tests/src`).
fn subcommands_run_by_tests() -> BTreeMap<String, BTreeSet<String>> {
    let root = repo();
    let mut run: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dir in ["tests/tests", "tests/src"] {
        let mut paths: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .expect("tests directory")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .filter(|p| p.file_name().is_some_and(|n| n != "readme.rs"))
            .collect();
        paths.sort();
        for path in paths {
            let source = fs::read_to_string(&path).expect("test source");
            let name = path
                .strip_prefix(&root)
                .map(path_str)
                .unwrap_or_else(|_| path_str(&path));
            for call in literal_calls(&source) {
                if let Some(key) = subcommand(&call) {
                    run.entry(key).or_default().insert(name.clone());
                }
            }
        }
    }
    run
}

/// Layer two: each subcommand the README shows is run by a test (found in the tests'
/// sources), or reached as [`RUN_THROUGH`] says, or excused in [`NOT_RUN_BY_TESTS`]; entries of
/// those lists that are no longer needed or no longer true fail too.
#[test]
fn every_readme_subcommand_is_run_by_a_test() {
    let files = files("cover");
    let readme: BTreeSet<String> = commands(&files)
        .iter()
        .flat_map(|(_, lists)| lists.iter().filter_map(|args| subcommand(args)))
        .collect();
    let run = subcommands_run_by_tests();
    let mut problems = Vec::new();
    for (key, file, text) in RUN_THROUGH {
        let source = fs::read_to_string(repo().join(file)).unwrap_or_default();
        if !source.contains(text) {
            problems.push(format!(
                "RUN_THROUGH: {file} no longer has {text:?} (for {key})"
            ));
        }
    }
    for key in &readme {
        let through = RUN_THROUGH.iter().any(|(k, ..)| k == key);
        let excused = NOT_RUN_BY_TESTS.iter().any(|(k, _)| k == key);
        match run.get(key) {
            Some(files) => eprintln!(
                "{key:<20} {}",
                files.iter().cloned().collect::<Vec<_>>().join(" ")
            ),
            None if through || excused => eprintln!("{key:<20} (listed)"),
            None => problems.push(format!(
                "`xdplb {key}` is in the README but no test runs it: add an end-to-end step, or \
                 an entry with its reason to NOT_RUN_BY_TESTS"
            )),
        }
    }
    for (key, _) in NOT_RUN_BY_TESTS {
        if !readme.contains(*key) || run.contains_key(*key) {
            problems.push(format!("NOT_RUN_BY_TESTS: {key} is not needed any more"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn synopses_expand_to_their_shortest_and_longest_forms() {
    let files = Files {
        config: "/c.toml".into(),
        trace: "/t.csv".into(),
        scratch: std::env::temp_dir().join(format!("xdplb-readme-{}-unused", std::process::id())),
    };
    let got = variants(
        "xdplb backend add VIP ADDR[:PORT] [--weight W] [--state up|down]",
        &files,
    )
    .unwrap();
    let want: Vec<Vec<String>> = [
        "backend add 198.19.0.1:80/tcp 10.0.0.2",
        "backend add 198.19.0.1:80/tcp 10.0.0.2:8080 --weight 3 --state up",
        "backend add 198.19.0.1:80/tcp 10.0.0.2:8080 --weight 3 --state down",
    ]
    .iter()
    .map(|s| s.split(' ').map(str::to_owned).collect())
    .collect();
    assert_eq!(got, want);
    assert!(variants("xdplb vip show SOMETHING", &files).is_err());
    assert_eq!(
        subcommand(&["-o", "json", "vip", "set", "x"]).as_deref(),
        Some("vip set")
    );
    assert_eq!(subcommand(&["stats", "--watch"]).as_deref(), Some("stats"));
    assert_eq!(
        literal_calls("agent.ok(&[\n \"conn\",\n \"list\", VIP]); x.arg(\"--version\")"),
        [
            vec!["conn".to_owned(), "list".into()],
            vec!["--version".into()]
        ]
    );
    assert_eq!(
        block_command("sudo target/release/xdplb stop   # comment").as_deref(),
        Some("xdplb stop")
    );
}
