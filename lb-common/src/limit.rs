//! Per-VIP new-flow rate limits per source: a token bucket per (VIP, source prefix) in
//! [`SOURCE_BUCKETS_MAP`](crate::maps::SOURCE_BUCKETS_MAP), a shared LRU hash, with the VIP's
//! rate, burst and source prefix length in
//! [`SOURCE_LIMITS_MAP`](crate::maps::SOURCE_LIMITS_MAP).
//!
//! Only a new flow (one no connection table holds) takes a token; packets of tracked flows never
//! do. The buckets are shared by every CPU and updated without atomics: two CPUs taking a token
//! from one bucket at the same instant may both take the same one, so under a flood spread over
//! CPUs a source gets at most one flow more per CPU racing, never a lasting excess.

use core::mem::size_of;

/// One token in bucket units: a bucket counts nanosecond-flows, so that a refill of `rate`
/// tokens a second adds exactly `rate` units a nanosecond, without rounding.
pub const TOKEN: u64 = 1_000_000_000;

/// Default source prefix length of an IPv4 VIP: each address its own bucket.
pub const DEFAULT_SOURCE_PREFIX_V4: u8 = 32;
/// Default source prefix length of an IPv6 VIP: a /64, what one subscriber usually has.
pub const DEFAULT_SOURCE_PREFIX_V6: u8 = 64;

/// A VIP's limit: an element of [`SOURCE_LIMITS_MAP`](crate::maps::SOURCE_LIMITS_MAP), indexed
/// by VIP id; read only for a VIP with [`VIP_FLAG_SOURCE_LIMIT`](crate::maps::VIP_FLAG_SOURCE_LIMIT).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceLimit {
    /// New flows a second per source prefix (the refill rate).
    pub rate: u32,
    /// Most new flows at once (the bucket's size).
    pub burst: u32,
    /// Sources are counted together per prefix of this length.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<SourceLimit>() == 12);

/// Key of [`SOURCE_BUCKETS_MAP`](crate::maps::SOURCE_BUCKETS_MAP): a VIP and a source prefix
/// (host bits zero, [`mask_source`]).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub vip_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SourceKey>() == 24);

/// A token bucket: the value of [`SOURCE_BUCKETS_MAP`](crate::maps::SOURCE_BUCKETS_MAP).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, in [`TOKEN`] units.
    pub tokens: u64,
    /// `bpf_ktime_get_coarse_ns()` when last refilled.
    pub stamp_ns: u64,
}
const _: () = assert!(size_of::<TokenBucket>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `repr(C)`, integers and a byte array with explicit padding (size asserted
    // above); every bit pattern is valid. So for the two below.
    unsafe impl aya::Pod for SourceLimit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TokenBucket {}
}

/// The mask of byte `byte` of an address under a prefix of `prefix_len` bits.
#[inline(always)]
pub const fn prefix_mask(prefix_len: u8, byte: usize) -> u8 {
    let keep = (prefix_len as u32).saturating_sub(8 * byte as u32);
    let keep = if keep > 8 { 8 } else { keep };
    (0xff00u16 >> keep) as u8
}

/// `addr` with every bit past the first `prefix_len` cleared.
#[inline(always)]
pub fn mask_source(addr: &[u8; 16], prefix_len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = addr[i] & prefix_mask(prefix_len, i);
    }
    out
}

/// A new bucket for a source's first flow at `now_ns`: full, less the token that flow takes.
#[inline(always)]
pub const fn first_bucket(now_ns: u64, burst: u32) -> TokenBucket {
    TokenBucket {
        tokens: (burst as u64 * TOKEN).saturating_sub(TOKEN),
        stamp_ns: now_ns,
    }
}

/// Refills `bucket` for the time since its stamp at `rate` tokens a second up to `burst`, then
/// takes one token for a new flow at `now_ns`: true if there was one (the flow may pass).
///
/// A clock behind the stamp refills nothing and keeps the stamp; no input overflows (the
/// product `elapsed * rate` is only formed below the time a bucket takes to fill).
#[inline(always)]
pub fn take_token(bucket: &mut TokenBucket, now_ns: u64, rate: u32, burst: u32) -> bool {
    let cap = u64::from(burst) * TOKEN;
    let mut tokens = if bucket.tokens < cap {
        bucket.tokens
    } else {
        cap
    };
    if now_ns > bucket.stamp_ns {
        let elapsed = now_ns - bucket.stamp_ns;
        let rate = u64::from(rate);
        // The time an empty bucket takes to fill; none without a rate.
        if let Some(fill_ns) = cap.checked_div(rate) {
            tokens = if elapsed > fill_ns {
                cap
            } else {
                // elapsed * rate <= cap, and tokens <= cap: no overflow below 2 * 2^32 * TOKEN.
                let sum = tokens + elapsed * rate;
                if sum < cap { sum } else { cap }
            };
        }
        bucket.stamp_ns = now_ns;
    }
    let pass = tokens >= TOKEN;
    bucket.tokens = if pass { tokens - TOKEN } else { tokens };
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = first_bucket(0, 5);
        let passed = 1 + (0..10).filter(|_| take_token(&mut b, 0, 5, 5)).count();
        assert_eq!(passed, 5);
        // A fifth of a second gives one token back.
        assert!(!take_token(&mut b, SECOND / 5 - 1, 5, 5));
        assert!(take_token(&mut b, SECOND / 5, 5, 5));
        assert!(!take_token(&mut b, SECOND / 5, 5, 5));
        // A long pause fills the bucket, no more.
        let passed = (0..10)
            .filter(|_| take_token(&mut b, 100 * SECOND, 5, 5))
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn masks_keep_the_prefix() {
        let addr = [0xff; 16];
        let m = mask_source(&addr, 20);
        assert_eq!(&m[..4], &[0xff, 0xff, 0xf0, 0]);
        assert_eq!(mask_source(&addr, 0), [0; 16]);
        assert_eq!(mask_source(&addr, 128), addr);
        assert_eq!(mask_source(&addr, 255), addr);
    }

    proptest! {
        /// From a full bucket, flows at any non-decreasing times pass at most burst plus rate
        /// times the time elapsed, and at least that many once as many are asked (each asks
        /// until refused).
        #[test]
        fn never_more_than_burst_plus_refill(
            rate in 1u32..10_000,
            burst in 1u32..10_000,
            start in any::<u64>(),
            mut gaps in proptest::collection::vec(0u64..SECOND, 1..50),
        ) {
            let start = start / 2;
            gaps.sort_unstable();
            let mut b = first_bucket(start, burst);
            let mut passed = 1u64;
            let mut now = start;
            while take_token(&mut b, now, rate, burst) {
                passed += 1;
            }
            for gap in &gaps {
                now += gap / 10;
                while take_token(&mut b, now, rate, burst) {
                    passed += 1;
                    prop_assert!(b.tokens <= u64::from(burst) * TOKEN);
                }
            }
            let elapsed = u128::from(now - start);
            let most = u128::from(burst) + elapsed * u128::from(rate) / u128::from(SECOND);
            prop_assert!(u128::from(passed) <= most, "{} > {}", passed, most);
            // Refills are exact (nothing lost to rounding) while the bucket never fills up
            // between two flows.
            if rate / 10 + 1 < burst {
                prop_assert_eq!(u128::from(passed), most);
            }
        }

        /// Any bucket contents and any clock, backwards included: no overflow or panic, never
        /// more than `burst` tokens, and a clock behind the stamp neither refills nor moves it.
        #[test]
        fn any_input_is_safe(
            tokens in any::<u64>(),
            stamp in any::<u64>(),
            now in any::<u64>(),
            rate in any::<u32>(),
            burst in any::<u32>(),
        ) {
            let mut b = TokenBucket { tokens, stamp_ns: stamp };
            let before = tokens.min(u64::from(burst) * TOKEN);
            let pass = take_token(&mut b, now, rate, burst);
            prop_assert!(b.tokens <= u64::from(burst) * TOKEN);
            if now <= stamp {
                prop_assert_eq!(b.stamp_ns, stamp);
                prop_assert_eq!(pass, before >= TOKEN);
                prop_assert_eq!(b.tokens, if pass { before - TOKEN } else { before });
            } else {
                prop_assert_eq!(b.stamp_ns, now);
            }
        }

        /// The mask keeps exactly the first `len` bits.
        #[test]
        fn mask_keeps_len_bits(addr in any::<[u8; 16]>(), len in 0u8..=128) {
            let m = mask_source(&addr, len);
            for bit in 0..128usize {
                let get = |a: &[u8; 16]| a[bit / 8] >> (7 - bit % 8) & 1;
                let expected = if bit < usize::from(len) { get(&addr) } else { 0 };
                prop_assert_eq!(get(&m), expected);
            }
        }
    }
}
