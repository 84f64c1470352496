//! The program's maps. Names, sizes and layouts come from `lb-common` so the agent finds them;
//! the agent resizes `SLOTS`, `CONNTRACK`, `EMBRYONIC`, `REVERSE_NAT` and `EMBRYONIC_REVERSE` at
//! load time.

use crate::parse::{L3, L4};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    FlowKey,
    acl::{AclKey, AclMatch},
    conntrack::{FlowState, RateWindow},
    counters::{COUNTER_COUNT, EVENT_COUNT},
    filter::FILTER_MAP_WORDS,
    frag::{FragEntry, FragKey},
    limit::{SourceKey, SourceLimit, TokenBucket},
    maps::{
        AddrKey, Backend, BackendKey, BackendLoad, DEFAULT_CONNTRACK_CAPACITY,
        DEFAULT_EMBRYONIC_CAPACITY, DEFAULT_SLOTS, FRAGMENTS_CAPACITY, MAX_ACL_ENTRIES,
        MAX_BACKENDS, MAX_LOCAL_ADDRS, MAX_TX_PORTS, MAX_VIPS, NextHop, ReverseNat,
        SOURCE_BUCKETS_CAPACITY, Settings, Stats, VipAddrKey, VipKey, VipMeta,
    },
};

/// One `u64` per [`lb_common::Counter`], per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Not preallocated, so that replacing a VIP's value frees the old one only after an RCU grace
/// period: a packet reading it sees the old tables or the new ones, never a recycled element.
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

#[map(name = "VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "SLOTS")]
pub static SLOTS: Array<u32> = Array::with_max_entries(DEFAULT_SLOTS, 0);

#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_CAPACITY, 0);

/// Half-open TCP flows, apart from `CONNTRACK` so that new flows evict only each other.
#[map(name = "EMBRYONIC")]
pub static EMBRYONIC: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_EMBRYONIC_CAPACITY, 0);

/// One `u64` per [`lb_common::counters::Event`], per CPU.
#[map(name = "EVENTS")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);

/// This CPU's new flows in the current second.
#[map(name = "FLOW_RATE")]
pub static FLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REVERSE_NAT")]
pub static REVERSE_NAT: LruHashMap<FlowKey, ReverseNat> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_CAPACITY, 0);

/// Reverse translations of half-open flows, apart from `REVERSE_NAT` as `EMBRYONIC` is apart
/// from `CONNTRACK`.
#[map(name = "EMBRYONIC_REVERSE")]
pub static EMBRYONIC_REVERSE: LruHashMap<FlowKey, ReverseNat> =
    LruHashMap::with_max_entries(DEFAULT_EMBRYONIC_CAPACITY, 0);

/// Written by the agent only, one entry per backend address:port at most. Not preallocated,
/// like `VIPS`: a replaced value is freed after an RCU grace period, so a reply reading it sees
/// the old entry or the new one, never a recycled element.
#[map(name = "BACKEND_VIPS")]
pub static BACKEND_VIPS: HashMap<BackendKey, ReverseNat> =
    HashMap::with_max_entries(MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

/// Per CPU: each CPU looks its next hops up itself and reads only its own, so a refresh never
/// makes another CPU's copy of the line stale and a reader never sees half an update.
#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "RR_CURSORS")]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKEND_LOAD")]
pub static BACKEND_LOAD: Array<BackendLoad> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "BACKEND_OPENED")]
pub static BACKEND_OPENED: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Working memory of one program run, in a per-CPU map rather than on the 512-byte stack.
///
/// It also keeps verification short: the verifier does not track what a map value holds, so
/// once the parse results are stored here, the paths through the parser (VLAN or not, TCP or
/// UDP, IPv6 extension headers) meet in one state instead of each being verified again through
/// the rest of the program.
#[repr(C)]
pub struct Scratch {
    pub l3: L3,
    pub l4: L4,
    /// The packet's own flow.
    pub key: FlowKey,
    /// The same flow seen from the other side.
    pub other: FlowKey,
    pub reverse: ReverseNat,
    /// A reply's source, as a backend.
    pub source: BackendKey,
    /// The packet an ICMP error quotes.
    pub quoted: Quoted,
    /// The MTU of the route a translated packet was too big for (`fwd::to_backend`).
    pub too_big_mtu: u16,
    /// The outer source of an `ipip` packet (`fwd::ipip_to_backend`).
    pub outer_src: [u8; 16],
    /// A source's key in the prefix lists (`acl`).
    pub acl: AclKey,
    /// A source prefix's key among the token buckets (`acl`).
    pub bucket: SourceKey,
    /// A fragmented datagram, and what its first fragment was translated to (`frag`).
    pub frag_key: FragKey,
    pub frag_entry: FragEntry,
}

/// The packet an ICMP error quotes, as far as the balancer reads it.
pub struct Quoted {
    /// Offset of the quoted IP header.
    pub ip_off: usize,
    /// Offset of the quoted transport header.
    pub l4_off: usize,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
}

/// This CPU's [`Scratch`].
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// What the first fragments of datagrams in flight were translated to (`frag`).
#[map(name = "FRAGMENTS")]
pub static FRAGMENTS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(FRAGMENTS_CAPACITY, 0);

/// The address filter (`lb_common::filter`): VIP addresses, then backend addresses.
#[map(name = "ADDR_FILTER")]
pub static ADDR_FILTER: Array<u64> = Array::with_max_entries(FILTER_MAP_WORDS, 0);

/// Per-VIP source allow and deny prefixes (`lb_common::acl`). An LPM trie is never
/// preallocated.
#[map(name = "ACL")]
pub static ACL: LpmTrie<AclMatch, u8> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

/// Per-VIP new-flow limits per source, by VIP id.
#[map(name = "SOURCE_LIMITS")]
pub static SOURCE_LIMITS: Array<SourceLimit> = Array::with_max_entries(MAX_VIPS, 0);

/// Token buckets per VIP and source prefix, shared by the CPUs (`lb_common::limit`).
#[map(name = "SOURCE_BUCKETS")]
pub static SOURCE_BUCKETS: LruHashMap<SourceKey, TokenBucket> =
    LruHashMap::with_max_entries(SOURCE_BUCKETS_CAPACITY, 0);
