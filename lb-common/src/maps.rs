//! The maps shared by the XDP program and the agent: names, capacities, key and value layouts.
//!
//! Vocabulary (after Katran): a *VIP* is (address, port, protocol), port 0 meaning every port;
//! a *backend* (Katran's "real") is (address, port) with a weight and a state. Addresses are
//! 16 bytes, IPv4 in the first 4 with the rest zero; ports are network byte order.
//!
//! Every type is `repr(C)` with explicit padding fields and a size assertion: padding the
//! compiler invented would be uninitialised in map keys, and lookups would miss.

use core::mem::size_of;

/// VIP definitions: [`VipKey`] → [`VipMeta`].
pub const VIPS_MAP: &str = "VIPS";
/// Addresses that carry at least one VIP, per protocol: [`VipAddrKey`] → `u32` (VIP count).
pub const VIP_ADDRS_MAP: &str = "VIP_ADDRS";
/// Backends, indexed by [`backend_index`]: array of [`Backend`].
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Backend ids of every VIP's scheduling table and backend list: array of `u32`, one region per
/// VIP and table, allocated by the agent (see [`VipMeta`]).
pub const SLOTS_MAP: &str = "SLOTS";
/// Tracked flows (LRU): client-side [`crate::FlowKey`] → [`crate::conntrack::FlowState`].
pub const CONNTRACK_MAP: &str = "CONNTRACK";
/// Half-open TCP flows (LRU, smaller): client-side [`crate::FlowKey`] →
/// [`crate::conntrack::FlowState`]. A SYN records its flow here; the client's handshake ACK
/// moves it to [`CONNTRACK_MAP`] (see [`crate::conntrack::FlowTable`]), so new flows, a SYN
/// flood's included, never evict established ones.
pub const EMBRYONIC_MAP: &str = "EMBRYONIC";
/// New flows per CPU in the current second: per-CPU array of one
/// [`crate::conntrack::RateWindow`].
pub const FLOW_RATE_MAP: &str = "FLOW_RATE";
/// Reply-direction translations (LRU): backend-side [`crate::FlowKey`] (backend → client) →
/// [`ReverseNat`].
pub const REVERSE_NAT_MAP: &str = "REVERSE_NAT";
/// Reply-direction translations of half-open flows (LRU, as large as [`EMBRYONIC_MAP`]): as
/// [`REVERSE_NAT_MAP`], for a SYN to a backend several VIPs share; the handshake ACK records the
/// flow's entry in [`REVERSE_NAT_MAP`]. A SYN flood thus evicts no established flow's reverse
/// translation either.
pub const EMBRYONIC_REVERSE_MAP: &str = "EMBRYONIC_REVERSE";
/// Per-CPU round-robin cursors, indexed by VIP id: per-CPU array of `u32`.
pub const RR_CURSORS_MAP: &str = "RR_CURSORS";
/// Active connections per backend, published by the agent: array of [`BackendLoad`].
pub const BACKEND_LOAD_MAP: &str = "BACKEND_LOAD";
/// Flows the data path opened per backend, ever (atomic adds): array of `u64`.
pub const BACKEND_OPENED_MAP: &str = "BACKEND_OPENED";
/// Per-VIP traffic, indexed by VIP id: per-CPU array of [`Stats`].
pub const VIP_STATS_MAP: &str = "VIP_STATS";
/// Per-backend traffic, indexed by [`backend_index`]: per-CPU array of [`Stats`].
pub const BACKEND_STATS_MAP: &str = "BACKEND_STATS";
/// Interfaces the program may redirect to: devmap keyed by ifindex.
pub const TX_PORTS_MAP: &str = "TX_PORTS";
/// Reply translations without per-flow state (see [`ReverseNat`]): [`BackendKey`] (the
/// backend's address, port and protocol) → [`ReverseNat`] (its VIP). One entry per backend
/// address:port of a VIP with a port; [`REPLY_SHARED`] marks one that several VIPs use.
pub const BACKEND_VIPS_MAP: &str = "BACKEND_VIPS";
/// Next hops towards each backend as the data path last looked them up, per CPU, indexed by
/// [`backend_index`]: per-CPU array of [`NextHop`].
pub const NEXT_HOPS_MAP: &str = "NEXT_HOPS";
/// The gateway's own addresses: [`AddrKey`] → `u32` (unused). A packet from a backend to one of
/// them answers the gateway (a health probe), not a VIP's client, and is never translated.
pub const LOCAL_ADDRS_MAP: &str = "LOCAL_ADDRS";
/// Most entries of [`LOCAL_ADDRS_MAP`].
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Settings the agent writes once at start: array of one [`Settings`].
pub const SETTINGS_MAP: &str = "SETTINGS";
/// The address filter (see [`crate::filter`]): array of `u64`.
pub const ADDR_FILTER_MAP: &str = "ADDR_FILTER";
/// Per-VIP source allow and deny prefixes (LPM trie, see [`crate::acl`]):
/// [`crate::acl::AclKey`] → `u8` ([`crate::acl::ACL_ALLOW`] or [`crate::acl::ACL_DENY`]).
pub const ACL_MAP: &str = "ACL";
/// Most entries of [`ACL_MAP`], all VIPs together.
pub const MAX_ACL_ENTRIES: u32 = 1 << 16;
/// Per-VIP new-flow limits per source, indexed by VIP id: array of
/// [`crate::limit::SourceLimit`].
pub const SOURCE_LIMITS_MAP: &str = "SOURCE_LIMITS";
/// Token buckets of the per-source limits (LRU, shared by the CPUs):
/// [`crate::limit::SourceKey`] → [`crate::limit::TokenBucket`].
pub const SOURCE_BUCKETS_MAP: &str = "SOURCE_BUCKETS";
/// Capacity of [`SOURCE_BUCKETS_MAP`]: sources (prefixes) tracked at once, all VIPs together.
pub const SOURCE_BUCKETS_CAPACITY: u32 = 1 << 17;
/// Fragmented datagrams in flight (LRU): [`crate::frag::FragKey`] → [`crate::frag::FragEntry`],
/// what each one's first fragment was translated to (see [`crate::frag`]).
pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
/// Capacity of [`FRAGMENTS_MAP`]: Cilium's for its fragment map. An entry is used for
/// [`crate::frag::FRAG_TIMEOUT_NS`] at most, so this is 4096 fragmented datagrams a second.
pub const FRAGMENTS_CAPACITY: u32 = 8192;

/// Most VIPs (VIP ids are below this; they fit [`Backend::vip_id`]).
pub const MAX_VIPS: u32 = 4096;
/// Version of the pin layout (which maps there are, under what names, what they hold). An
/// agent adopts the pins of its own layout, carries older ones over and refuses newer ones.
/// Layout 2 added `BACKEND_VIPS`, `NEXT_HOPS`, `LOCAL_ADDRS`, `EMBRYONIC`, `FLOW_RATE` and
/// `EVENTS`, `Backend::{flags, vip_id}`, the address filter's local part and
/// `Settings::{icmp_echo, new_flow_rate_limit}`.
pub const PIN_LAYOUT: u32 = 2;
/// Backend slots; a backend id's low 16 bits index them.
pub const MAX_BACKENDS: u32 = 1 << 16;
/// Default number of entries in [`SLOTS_MAP`] (16 MiB).
pub const DEFAULT_SLOTS: u32 = 1 << 22;
/// Default capacity of the connection table.
pub const DEFAULT_CONNTRACK_CAPACITY: u32 = 1_000_000;
/// Default capacity of the embryonic table: an eighth of the connection table's
/// ([`embryonic_capacity_for`]).
pub const DEFAULT_EMBRYONIC_CAPACITY: u32 = embryonic_capacity_for(DEFAULT_CONNTRACK_CAPACITY);

/// The embryonic table's default size for a connection table of `conntrack_capacity`: an
/// eighth, at least 64 (a kernel LRU map shares its entries out among CPUs).
pub const fn embryonic_capacity_for(conntrack_capacity: u32) -> u32 {
    let eighth = conntrack_capacity / 8;
    if eighth < 64 { 64 } else { eighth }
}
/// Most interfaces in [`TX_PORTS_MAP`].
pub const MAX_TX_PORTS: u32 = 256;

/// Mask of a backend id's slot index; the bits above are a generation that changes each time
/// the slot is reused, so that a tracked flow never follows a recycled id to another server.
pub const BACKEND_INDEX_MASK: u32 = MAX_BACKENDS - 1;

/// The slot of a backend id in [`BACKENDS_MAP`] and the per-backend maps.
#[inline(always)]
pub const fn backend_index(id: u32) -> u32 {
    id & BACKEND_INDEX_MASK
}

/// How a VIP picks a backend for a new flow ([`VipMeta::scheduler`]).
pub mod scheduler {
    /// Maglev consistent hashing over the 5-tuple, weighted (table: Maglev ring).
    pub const MAGLEV: u8 = 0;
    /// The Maglev ring keyed by client address only: affinity by client IP.
    pub const SOURCE_HASH: u8 = 1;
    /// Round-robin (table: every active backend once), per-CPU cursor.
    pub const ROUND_ROBIN: u8 = 2;
    /// Smooth weighted round-robin (table: one weighted cycle), per-CPU cursor.
    pub const WEIGHTED_ROUND_ROBIN: u8 = 3;
    /// Uniformly random over the active backends (list).
    pub const RANDOM: u8 = 4;
    /// Random, weighted (a random entry of the weighted cycle table).
    pub const WEIGHTED_RANDOM: u8 = 5;
    /// Weighted least connections by two random choices over the list.
    pub const LEAST_CONN: u8 = 6;
    /// Names, indexed by the constants above, as the CLI and config spell them.
    pub const NAMES: [&str; 7] = [
        "maglev",
        "source-hash",
        "round-robin",
        "weighted-round-robin",
        "random",
        "weighted-random",
        "least-conn",
    ];
}

/// A VIP: the key of [`VIPS_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Network byte order; 0 is the wildcard "every port".
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<VipKey>() == 20);

/// A VIP's settings and where its tables are: the value of [`VIPS_MAP`].
///
/// The agent writes a VIP's new tables into fresh regions of [`SLOTS_MAP`] and then replaces
/// this value in one map update, so a packet sees either the old tables or the new ones.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into the per-VIP maps, below [`MAX_VIPS`].
    pub vip_id: u32,
    /// One of [`scheduler`].
    pub scheduler: u8,
    /// One of [`forwarding`]: how packets reach the chosen backend.
    pub forwarding: u8,
    /// [`VIP_FLAG_*`](VIP_FLAG_ACL) bits: which per-VIP source checks apply.
    pub flags: u8,
    pub _pad: u8,
    /// Scheduling table (Maglev ring or weighted cycle): `[table_off, table_off + table_len)`.
    pub table_off: u32,
    pub table_len: u32,
    /// Backends that take new flows: `[list_off, list_off + list_len)`.
    pub list_off: u32,
    pub list_len: u32,
}
const _: () = assert!(size_of::<VipMeta>() == 24);

/// Values of [`VipMeta::forwarding`].
pub mod forwarding {
    /// Destination address and port rewritten to the backend's; replies come back through the
    /// gateway and are translated back.
    pub const NAT: u8 = 0;
    /// Direct server return on one L2 segment: the IP packet is left as the client sent it
    /// (destination the VIP), only its destination MAC becomes the backend's; the backend holds
    /// the VIP on a loopback and answers the client directly.
    pub const DSR_L2: u8 = 1;
    /// Direct server return through an IP-in-IP tunnel to the backend: the packet, unchanged,
    /// inside an outer IPv4 (IPv6) header to the backend's address from a source in the
    /// configured prefix (see [`crate::encap`]); routed, so the backend may be behind routers.
    pub const IPIP: u8 = 2;
    /// Names, indexed by the constants above, as the CLI and config spell them.
    pub const NAMES: [&str; 3] = ["nat", "dsr-l2", "ipip"];

    /// Whether the backend's replies come back through the gateway to be translated (NAT), so
    /// that a new flow may need a reverse translation recorded.
    #[inline(always)]
    pub const fn replies_through_gateway(mode: u8) -> bool {
        mode == NAT
    }
}

/// [`VipMeta::flags`]: the VIP has allow/deny source prefix lists.
pub const VIP_FLAG_ACL: u8 = 1;
/// [`VipMeta::flags`]: the VIP limits new flows per source.
pub const VIP_FLAG_SOURCE_LIMIT: u8 = 2;

/// Key of [`VIP_ADDRS_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: [u8; 16],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<VipAddrKey>() == 20);

/// [`Backend::state`]: slot unused.
pub const BACKEND_UNUSED: u8 = 0;
/// [`Backend::state`]: takes new flows.
pub const BACKEND_UP: u8 = 1;
/// [`Backend::state`]: keeps its tracked flows, takes no new ones.
pub const BACKEND_DRAINING: u8 = 2;
/// [`Backend::state`]: failed; its tracked flows are re-scheduled.
pub const BACKEND_DOWN: u8 = 3;

/// [`Backend::flags`]: the backend's replies are translated by its [`BACKEND_VIPS_MAP`] entry,
/// so its new flows record no per-flow reverse translation. Set by the agent only for a backend
/// address:port that belongs to this backend's VIP alone, once that entry is written.
pub const BACKEND_FLAG_STATELESS_REPLY: u8 = 1;
/// [`Backend::flags`]: the backend's VIP has source prefix lists ([`VIP_FLAG_ACL`]), which
/// every packet of its tracked flows is checked against too.
pub const BACKEND_FLAG_ACL: u8 = 2;

/// A backend: an element of [`BACKENDS_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub family: u8,
    /// One of the `BACKEND_*` states.
    pub state: u8,
    /// The full id (index and generation) of the backend in this slot.
    pub id: u32,
    pub weight: u32,
    /// `BACKEND_FLAG_*` bits.
    pub flags: u8,
    /// Its VIP's [`VipMeta::forwarding`] mode, so that a tracked flow's packet is forwarded
    /// without a VIP lookup. 0 ([`forwarding::NAT`]) in entries written before the mode existed.
    pub forwarding: u8,
    /// The VIP the backend belongs to (its id; below [`MAX_VIPS`]): a tracked flow's packets
    /// are counted to it without a VIP lookup.
    pub vip_id: u16,
}
const _: () = assert!(size_of::<Backend>() == 32);

impl Backend {
    /// True if a flow tracked to `id` may keep using this backend.
    #[inline(always)]
    pub const fn keeps_flows_of(&self, id: u32) -> bool {
        self.id == id && (self.state == BACKEND_UP || self.state == BACKEND_DRAINING)
    }
}

/// Load the agent publishes for least-connections: an element of [`BACKEND_LOAD_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Active connections when the agent published.
    pub active: u32,
    pub _pad: [u8; 4],
    /// [`BACKEND_OPENED_MAP`]'s value when the agent counted `active`: flows opened since are
    /// added by the data path.
    pub opened_base: u64,
}
const _: () = assert!(size_of::<BackendLoad>() == 16);

/// The value of [`REVERSE_NAT_MAP`] (per flow) and of [`BACKEND_VIPS_MAP`] (per backend): what
/// the reply direction's source is rewritten to.
///
/// A reply (a packet from a backend address:port) is looked up in [`BACKEND_VIPS_MAP`] first:
/// - an entry without [`REPLY_SHARED`] translates it, with no per-flow state: the backend
///   belongs to that VIP alone;
/// - an entry with [`REPLY_SHARED`] (several VIPs use the backend) defers to the flow's own
///   [`REVERSE_NAT_MAP`] entry, which every flow to a shared backend records; a flow without
///   one was opened while the backend was the entry's VIP's alone, so the entry translates it;
/// - no entry (a backend of a wildcard-port VIP): the flow's [`REVERSE_NAT_MAP`] entry.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReverseNat {
    pub vip_addr: [u8; 16],
    /// Network byte order.
    pub vip_port: [u8; 2],
    /// `REPLY_*` bits ([`BACKEND_VIPS_MAP`] entries only; zero in [`REVERSE_NAT_MAP`]).
    pub flags: u8,
    pub _pad: u8,
    pub vip_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(size_of::<ReverseNat>() == 28);

/// [`ReverseNat::flags`] of a [`BACKEND_VIPS_MAP`] entry: several VIPs use this backend
/// address:port.
pub const REPLY_SHARED: u8 = 1;

/// Key of [`LOCAL_ADDRS_MAP`]: an address.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AddrKey>() == 20);

/// Key of [`BACKEND_VIPS_MAP`]: a backend address:port as a reply's source.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<BackendKey>() == 20);

/// An element of [`NEXT_HOPS_MAP`]: where packets to a backend leave, as `bpf_fib_lookup`
/// answered for one of them. Used while [`NextHop::is_fresh`]; then looked up again.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Destination MAC: the next hop's.
    pub dmac: [u8; 6],
    /// Source MAC: the egress interface's.
    pub smac: [u8; 6],
    /// Egress interface.
    pub ifindex: u32,
    /// The route's MTU: a longer packet takes the full lookup (which reports it too big).
    pub mtu: u16,
    pub _pad: [u8; 2],
    /// [`Settings::next_hop_generation`] when looked up; 0 never.
    pub generation: u32,
    /// `bpf_ktime_get_coarse_ns()` when looked up.
    pub looked_up_ns: u64,
}
const _: () = assert!(size_of::<NextHop>() == 32);

/// How long a kept next hop is used before the FIB is asked again, even without a change the
/// agent saw (it bumps [`Settings::next_hop_generation`] on route, neighbour and link changes).
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

impl NextHop {
    /// True if this next hop may be used at `now_ns` for a packet of IP length `len` while the
    /// agent's generation is `generation`.
    #[inline(always)]
    pub const fn is_fresh(&self, generation: u32, now_ns: u64, len: u16) -> bool {
        self.generation != 0
            && self.generation == generation
            && now_ns.wrapping_sub(self.looked_up_ns) < NEXT_HOP_TTL_NS
            && len <= self.mtu
    }
}

/// Packets, bytes and new flows: elements of [`VIP_STATS_MAP`] and [`BACKEND_STATS_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(size_of::<Stats>() == 24);

/// Settings for the whole program: the one element of [`SETTINGS_MAP`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Seed of the flow and address hashes (the same on every gateway of a cluster keeps
    /// `maglev` and `source-hash` choices the same everywhere).
    pub hash_seed: u32,
    /// Bumped by the agent when routes, neighbours or links change: next hops kept from an
    /// older generation are looked up again ([`NextHop`]). Never 0.
    pub next_hop_generation: u32,
    pub timeouts: crate::conntrack::Timeouts,
    /// New flows per second per CPU above which new flows of consistent-hash VIPs are sent on
    /// without state ([`crate::conntrack::stateless_new_flow`]); 0: no limit.
    pub new_flow_rate_limit: u32,
    /// 1: echo requests to VIP addresses are answered by the program; 0: passed to the kernel.
    pub icmp_echo: u8,
    /// How many low bits of the `ipip` outer IPv4 source come from the flow hash (at most
    /// [`crate::encap::MAX_SOURCE_BITS`]): the host bits of the configured source prefix.
    pub ipip_source_bits_v4: u8,
    /// As [`Settings::ipip_source_bits_v4`], for IPv6.
    pub ipip_source_bits_v6: u8,
    pub _pad: u8,
    /// The `ipip` outer IPv4 source prefix (see [`crate::encap`]).
    pub ipip_source_v4: [u8; 4],
    /// The `ipip` outer IPv6 source prefix.
    pub ipip_source_v6: [u8; 16],
    pub _pad2: [u8; 4],
}
const _: () = assert!(size_of::<Settings>() == 80);

/// The default `ipip` outer IPv4 source prefix, 10.255.0.0/16.
pub const DEFAULT_IPIP_SOURCE_V4: ([u8; 4], u8) = ([10, 255, 0, 0], 16);
/// The default `ipip` outer IPv6 source prefix, fd00:ffff:ffff::/96 (its last 16 bits vary).
pub const DEFAULT_IPIP_SOURCE_V6: ([u8; 16], u8) = (
    [
        0xfd, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ],
    96,
);

impl Default for Settings {
    /// Echo answers on, the default timeouts, no new-flow limit, no next-hop generation yet.
    fn default() -> Self {
        Self {
            hash_seed: 0,
            next_hop_generation: 0,
            timeouts: crate::conntrack::Timeouts::default(),
            new_flow_rate_limit: 0,
            icmp_echo: 1,
            ipip_source_bits_v4: 32 - DEFAULT_IPIP_SOURCE_V4.1,
            ipip_source_bits_v6: crate::encap::MAX_SOURCE_BITS,
            _pad: 0,
            ipip_source_v4: DEFAULT_IPIP_SOURCE_V4.0,
            ipip_source_v6: DEFAULT_IPIP_SOURCE_V6.0,
            _pad2: [0; 4],
        }
    }
}

/// Size of [`Settings`] before the `ipip` source prefixes were added to it.
pub const SETTINGS_V2_SIZE: usize = 56;

impl Settings {
    /// The settings a program of the layout before `ipip` kept ([`SETTINGS_V2_SIZE`] bytes,
    /// native byte order): every field it had, the `ipip` prefixes at their defaults. So that
    /// an agent adopting such a running program, to replace it, keeps its settings.
    pub fn from_v2_bytes(b: &[u8; SETTINGS_V2_SIZE]) -> Self {
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(word)
        };
        Self {
            hash_seed: u32_at(0),
            next_hop_generation: u32_at(4),
            timeouts: crate::conntrack::Timeouts {
                tcp_syn_ns: u64_at(8),
                tcp_established_ns: u64_at(16),
                tcp_fin_ns: u64_at(24),
                tcp_rst_ns: u64_at(32),
                udp_ns: u64_at(40),
            },
            new_flow_rate_limit: u32_at(48),
            icmp_echo: b[52],
            ..Self::default()
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (for every impl below): each type is `repr(C)`, `Copy`, made only of integers and
    // byte arrays with every padding byte an explicit field (the size assertions above check
    // there is no implicit padding), so every bit pattern is a valid value.
    macro_rules! pod {
        ($($t:ty),*) => {
            $(
                // SAFETY: see the module comment above.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }
    pod!(
        crate::probe::ProbeTunnel,
        VipKey,
        VipMeta,
        VipAddrKey,
        Backend,
        BackendLoad,
        ReverseNat,
        BackendKey,
        AddrKey,
        NextHop,
        Stats,
        Settings
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_of_the_layout_before_ipip_are_read_whole() {
        let mut b = [0u8; SETTINGS_V2_SIZE];
        b[0..4].copy_from_slice(&7u32.to_ne_bytes());
        b[4..8].copy_from_slice(&3u32.to_ne_bytes());
        for (n, at) in [8, 16, 24, 32, 40].into_iter().enumerate() {
            b[at..at + 8].copy_from_slice(&(1_000_000_007u64 * (n as u64 + 1)).to_ne_bytes());
        }
        b[48..52].copy_from_slice(&5000u32.to_ne_bytes());
        b[52] = 0;
        let s = Settings::from_v2_bytes(&b);
        assert_eq!((s.hash_seed, s.next_hop_generation), (7, 3));
        assert_eq!(s.timeouts.tcp_syn_ns, 1_000_000_007);
        assert_eq!(s.timeouts.udp_ns, 5 * 1_000_000_007);
        assert_eq!((s.new_flow_rate_limit, s.icmp_echo), (5000, 0));
        assert_eq!(s.ipip_source_v4, DEFAULT_IPIP_SOURCE_V4.0);
        assert_eq!(s.ipip_source_bits_v4, 16);
    }
}
