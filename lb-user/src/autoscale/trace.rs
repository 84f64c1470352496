//! Load traces: `timestamp,signal` CSV files, replayed second by second.

use std::{fmt::Write as _, path::Path};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `timestamp,signal`.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No samples.
    #[error("the trace has no samples")]
    Empty,
}

/// A load trace: samples `(t seconds, signal)` with increasing timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    samples: Vec<(u64, f64)>,
}

impl Trace {
    /// A trace from samples, sorted by time (later duplicates win).
    pub fn new(mut samples: Vec<(u64, f64)>) -> Result<Self, TraceError> {
        samples.sort_by_key(|&(t, _)| t);
        samples.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
        if samples.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Self { samples })
    }

    /// Parses `timestamp,signal` lines; an optional header, blank lines and `#` comments are
    /// skipped.
    pub fn parse_csv(text: &str) -> Result<Self, TraceError> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("timestamp"))
            {
                continue;
            }
            let err = |message: String| TraceError::Parse {
                line: n + 1,
                message,
            };
            let (t, v) = line
                .split_once(',')
                .ok_or_else(|| err(format!("{line:?}: expected timestamp,signal")))?;
            let t = t
                .trim()
                .parse()
                .map_err(|_| err(format!("{t:?} is not a whole number of seconds")))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| err(format!("{v:?} is not a number")))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(format!("{v} is not a finite signal >= 0")));
            }
            samples.push((t, v));
        }
        Self::new(samples)
    }

    /// Reads a CSV trace file.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_csv(&text)
    }

    /// The trace as CSV, with a header.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("timestamp,signal\n");
        for (t, v) in &self.samples {
            let _ = writeln!(out, "{t},{v:.1}");
        }
        out
    }

    /// The samples.
    pub fn samples(&self) -> &[(u64, f64)] {
        &self.samples
    }

    /// The first and last timestamps.
    pub fn span(&self) -> (u64, u64) {
        (self.samples[0].0, self.samples[self.samples.len() - 1].0)
    }

    /// The signal at second `t`: linear between samples, held before the first and after the
    /// last.
    pub fn at(&self, t: u64) -> f64 {
        let i = self.samples.partition_point(|&(s, _)| s <= t);
        if i == 0 {
            return self.samples[0].1;
        }
        let (t0, v0) = self.samples[i - 1];
        match self.samples.get(i) {
            Some(&(t1, v1)) => v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64,
            None => v0,
        }
    }
}
