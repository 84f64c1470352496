//! `--profile`: where the CPUs' time goes during one round of the xdplb end-to-end case.
//! `perf record -a -g` with the software `cpu-clock` event (this VM has no hardware counters)
//! over every CPU, the gateway's NAPI threads, the generator and whatever else shares the
//! machine; `perf report` summarized by command and by category of symbol: the balancer's
//! BPF program, veth/NAPI/redirect, XDP-frame-to-skb conversion, the kernel's stack, the
//! generator (test_run live frames), idle, other processes.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::bench::{Profile, Share};
use lb_tests::netns::run_bounded;

const PERF: &str = "perf";
/// Samples per second and CPU.
const FREQUENCY: &str = "2000";
/// Symbols listed in the results (the summary file lists more).
const TOP: usize = 25;

/// A running `perf record`.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts recording every CPU into `data`.
    pub fn start(data: &Path) -> Self {
        let child = Command::new(PERF)
            .args([
                "record",
                "-a",
                "-g",
                "-e",
                "cpu-clock",
                "-F",
                FREQUENCY,
                "-o",
            ])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {PERF} record: {err}"));
        // perf sets up its buffers before it samples: give it that time.
        std::thread::sleep(Duration::from_millis(500));
        Self {
            child,
            data: data.to_owned(),
        }
    }

    /// Stops the recording (SIGINT, as Ctrl-C) and waits for perf to write its file.
    pub fn stop(mut self) -> PathBuf {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT to perf");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait().expect("waiting for perf") {
                Some(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    // perf writes its file, then ends the way SIGINT ends a process.
                    let interrupted = status.signal() == Some(libc::SIGINT);
                    assert!(
                        status.success() || status.code() == Some(130) || interrupted,
                        "perf record: {status}"
                    );
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("perf record did not stop within 30 s of SIGINT");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.data
    }
}

/// One line of `perf report --sort comm,sym`.
struct Line {
    samples: u64,
    comm: String,
    symbol: String,
}

/// Summarizes `data` into a `Profile` and a text file `summary` (commands, categories, the top
/// symbols of the benchmark's own threads and of the gateway's kernel threads).
pub fn summarize(data: &Path, summary: &Path, forwarded_pps: f64) -> Profile {
    let out = run_bounded(
        Command::new(PERF)
            .args(["report", "--stdio", "--no-children", "-g", "none"])
            .args(["--sort", "comm,sym", "-F", "overhead,sample,comm,sym", "-i"])
            .arg(data),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "perf report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Line> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse)
        .collect();
    let total: u64 = lines.iter().map(|l| l.samples).sum();
    assert!(total > 0, "perf recorded no samples");
    let own = std::fs::read_to_string("/proc/self/comm")
        .unwrap_or_default()
        .trim()
        .to_owned();

    // The benchmark's threads and the gateway's: not idle, not another process.
    let ours = |l: &Line| {
        !matches!(
            category(&l.comm, &l.symbol, &own),
            "idle" | "other processes sharing the machine"
        )
    };
    let shares_of = |only_ours: bool, by: &dyn Fn(&Line) -> String| -> Vec<Share> {
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        for line in lines.iter().filter(|l| !only_ours || ours(l)) {
            *sums.entry(by(line)).or_default() += line.samples;
        }
        let of: u64 = sums.values().sum();
        let mut v: Vec<Share> = sums
            .into_iter()
            .map(|(name, n)| Share {
                name,
                share: n as f64 / of.max(1) as f64,
            })
            .collect();
        v.sort_by(|a, b| b.share.total_cmp(&a.share));
        v
    };
    let shares = |by: &dyn Fn(&Line) -> String| shares_of(false, by);
    let commands = shares(&|l| command_kind(&l.comm, &own));
    let categories = shares(&|l| category(&l.comm, &l.symbol, &own).to_owned());
    let categories_ours = shares_of(true, &|l| category(&l.comm, &l.symbol, &own).to_owned());
    let by_command = shares(&|l| {
        format!(
            "{}: {}",
            command_kind(&l.comm, &own),
            category(&l.comm, &l.symbol, &own)
        )
    });
    let symbols = shares(&|l| format!("{} ({})", l.symbol, command_kind(&l.comm, &own)));

    let mut text = String::new();
    let _ = writeln!(
        text,
        "perf record -a -g -e cpu-clock -F {FREQUENCY}: one round of the xdplb end-to-end \
         case, {forwarded_pps:.0} packets/s forwarded while recording; {total} samples \
         ({}); this process: {own}",
        data.display()
    );
    for (title, list, n) in [
        ("by category", &categories, usize::MAX),
        (
            "by category, of the benchmark's and the gateway's samples only",
            &categories_ours,
            usize::MAX,
        ),
        ("by command", &commands, usize::MAX),
        ("by command and category", &by_command, 40),
        ("top symbols", &symbols, 60),
    ] {
        let _ = writeln!(text, "\n{title}:");
        for share in list.iter().take(n) {
            let _ = writeln!(text, "  {:>6.2}%  {}", 100.0 * share.share, share.name);
        }
    }
    std::fs::write(summary, &text)
        .unwrap_or_else(|err| panic!("writing {}: {err}", summary.display()));
    eprint!("{text}");
    Profile {
        method: format!(
            "perf record -a -g -e cpu-clock -F {FREQUENCY} over one extra round of the xdplb \
             case (every CPU); perf report --sort comm,sym, shares of all samples"
        ),
        forwarded_pps,
        samples: total,
        categories,
        categories_ours,
        commands,
        by_command: by_command.into_iter().take(TOP).collect(),
        symbols: symbols.into_iter().take(TOP).collect(),
        summary_path: summary.display().to_string(),
    }
}

/// `  12.34%   1234  comm  [k] symbol` (the command may hold spaces).
fn parse(line: &str) -> Option<Line> {
    let mut words = line.split_whitespace();
    words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
    let samples: u64 = words.next()?.parse().ok()?;
    let rest: Vec<&str> = words.collect();
    let at = rest
        .iter()
        .position(|w| w.len() == 3 && w.starts_with('[') && w.ends_with(']'))?;
    Some(Line {
        samples,
        comm: rest[..at].join(" "),
        symbol: rest[at + 1..].join(" "),
    })
}

/// Who a command is: the benchmark (the generator's thread), the gateway's NAPI threads,
/// softirq threads, idle, or something else sharing the machine.
fn command_kind(comm: &str, own: &str) -> String {
    if comm == own {
        "benchmark process (generator)".to_owned()
    } else if comm.starts_with("napi/") {
        "NAPI threads (veth receive)".to_owned()
    } else if comm.starts_with("ksoftirqd/") {
        "ksoftirqd".to_owned()
    } else if comm.starts_with("swapper") {
        "idle (swapper)".to_owned()
    } else {
        // Compiler jobs are called `opt HASH`: one line for all of them.
        let name = comm.split([' ', '/']).next().unwrap_or(comm);
        format!("other: {name}")
    }
}

/// What a sample was doing.
fn category(comm: &str, symbol: &str, own: &str) -> &'static str {
    let ours = comm == own
        || comm.starts_with("napi/")
        || comm.starts_with("ksoftirqd/")
        || comm.starts_with("swapper");
    let any = |prefixes: &[&str]| prefixes.iter().any(|p| symbol.starts_with(p));
    let has = |parts: &[&str]| parts.iter().any(|p| symbol.contains(p));
    if !ours {
        // Idle threads are `swapper`, which is ours: anything else is another process (which
        // may run BPF programs of its own, xdplb's included).
        "other processes sharing the machine"
    } else if symbol.starts_with("bpf_prog_") {
        // A JIT-ed program or subprogram: `bpf_prog_TAG_NAME`.
        if symbol.ends_with("_bench_gen") {
            "generator: its BPF program"
        } else if symbol.ends_with("_bench_drop") {
            "sink: its BPF program (bench_drop)"
        } else if symbol.ends_with("_lb") {
            "xdplb's BPF program"
        } else {
            // Subprograms are named after their function, not their program: `memmove` may be
            // the generator's (it copies headers into every frame) or xdplb's.
            "BPF subprograms (memmove, forward, ...: xdplb's or the generator's)"
        }
    } else if has(&["idle", "halt", "mwait"]) {
        "idle"
    } else if has(&["test_run", "bpf_test_"]) || any(&["bpf_user_rnd", "prandom_"]) {
        "generator: test_run live frames, random ports"
    } else if any(&[
        "htab_",
        "__htab",
        "lookup_nulls_elem",
        "bpf_lru",
        "__bpf_lru",
        "bpf_map_",
        "bpf_xdp_fib_lookup",
        "bpf_ipv4_fib_lookup",
        "bpf_fib",
        "fib_table_lookup",
        "fib_lookup",
        "__fib_lookup",
        "bpf_ktime",
        "ktime_get",
        "jhash",
    ]) {
        "BPF helpers and maps (hash lookups, FIB lookup, clock)"
    } else if has(&["build_skb", "skb_from_frame", "xdp_convert", "frame_to_skb"]) {
        "XDP frame to skb conversion"
    } else if any(&[
        "veth_",
        "napi_",
        "__napi",
        "net_rx_action",
        "bq_",
        "dev_map",
        "__dev_map",
        "__dev_flush",
        "dev_xdp_enqueue",
    ]) || has(&["xdp", "page_pool", "ptr_ring"])
    {
        "veth, NAPI, XDP redirect and frame return"
    } else if any(&[
        "ip_",
        "ip6_",
        "__netif",
        "netif_",
        "dev_",
        "__dev_",
        "neigh_",
        "skb_",
        "__skb",
        "kfree_skb",
        "__kfree_skb",
        "eth_",
        "nf_",
        "__alloc_skb",
        "udp",
        "__udp",
        "consume_skb",
        "sk_",
        "__ip",
    ]) {
        "kernel network stack"
    } else {
        "other kernel or user code of these threads"
    }
}
