//! Durations as the config and the CLI write them: a whole number and a unit (`30s`, `15m`).

use std::time::Duration;

const DURATION_UNITS: [(&str, u64); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses a duration: a whole number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`), e.g. `30s`,
/// `900ms`, `15m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "bad duration {text:?}: expected a whole number and a unit (ms, s, m, h), e.g. \"30s\""
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let (_, scale) = DURATION_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(bad)?;
    let ns = number
        .checked_mul(*scale)
        .ok_or_else(|| format!("duration {text:?} is too long"))?;
    Ok(Duration::from_nanos(ns))
}

/// Formats a duration in the largest unit that represents it exactly (`90s` is `90s`, `120s`
/// is `2m`); [`parse_duration`] gives it back.
pub fn format_duration(duration: Duration) -> String {
    let ns = duration.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    for (unit, scale) in DURATION_UNITS {
        if ns.is_multiple_of(u128::from(scale)) {
            return format!("{}{unit}", ns / u128::from(scale));
        }
    }
    format!("{ns}ns")
}
