//! Global per-outcome packet counters, kept by the XDP program in a per-CPU array indexed by
//! [`Counter`] and summed over CPUs by the agent.

/// Name of the per-CPU array map holding one `u64` per [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $index:literal => $name:literal,)*) => {
        /// What happened to a packet. Every packet the program sees increments exactly one.
        #[repr(u32)]
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant = $index,)*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];

            /// A stable `snake_case` name, used by the CLI and as a metrics label.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// An IPv4 packet, passed to the kernel.
    PassIpv4 = 0 => "pass_ipv4",
    /// An IPv6 packet, passed to the kernel.
    PassIpv6 = 1 => "pass_ipv6",
    /// Not IP (ARP, LLDP, ...), passed to the kernel.
    PassNonIp = 2 => "pass_non_ip",
    /// Too short for the headers it announces, passed to the kernel (not ours to judge).
    PassTruncated = 3 => "pass_truncated",
}

/// Number of entries in the [`COUNTERS_MAP`] array.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{c:?} is out of order");
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
