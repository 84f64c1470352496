//! Flow hashing for backend selection: Bob Jenkins' lookup3 `hashword`, exactly as the Linux
//! kernel's `jhash2` (`include/linux/jhash.h`), over fixed-size arrays of 32-bit words.
//!
//! jhash is what the kernel and Katran use for the same job: a handful of adds, xors and rotates
//! per 12 bytes, no multiplications, no tables, and full avalanche after the final mix. The word
//! count is a const generic, so the loop has a constant bound, unrolls completely, and every word
//! read is `get(..)` with a constant index: nothing in here can panic or allocate.
//!
//! Words are built from bytes with `u32::from_le_bytes`, so a key hashes the same on every host
//! (and the agent agrees with the `bpfel` program, where that is a plain load).

use crate::flow::FlowKey;

/// `JHASH_INITVAL` of the kernel: an arbitrary start value.
const JHASH_INITVAL: u32 = 0xdead_beef;

/// `__jhash_mix`: reversibly mixes three words.
#[inline(always)]
const fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(4);
    b = b.wrapping_add(a);
    (a, b, c)
}

/// `__jhash_final`: final mixing of three words into `c`.
#[inline(always)]
const fn final_mix(mut a: u32, mut b: u32, mut c: u32) -> u32 {
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Word `i` of `words`, or 0 past the end (never taken: the callers' indices are in range, and
/// constant once the loop unrolls).
#[inline(always)]
fn word<const N: usize>(words: &[u32; N], i: usize) -> u32 {
    words.get(i).copied().unwrap_or(0)
}

/// The kernel's `jhash2(words, N, initval)`: lookup3 `hashword` of `N` 32-bit words.
#[inline(always)]
pub fn jhash2<const N: usize>(words: &[u32; N], initval: u32) -> u32 {
    let start = JHASH_INITVAL
        .wrapping_add((N as u32) << 2)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (start, start, start);
    let mut i = 0;
    // Constant bound: N / 3 rounds (minus one when N is a multiple of 3).
    while N - i > 3 {
        a = a.wrapping_add(word(words, i));
        b = b.wrapping_add(word(words, i + 1));
        c = c.wrapping_add(word(words, i + 2));
        (a, b, c) = mix(a, b, c);
        i += 3;
    }
    match N - i {
        0 => c,
        rest => {
            if rest == 3 {
                c = c.wrapping_add(word(words, i + 2));
            }
            if rest >= 2 {
                b = b.wrapping_add(word(words, i + 1));
            }
            a = a.wrapping_add(word(words, i));
            final_mix(a, b, c)
        }
    }
}

/// The four little-endian words of a 16-byte address.
#[inline(always)]
const fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_le_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_le_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_le_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// Hash of a flow's 5-tuple: `jhash2` of its ten words (source address, destination address,
/// both ports, protocol and family), seeded with `seed`. `_pad` is not hashed.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let [s0, s1, s2, s3] = addr_words(&key.src_addr);
    let [d0, d1, d2, d3] = addr_words(&key.dst_addr);
    let ports = u32::from_le_bytes([
        key.src_port[0],
        key.src_port[1],
        key.dst_port[0],
        key.dst_port[1],
    ]);
    let kind = u32::from_le_bytes([key.proto, key.family, 0, 0]);
    jhash2(&[s0, s1, s2, s3, d0, d1, d2, d3, ports, kind], seed)
}

/// Hash of one 16-byte address (IPv4 in the first 4 bytes): `jhash2` of its four words, seeded
/// with `seed`. For source-IP affinity, where every flow of a client must map alike.
#[inline(always)]
pub fn addr_hash(addr: &[u8; 16], seed: u32) -> u32 {
    jhash2(&addr_words(addr), seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};
    use proptest::prelude::*;

    /// A line-by-line transcription of the kernel's `jhash2` over a slice, as the reference.
    fn kernel_jhash2(k: &[u32], initval: u32) -> u32 {
        let mut length = k.len();
        let mut k = k;
        let start = 0xdead_beef_u32
            .wrapping_add((length as u32) << 2)
            .wrapping_add(initval);
        let (mut a, mut b, mut c) = (start, start, start);
        while length > 3 {
            a = a.wrapping_add(k[0]);
            b = b.wrapping_add(k[1]);
            c = c.wrapping_add(k[2]);
            (a, b, c) = mix(a, b, c);
            length -= 3;
            k = &k[3..];
        }
        if length == 0 {
            return c;
        }
        if length == 3 {
            c = c.wrapping_add(k[2]);
        }
        if length >= 2 {
            b = b.wrapping_add(k[1]);
        }
        a = a.wrapping_add(k[0]);
        final_mix(a, b, c)
    }

    /// SplitMix64, for reproducible bulk statistics.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn fill(&mut self, bytes: &mut [u8]) {
            for b in bytes {
                *b = self.next_u64() as u8;
            }
        }

        fn key(&mut self) -> FlowKey {
            let mut key = FlowKey::default();
            if self.next_u64() & 1 == 0 {
                key.family = FAMILY_IPV4;
                self.fill(&mut key.src_addr[..4]);
                self.fill(&mut key.dst_addr[..4]);
            } else {
                key.family = FAMILY_IPV6;
                self.fill(&mut key.src_addr);
                self.fill(&mut key.dst_addr);
            }
            self.fill(&mut key.src_port);
            self.fill(&mut key.dst_port);
            key.proto = if self.next_u64() & 1 == 0 {
                PROTO_TCP
            } else {
                PROTO_UDP
            };
            key
        }
    }

    /// Pearson's chi-square statistic of `counts` against a uniform spread.
    fn chi_square(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// Upper bound for chi-square with 63 degrees of freedom (mean 63, sd ~11.2): ~5.5 sd,
    /// p < 1e-6.
    const CHI2_63_BOUND: f64 = 125.0;

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 2]>(),
            any::<[u8; 2]>(),
            any::<u8>(),
            any::<u8>(),
        )
            .prop_map(
                |(src_addr, dst_addr, src_port, dst_port, proto, family)| FlowKey {
                    src_addr,
                    dst_addr,
                    src_port,
                    dst_port,
                    proto,
                    family,
                    _pad: [0; 2],
                },
            )
    }

    #[test]
    fn jhash2_matches_kernel_transcription_for_every_length() {
        let mut rng = Rng(1);
        let mut words = [0u32; 13];
        for w in &mut words {
            *w = rng.next_u64() as u32;
        }
        let seed = rng.next_u64() as u32;
        macro_rules! check {
            ($($n:literal)*) => {$(
                let arr: [u32; $n] = words[..$n].try_into().unwrap();
                assert_eq!(jhash2(&arr, seed), kernel_jhash2(&words[..$n], seed), "N = {}", $n);
            )*};
        }
        check!(0 1 2 3 4 5 6 7 8 9 10 11 12 13);
        // No words: the start value itself.
        assert_eq!(jhash2(&[], 7), 0xdead_beef_u32.wrapping_add(7));
    }

    proptest! {
        #[test]
        fn flow_hash_is_jhash2_of_the_tuple_and_ignores_padding(
            key in arb_key(), seed: u32, pad: [u8; 2],
        ) {
            let mut words = Vec::new();
            for chunk in key.src_addr.chunks(4).chain(key.dst_addr.chunks(4)) {
                words.push(u32::from_le_bytes(chunk.try_into().unwrap()));
            }
            words.push(u32::from_le_bytes([
                key.src_port[0], key.src_port[1], key.dst_port[0], key.dst_port[1],
            ]));
            words.push(u32::from(key.proto) | u32::from(key.family) << 8);
            let h = flow_hash(&key, seed);
            prop_assert_eq!(h, kernel_jhash2(&words, seed));
            prop_assert_eq!(h, flow_hash(&FlowKey { _pad: pad, ..key }, seed));
        }

        #[test]
        fn addr_hash_is_jhash2_of_the_address(addr: [u8; 16], seed: u32) {
            let words: Vec<u32> = addr
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            prop_assert_eq!(addr_hash(&addr, seed), kernel_jhash2(&words, seed));
        }
    }

    /// Flips each hashed bit of random keys: the hash must change (a 32-bit hash collides with
    /// probability 2^-32 per flip) and about half of its bits must flip (avalanche).
    #[test]
    fn every_input_bit_changes_the_hash() {
        let mut rng = Rng(2);
        let (mut flips, mut unchanged, mut flipped_bits) = (0u64, 0u64, 0u64);
        // Bit position in the hashed fields -> how often each output bit flipped.
        let mut per_output_bit = [0u64; 32];
        for _ in 0..200 {
            let key = rng.key();
            let seed = rng.next_u64() as u32;
            let h = flow_hash(&key, seed);
            // Byte views of the hashed fields: 16 + 16 + 2 + 2 + 1 + 1 = 38 bytes.
            for byte in 0..38 {
                for bit in 0..8 {
                    let mut k = key;
                    let target = match byte {
                        0..16 => &mut k.src_addr[byte],
                        16..32 => &mut k.dst_addr[byte - 16],
                        32..34 => &mut k.src_port[byte - 32],
                        34..36 => &mut k.dst_port[byte - 34],
                        36 => &mut k.proto,
                        _ => &mut k.family,
                    };
                    *target ^= 1 << bit;
                    let diff = h ^ flow_hash(&k, seed);
                    flips += 1;
                    unchanged += u64::from(diff == 0);
                    flipped_bits += u64::from(diff.count_ones());
                    for (o, n) in per_output_bit.iter_mut().enumerate() {
                        *n += u64::from(diff >> o & 1);
                    }
                }
            }
        }
        assert_eq!(
            unchanged, 0,
            "{unchanged} of {flips} single-bit flips left the hash alone"
        );
        let mean = flipped_bits as f64 / flips as f64;
        assert!(
            (15.5..16.5).contains(&mean),
            "mean flipped output bits {mean}"
        );
        for (o, &n) in per_output_bit.iter().enumerate() {
            let p = n as f64 / flips as f64;
            assert!(
                (0.46..0.54).contains(&p),
                "output bit {o} flips with p = {p}"
            );
        }
    }

    /// A different seed gives a different hash of the same key.
    #[test]
    fn seed_changes_the_hash() {
        let mut rng = Rng(3);
        let mut same = 0;
        for _ in 0..10_000 {
            let key = rng.key();
            let seed = rng.next_u64() as u32;
            same += usize::from(flow_hash(&key, seed) == flow_hash(&key, seed ^ 1));
        }
        assert!(
            same <= 1,
            "{same} of 10000 keys hashed alike under two seeds"
        );
    }

    /// 100k random keys into 64 buckets, by low bits (`% 64`) and by high bits.
    #[test]
    fn random_keys_spread_uniformly() {
        let mut rng = Rng(4);
        let (mut low, mut high) = ([0u64; 64], [0u64; 64]);
        for _ in 0..100_000 {
            let h = flow_hash(&rng.key(), 0x1234_5678);
            low[(h % 64) as usize] += 1;
            high[(h >> 26) as usize] += 1;
        }
        for counts in [low, high] {
            let chi2 = chi_square(&counts);
            assert!(chi2 < CHI2_63_BOUND, "chi-square {chi2} over {counts:?}");
        }
    }

    /// The realistic worst case: one client, one VIP, only the source port varies.
    #[test]
    fn sequential_source_ports_spread_uniformly() {
        let mut key = FlowKey {
            family: FAMILY_IPV4,
            proto: PROTO_TCP,
            dst_port: 443u16.to_be_bytes(),
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&[192, 0, 2, 7]);
        key.dst_addr[..4].copy_from_slice(&[198, 51, 100, 1]);
        let mut counts = [0u64; 64];
        for port in 0..=u16::MAX {
            key.src_port = port.to_be_bytes();
            counts[(flow_hash(&key, 0) % 64) as usize] += 1;
        }
        let chi2 = chi_square(&counts);
        assert!(chi2 < CHI2_63_BOUND, "chi-square {chi2} over {counts:?}");
    }

    /// Sequential client addresses (a /16) spread uniformly under `addr_hash`.
    #[test]
    fn sequential_addresses_spread_uniformly() {
        let mut counts = [0u64; 64];
        let mut addr = [0u8; 16];
        for i in 0..=u16::MAX {
            addr[..4].copy_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
            counts[(addr_hash(&addr, 99) % 64) as usize] += 1;
        }
        let chi2 = chi_square(&counts);
        assert!(chi2 < CHI2_63_BOUND, "chi-square {chi2} over {counts:?}");
    }
}
