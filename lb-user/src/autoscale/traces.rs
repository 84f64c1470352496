//! The synthetic traces shipped in `examples/traces/`, generated deterministically.
//!
//! `cargo test -p lb-user autoscale` checks the files match these generators; set
//! `XDPLB_WRITE_TRACES=1` to rewrite them.

use std::f64::consts::TAU;

use super::Trace;

const DAY: u64 = 86_400;
const STEP: u64 = 60;

/// SplitMix64: a tiny seeded generator, the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Bell-shaped noise in `(-1, 1)` (mean of two uniforms, rescaled), standard deviation ~0.41.
    pub fn noise(&mut self) -> f64 {
        self.unit() + self.unit() - 1.0
    }
}

fn sampled(seconds: u64, mut f: impl FnMut(u64) -> f64) -> Trace {
    let samples = (0..=seconds / STEP)
        .map(|i| {
            let t = i * STEP;
            (t, (f(t).max(0.0) * 10.0).round() / 10.0)
        })
        .collect();
    Trace::new(samples).expect("non-empty")
}

/// 24 h around 5000 with ±5% noise.
pub fn steady_day() -> Trace {
    let mut rng = Rng::new(1);
    sampled(DAY, |_| 5000.0 * (1.0 + 0.05 * rng.noise()))
}

/// 7 days of a daily cycle: trough 3000 around 04:00, peak about 15000 around 16:00 (each
/// day's peak within ±7%, changing smoothly), ±4% noise.
pub fn diurnal_week() -> Trace {
    let mut rng = Rng::new(7);
    let peaks: Vec<f64> = (0..=8)
        .map(|_| 1.0 + 0.07 * (2.0 * rng.unit() - 1.0))
        .collect();
    sampled(7 * DAY, |t| {
        let day = (t / DAY) as usize;
        let frac = (t % DAY) as f64 / DAY as f64;
        let peak = peaks[day] + (peaks[day + 1] - peaks[day]) * frac;
        let shape = 0.5 - 0.5 * (TAU * (frac - 4.0 / 24.0)).cos();
        (3000.0 + 12_000.0 * shape * peak) * (1.0 + 0.04 * rng.noise())
    })
}

/// 4 h around 2000 (±5%), with a flash sale: from 1:30 the signal climbs to about 20000 in
/// 2 minutes, holds 30 minutes, and falls back over 10 minutes.
pub fn flash_sale() -> Trace {
    let mut rng = Rng::new(42);
    let (start, ramp, hold, fall) = (5400.0, 120.0, 1800.0, 600.0);
    sampled(4 * 3600, |t| {
        let t = t as f64;
        let boost = if t < start {
            0.0
        } else if t < start + ramp {
            (t - start) / ramp
        } else if t < start + ramp + hold {
            1.0
        } else if t < start + ramp + hold + fall {
            1.0 - (t - start - ramp - hold) / fall
        } else {
            0.0
        };
        2000.0 * (1.0 + 9.0 * boost) * (1.0 + 0.05 * rng.noise())
    })
}

/// When [`sale_week`]'s sale starts (seconds) and how long it lasts.
pub const SALE_WEEK_SALE: (u64, u64) = (2 * DAY + 21 * 3600, 90 * 60);

/// [`diurnal_week`]'s kind of week (its own seed, ±6% noise), with a one-off evening flash
/// sale on day 3: from 21:00 the signal climbs to about 10× the normal evening load in 5
/// minutes, holds, and falls back over 10 minutes, 90 minutes in all. No daily season predicts
/// it: at 21:00 the daily cycle is falling.
pub fn sale_week() -> Trace {
    let mut rng = Rng::new(18);
    let peaks: Vec<f64> = (0..=8)
        .map(|_| 1.0 + 0.07 * (2.0 * rng.unit() - 1.0))
        .collect();
    let (start, length) = SALE_WEEK_SALE;
    let (ramp, fall) = (300.0, 600.0);
    sampled(7 * DAY, |t| {
        let day = (t / DAY) as usize;
        let frac = (t % DAY) as f64 / DAY as f64;
        let peak = peaks[day] + (peaks[day + 1] - peaks[day]) * frac;
        let shape = 0.5 - 0.5 * (TAU * (frac - 4.0 / 24.0)).cos();
        let into = t as f64 - start as f64;
        let hold = length as f64 - fall;
        let boost = if into < 0.0 || into >= length as f64 {
            0.0
        } else if into < ramp {
            into / ramp
        } else if into < hold {
            1.0
        } else {
            1.0 - (into - hold) / fall
        };
        (3000.0 + 12_000.0 * shape * peak) * (1.0 + 9.0 * boost) * (1.0 + 0.06 * rng.noise())
    })
}

/// Every shipped trace with its file name.
pub fn all() -> [(&'static str, Trace); 4] {
    [
        ("steady-day.csv", steady_day()),
        ("diurnal-week.csv", diurnal_week()),
        ("flash-sale.csv", flash_sale()),
        ("sale-week.csv", sale_week()),
    ]
}
