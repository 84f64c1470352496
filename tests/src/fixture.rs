//! Katran-style packet fixtures: a table of cases, each with a description, an input frame,
//! the expected XDP action and the expected output frame, run through `BPF_PROG_TEST_RUN`.
//!
//! The runner takes the program as a closure, so this crate does not depend on the agent.

use std::{fmt, net::SocketAddr};

use crate::packet::{describe, hex_diff};

/// XDP return codes (`enum xdp_action`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum XdpAction {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl XdpAction {
    pub fn from_u32(value: u32) -> Option<Self> {
        [
            Self::Aborted,
            Self::Drop,
            Self::Pass,
            Self::Tx,
            Self::Redirect,
        ]
        .into_iter()
        .find(|action| *action as u32 == value)
    }
}

/// A check of an output frame: `Err` explains what is wrong with it.
pub type FrameCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// What the output frame must be.
pub enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// Byte for byte this frame.
    Frame(Vec<u8>),
    /// Whatever this check accepts; it explains what is wrong otherwise.
    Check(FrameCheck),
}

/// Output goes to one of `backends` (by destination address and port) with valid checksums.
pub fn to_one_of(backends: &'static [&'static str]) -> Expect {
    Expect::Check(Box::new(move |out| {
        crate::packet::verify_checksums(out)?;
        let headers =
            etherparse::PacketHeaders::from_ethernet_slice(out).map_err(|e| e.to_string())?;
        let dst = match (&headers.net, &headers.transport) {
            (
                Some(etherparse::NetHeaders::Ipv4(ip, _)),
                Some(etherparse::TransportHeader::Tcp(tcp)),
            ) => SocketAddr::from((ip.destination, tcp.destination_port)),
            (
                Some(etherparse::NetHeaders::Ipv6(ip, _)),
                Some(etherparse::TransportHeader::Tcp(tcp)),
            ) => SocketAddr::from((ip.destination, tcp.destination_port)),
            _ => return Err("not TCP/IP".into()),
        };
        if backends.iter().any(|b| crate::sa(b) == dst) {
            Ok(())
        } else {
            Err(format!("sent to {dst}, not one of {backends:?}"))
        }
    }))
}

/// One fixture.
pub struct Case {
    pub desc: String,
    pub input: Vec<u8>,
    pub action: XdpAction,
    pub output: Expect,
    /// The outcome counter the program must count the packet under, if checked.
    pub counter: Option<&'static str>,
}

impl Case {
    pub fn new(desc: impl Into<String>, input: Vec<u8>, action: XdpAction, output: Expect) -> Self {
        Self {
            desc: desc.into(),
            input,
            action,
            output,
            counter: None,
        }
    }

    /// Also checks that the packet is counted under `counter`.
    pub fn counter(mut self, counter: &'static str) -> Self {
        self.counter = Some(counter);
        self
    }
}

/// What the program did with one input.
pub struct Outcome {
    /// The raw XDP return code.
    pub action: u32,
    /// The frame after the program ran.
    pub output: Vec<u8>,
    /// The outcome counters that grew while it ran, by name.
    pub counters: Vec<String>,
}

struct Failure<'a> {
    case: &'a Case,
    what: String,
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FAIL {}: {}", self.case.desc, self.what)?;
        writeln!(f, "     input: {}", describe(&self.case.input))
    }
}

/// Runs every case through `run` and panics with a report of all failures (a one-line summary
/// of each frame and a hex diff) if any case fails. Returns the number of cases run.
pub fn run_cases(cases: &[Case], mut run: impl FnMut(&[u8]) -> anyhow::Result<Outcome>) -> usize {
    let mut failures = Vec::new();
    for case in cases {
        let outcome = match run(&case.input) {
            Ok(outcome) => outcome,
            Err(err) => {
                failures.push(Failure {
                    case,
                    what: format!("running the program: {err:#}"),
                });
                continue;
            }
        };
        if let Some(counter) = case.counter
            && outcome.counters != [counter]
        {
            failures.push(Failure {
                case,
                what: format!("counted as {:?}, expected [{counter:?}]", outcome.counters),
            });
            continue;
        }
        let action = XdpAction::from_u32(outcome.action);
        if action != Some(case.action) {
            failures.push(Failure {
                case,
                what: format!(
                    "action {:?} (raw {}), expected {:?}",
                    action, outcome.action, case.action
                ),
            });
            continue;
        }
        let expected = match &case.output {
            Expect::Unchanged => Some(&case.input),
            Expect::Frame(frame) => Some(frame),
            Expect::Check(check) => {
                if let Err(what) = check(&outcome.output) {
                    failures.push(Failure {
                        case,
                        what: format!(
                            "output rejected: {what}\n    output: {}",
                            describe(&outcome.output)
                        ),
                    });
                }
                None
            }
        };
        if let Some(expected) = expected
            && *expected != outcome.output
        {
            failures.push(Failure {
                case,
                what: format!(
                    "output differs\n  expected: {}\n    actual: {}\n{}",
                    describe(expected),
                    describe(&outcome.output),
                    hex_diff(expected, &outcome.output)
                ),
            });
        }
    }
    if !failures.is_empty() {
        let report: String = failures.iter().map(ToString::to_string).collect();
        panic!(
            "{} of {} fixtures failed:\n{report}",
            failures.len(),
            cases.len()
        );
    }
    cases.len()
}
