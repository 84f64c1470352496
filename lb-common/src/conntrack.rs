//! The connection table's value ([`FlowState`]: which backend a flow is pinned to, in what TCP
//! state, last seen when) and its pure state machine and expiry.
//!
//! The state machine is a load balancer's coarse view of TCP, in the spirit of IPVS: enough to
//! give half-open, closing and reset flows short timeouts, and to notice a new connection on a
//! reused 5-tuple. It never drops packets: every input leads to some state.

use crate::FlowKey;

/// No packet seen yet: a zeroed entry. Also what an expired entry counts as (see
/// [`current_state`]).
pub const STATE_NEW: u8 = 0;
/// The client sent SYN; the handshake is not complete.
pub const STATE_SYN_SENT: u8 = 1;
/// The client acknowledged the handshake (or the flow was picked up mid-stream).
pub const STATE_ESTABLISHED: u8 = 2;
/// A FIN was seen in either direction: the connection is closing.
pub const STATE_FIN: u8 = 3;
/// A RST was seen in either direction: the connection is closed.
pub const STATE_CLOSED: u8 = 4;
/// A UDP flow (no states; the caller stores this for UDP and [`next_state`] keeps it).
pub const STATE_UDP: u8 = 5;

/// TCP flags byte: FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flags byte: SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flags byte: RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flags byte: ACK.
pub const TCP_ACK: u8 = 0x10;

/// Value of the connection table, keyed by the flow's `FlowKey`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// One of the `STATE_*` constants.
    pub state: u8,
    /// When the flow began ([`born_stamp`]): the clock in units of 2^30 ns (about 1.07 s),
    /// its low 24 bits little-endian, so [`age_ns`] is good to about a second for some 208
    /// days. Zero in entries written by programs before it (their age counts from the clock's
    /// start).
    pub born: [u8; 3],
    /// `bpf_ktime_get_coarse_ns()` (`CLOCK_MONOTONIC`, to a tick) of the last packet.
    pub last_seen_ns: u64,
}

/// The unit of [`FlowState::born`]: 2^30 ns.
pub const BORN_SHIFT: u32 = 30;

/// [`FlowState::born`] for a flow beginning at `now_ns`.
#[inline(always)]
pub fn born_stamp(now_ns: u64) -> [u8; 3] {
    let units = now_ns >> BORN_SHIFT;
    [units as u8, (units >> 8) as u8, (units >> 16) as u8]
}

/// How long ago (to a unit of [`BORN_SHIFT`], rounded down) a flow stamped `born` began, at
/// `now_ns`; the stamp wraps after 2^24 units, so ages of some 208 days or more come round.
pub fn age_ns(born: [u8; 3], now_ns: u64) -> u64 {
    let now = (now_ns >> BORN_SHIFT) as u32 & 0x00ff_ffff;
    let then = u32::from_le_bytes([born[0], born[1], born[2], 0]);
    u64::from(now.wrapping_sub(then) & 0x00ff_ffff) << BORN_SHIFT
}

const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

#[cfg(feature = "user")]
// SAFETY: `FlowState` is `repr(C)`, `Copy`, made only of integers and a byte array, with its
// padding taken by `born` (the size assertion above checks there is no other), so every
// bit pattern is valid.
unsafe impl aya::Pod for FlowState {}

/// How long an entry lives after its last packet, per state, in nanoseconds. `repr(C)` (five
/// `u64`, no padding) so it can sit in a map value; `Default` is [`DEFAULT_TIMEOUTS`].
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// [`STATE_NEW`] and [`STATE_SYN_SENT`]: half-open connections.
    pub tcp_syn_ns: u64,
    /// [`STATE_ESTABLISHED`].
    pub tcp_established_ns: u64,
    /// [`STATE_FIN`]: closing, possibly half-closed with data still flowing one way.
    pub tcp_fin_ns: u64,
    /// [`STATE_CLOSED`]: reset; kept briefly for stray packets.
    pub tcp_rst_ns: u64,
    /// [`STATE_UDP`].
    pub udp_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Timeouts>() == 40);

impl Default for Timeouts {
    fn default() -> Self {
        DEFAULT_TIMEOUTS
    }
}

const SECOND_NS: u64 = 1_000_000_000;

/// Defaults modelled on IPVS (`ip_vs_proto_tcp.c`, `ip_vs_proto_udp.c`): established 15 min
/// and UDP 5 min as in IPVS; SYN 5 s (IPVS: 60 s SYN_RECV, 120 s SYN_SENT; far shorter here:
/// a half-open flow lives in the embryonic table, and a SYN flood's entries should make way
/// fast; a client whose SYN-ACK was lost retransmits its SYN within 1 s, then 3 s); FIN 60 s (between IPVS's LAST_ACK 30 s and FIN_WAIT 120 s); RST 10 s
/// (IPVS CLOSE). The table is an LRU map as well, so idle entries also go under pressure.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp_syn_ns: 5 * SECOND_NS,
    tcp_established_ns: 900 * SECOND_NS,
    tcp_fin_ns: 60 * SECOND_NS,
    tcp_rst_ns: 10 * SECOND_NS,
    udp_ns: 300 * SECOND_NS,
};

/// The TCP state after a packet with `tcp_flags` (the raw flags byte), from the client if
/// `from_client`, else from the backend. [`STATE_UDP`] stays [`STATE_UDP`]; an unknown state
/// counts as [`STATE_NEW`].
///
/// In order of precedence:
/// - RST (either side) closes.
/// - SYN with FIN is invalid and changes nothing.
/// - SYN without ACK from the client starts over in [`STATE_SYN_SENT`], whatever came before
///   (a new connection on a reused 5-tuple); from the backend it changes nothing.
/// - SYN+ACK changes nothing (the backend's half of the handshake).
/// - FIN (either side) moves an open flow to [`STATE_FIN`]; a closed flow stays closed.
/// - A client ACK completes the handshake ([`STATE_SYN_SENT`] to [`STATE_ESTABLISHED`]) or picks
///   up a flow seen mid-stream ([`STATE_NEW`] to [`STATE_ESTABLISHED`]); anything else stays.
#[inline(always)]
pub fn next_state(state: u8, tcp_flags: u8, from_client: bool) -> u8 {
    let state = match state {
        STATE_UDP => return STATE_UDP,
        STATE_SYN_SENT | STATE_ESTABLISHED | STATE_FIN | STATE_CLOSED => state,
        _ => STATE_NEW,
    };
    let (syn, ack, fin, rst) = (
        tcp_flags & TCP_SYN != 0,
        tcp_flags & TCP_ACK != 0,
        tcp_flags & TCP_FIN != 0,
        tcp_flags & TCP_RST != 0,
    );
    if rst {
        STATE_CLOSED
    } else if syn {
        if !fin && !ack && from_client {
            STATE_SYN_SENT
        } else {
            state
        }
    } else if fin {
        if state == STATE_CLOSED {
            STATE_CLOSED
        } else {
            STATE_FIN
        }
    } else if ack && from_client && (state == STATE_SYN_SENT || state == STATE_NEW) {
        STATE_ESTABLISHED
    } else {
        state
    }
}

/// How far a packet's time must be past an entry's `last_seen_ns` before the data path writes
/// it again: not every packet dirties the entry's cache line. Expiry is early by at most this.
pub const REFRESH_NS: u64 = SECOND_NS;

/// True if an entry last stamped at `last_seen_ns` should be stamped `now_ns`.
#[inline(always)]
pub const fn needs_refresh(last_seen_ns: u64, now_ns: u64) -> bool {
    now_ns.wrapping_sub(last_seen_ns) >= REFRESH_NS
}

/// Applies a packet (`tcp_flags`, from the client if `from_client`) seen at `now_ns` to a live
/// entry: the state moves by [`next_state`], and the timestamp is written when the state
/// changed or [`needs_refresh`] says so. Fields that do not change are not written, so most
/// packets of a flow only read its entry. Returns true if the entry was written.
#[inline(always)]
pub fn touch(entry: &mut FlowState, tcp_flags: u8, from_client: bool, now_ns: u64) -> bool {
    let state = next_state(entry.state, tcp_flags, from_client);
    if state != entry.state {
        entry.state = state;
        entry.last_seen_ns = now_ns;
        true
    } else if needs_refresh(entry.last_seen_ns, now_ns) {
        entry.last_seen_ns = now_ns;
        true
    } else {
        false
    }
}

/// The timeout of `state` under `timeouts`; an unknown state gets 0 (expires at once).
#[inline(always)]
pub fn timeout_ns(state: u8, timeouts: &Timeouts) -> u64 {
    match state {
        STATE_NEW | STATE_SYN_SENT => timeouts.tcp_syn_ns,
        STATE_ESTABLISHED => timeouts.tcp_established_ns,
        STATE_FIN => timeouts.tcp_fin_ns,
        STATE_CLOSED => timeouts.tcp_rst_ns,
        STATE_UDP => timeouts.udp_ns,
        _ => 0,
    }
}

/// Whether `entry` has been idle longer than its state's timeout at `now_ns`. A clock that
/// went backwards (`now_ns < last_seen_ns`) counts as no idle time.
#[inline(always)]
pub fn is_expired(entry: &FlowState, now_ns: u64, timeouts: &Timeouts) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) > timeout_ns(entry.state, timeouts)
}

/// Whether `entry` counts as an active connection of its backend at `now_ns` (for
/// least-connections and draining): not closing or closed, and not expired.
#[inline(always)]
pub fn is_active(entry: &FlowState, now_ns: u64, timeouts: &Timeouts) -> bool {
    !matches!(entry.state, STATE_FIN | STATE_CLOSED) && !is_expired(entry, now_ns, timeouts)
}

/// The state to feed [`next_state`]: the entry's, or [`STATE_NEW`] if it has expired, so a
/// packet on an expired flow is treated like the first of a new one.
#[inline(always)]
pub fn current_state(entry: &FlowState, now_ns: u64, timeouts: &Timeouts) -> u8 {
    if is_expired(entry, now_ns, timeouts) {
        STATE_NEW
    } else {
        entry.state
    }
}

/// Which backend a packet of a new flow goes to, and whether this CPU opened the flow, once
/// it has tried to record the flow with the backend it `picked`: `inserted` if its entry went
/// in (the map update refuses to replace an existing one), else `recorded`, the usable backend
/// the table holds for the flow now, if any.
///
/// A flow's first packets can run on two CPUs at once (a retransmitted SYN moved to another
/// receive queue, traffic of one flow on two interfaces). Both miss the table and pick; if
/// each sent its packet to its own pick, the client's handshake would end at one backend and
/// its next packet at another, which answers with a reset. The entry that went in first
/// decides for everyone: the CPU that lost the race follows it, and leaves recording the
/// reverse translation and counting the flow to the winner. If nothing usable was recorded
/// (the update failed), the packet still goes to this CPU's pick.
#[inline(always)]
pub fn settle_new_flow(picked: u32, inserted: bool, recorded: Option<u32>) -> (u32, bool) {
    match (inserted, recorded) {
        (false, Some(winner)) => (winner, false),
        _ => (picked, true),
    }
}

/// Where a new flow's entry goes, by its first packet ([`FlowTable`]).
///
/// A TCP flow opened by a SYN is *embryonic* until the client completes the handshake: it is
/// recorded in the small embryonic table, where a SYN flood only evicts other half-open flows,
/// and moves to the connection table on the client's first packet without SYN ([`promotes`]).
/// A TCP flow first seen mid-stream (its state was lost: evicted, expired, or recorded by
/// another balancer) and every UDP flow go straight to the connection table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FlowTable {
    Embryonic,
    Connections,
}

/// The table a new flow of protocol `is_tcp` whose first packet has `tcp_flags` is recorded in.
#[inline(always)]
pub fn new_flow_table(is_tcp: bool, tcp_flags: u8) -> FlowTable {
    if is_tcp && next_state(STATE_NEW, tcp_flags, true) == STATE_SYN_SENT {
        FlowTable::Embryonic
    } else {
        FlowTable::Connections
    }
}

/// Whether a client packet with `tcp_flags` on an embryonic flow completes its handshake (the
/// handshake ACK, or any later packet: every segment after the SYN carries ACK), moving the
/// flow to the connection table. A retransmitted SYN keeps it embryonic; a RST closes it where
/// it is; a segment without ACK completes nothing.
#[inline(always)]
pub fn promotes(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK
}

/// How long [`RateWindow`] counts before it starts over.
pub const RATE_WINDOW_NS: u64 = SECOND_NS;

/// New flows one CPU has seen in the current window (`repr(C)`, an element of a per-CPU array).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// `bpf_ktime_get_coarse_ns()` when the window began.
    pub start_ns: u64,
    /// New flows since.
    pub count: u64,
}

const _: () = assert!(core::mem::size_of::<RateWindow>() == 16);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, two `u64`, no padding (size asserted above); every bit pattern is valid.
unsafe impl aya::Pod for RateWindow {}

/// Counts a new flow seen at `now_ns` and says whether this CPU is over `limit` new flows per
/// window ([`RATE_WINDOW_NS`]); a `limit` of 0 never is. A window starts at the first flow
/// after the previous one ended (a fixed window, as Katran's `max_conn_rate`), and a clock
/// that went backwards starts one too. Flows over the limit count as well, so the limit stays
/// exceeded as long as the flood lasts.
#[inline(always)]
pub fn over_rate(window: &mut RateWindow, now_ns: u64, limit: u32) -> bool {
    if now_ns.wrapping_sub(window.start_ns) >= RATE_WINDOW_NS {
        window.start_ns = now_ns;
        window.count = 0;
    }
    window.count = window.count.saturating_add(1);
    limit != 0 && window.count > u64::from(limit)
}

/// Whether a new flow of a VIP with `scheduler` is sent on without any state while this CPU is
/// `over_rate`: only consistent-hash schedulers (Maglev, source hash), whose choice the flow's
/// next packets make again; every other scheduler would send them elsewhere.
#[inline(always)]
pub fn stateless_new_flow(scheduler: u8, over_rate: bool) -> bool {
    over_rate
        && (scheduler == crate::maps::scheduler::MAGLEV
            || scheduler == crate::maps::scheduler::SOURCE_HASH)
}

/// The port a flow's packets reach its backend on: the backend's, or the VIP's destination
/// port (`dst_port`, network byte order) for a backend without one (of a wildcard-port VIP).
#[inline(always)]
pub const fn backend_port(backend_port: [u8; 2], dst_port: [u8; 2]) -> [u8; 2] {
    if backend_port[0] == 0 && backend_port[1] == 0 {
        dst_port
    } else {
        backend_port
    }
}

/// The key of the reverse-table entry (`REVERSE_NAT` or `EMBRYONIC_REVERSE`) of the tracked
/// flow `key` (client → VIP) sent to `backend`:`port` ([`backend_port`]): its replies' flow,
/// backend → client. What the data path's `record_reverse` writes; the agent deletes it with
/// the flow so that no reverse entry outlives its flow.
pub const fn reverse_key(key: &FlowKey, backend: &[u8; 16], port: [u8; 2]) -> FlowKey {
    FlowKey {
        src_addr: *backend,
        dst_addr: key.src_addr,
        src_port: port,
        dst_port: key.src_port,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// A state's name, as the agent shows it (`conn list`).
pub const fn state_name(state: u8) -> &'static str {
    match state {
        STATE_NEW => "new",
        STATE_SYN_SENT => "syn-sent",
        STATE_ESTABLISHED => "established",
        STATE_FIN => "fin",
        STATE_CLOSED => "closed",
        STATE_UDP => "udp",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SYN: u8 = TCP_SYN;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FIN_ACK: u8 = TCP_FIN | TCP_ACK;
    const RST: u8 = TCP_RST;
    const PSH_ACK: u8 = 0x08 | TCP_ACK;

    const CLIENT: bool = true;
    const BACKEND: bool = false;

    proptest! {
        /// A flow's age is the time since its stamp, to one unit below, whatever the clock
        /// (the stamp wraps): for any start and any age under the wrap.
        #[test]
        fn age_is_the_time_since_the_stamp(start: u64, age in 0u64..((1 << (BORN_SHIFT + 24)) - (1 << BORN_SHIFT))) {
            let start = start >> 1;
            let got = age_ns(born_stamp(start), start + age);
            prop_assert!(got <= age + (1 << BORN_SHIFT), "{got} for {age}");
            prop_assert!(got + (1 << BORN_SHIFT) > age, "{got} for {age}");
        }
    }

    proptest! {
        /// `touch` leaves the entry as if every packet had stamped it, give or take
        /// `REFRESH_NS`: the same state, a timestamp at most `REFRESH_NS` behind, and a write
        /// only when something changed.
        #[test]
        fn touch_is_a_lazy_stamp(
            state in 0u8..6,
            flags: u8,
            from_client: bool,
            last in 0u64..1 << 40,
            gap in 0u64..3 * REFRESH_NS,
        ) {
            let now = last + gap;
            let before = FlowState { backend_id: 7, state, born: [0; 3], last_seen_ns: last };
            let mut entry = before;
            let wrote = touch(&mut entry, flags, from_client, now);
            prop_assert_eq!(entry.state, next_state(state, flags, from_client));
            prop_assert!(now - entry.last_seen_ns < REFRESH_NS);
            prop_assert_eq!(wrote, entry != before);
            prop_assert_eq!(wrote, entry.state != state || gap >= REFRESH_NS);
            prop_assert_eq!(entry.backend_id, 7);
        }
    }

    #[test]
    fn transitions() {
        #[rustfmt::skip]
        let table: &[(&str, u8, u8, bool, u8)] = &[
            ("client SYN opens", STATE_NEW, SYN, CLIENT, STATE_SYN_SENT),
            ("backend SYN-ACK waits for the client", STATE_SYN_SENT, SYN_ACK, BACKEND, STATE_SYN_SENT),
            ("client ACK establishes", STATE_SYN_SENT, ACK, CLIENT, STATE_ESTABLISHED),
            ("backend ACK does not establish", STATE_SYN_SENT, ACK, BACKEND, STATE_SYN_SENT),
            ("retransmitted SYN", STATE_SYN_SENT, SYN, CLIENT, STATE_SYN_SENT),
            ("data keeps established", STATE_ESTABLISHED, PSH_ACK, CLIENT, STATE_ESTABLISHED),
            ("backend data keeps established", STATE_ESTABLISHED, PSH_ACK, BACKEND, STATE_ESTABLISHED),
            ("mid-stream pickup", STATE_NEW, PSH_ACK, CLIENT, STATE_ESTABLISHED),
            ("backend packet on a new entry", STATE_NEW, ACK, BACKEND, STATE_NEW),
            ("client FIN closes", STATE_ESTABLISHED, FIN_ACK, CLIENT, STATE_FIN),
            ("backend FIN closes", STATE_ESTABLISHED, FIN_ACK, BACKEND, STATE_FIN),
            ("ACK after FIN stays", STATE_FIN, ACK, CLIENT, STATE_FIN),
            ("FIN during handshake", STATE_SYN_SENT, FIN_ACK, CLIENT, STATE_FIN),
            ("RST during handshake", STATE_SYN_SENT, RST, BACKEND, STATE_CLOSED),
            ("RST when established", STATE_ESTABLISHED, RST | TCP_ACK, CLIENT, STATE_CLOSED),
            ("RST when closing", STATE_FIN, RST, BACKEND, STATE_CLOSED),
            ("RST on a new entry", STATE_NEW, RST, CLIENT, STATE_CLOSED),
            ("RST wins over SYN", STATE_ESTABLISHED, RST | SYN, CLIENT, STATE_CLOSED),
            ("ACK after RST stays closed", STATE_CLOSED, ACK, CLIENT, STATE_CLOSED),
            ("FIN after RST stays closed", STATE_CLOSED, FIN_ACK, CLIENT, STATE_CLOSED),
            ("new SYN after RST starts over", STATE_CLOSED, SYN, CLIENT, STATE_SYN_SENT),
            ("new SYN after FIN starts over", STATE_FIN, SYN, CLIENT, STATE_SYN_SENT),
            ("new SYN on established starts over", STATE_ESTABLISHED, SYN, CLIENT, STATE_SYN_SENT),
            ("backend SYN ignored", STATE_CLOSED, SYN, BACKEND, STATE_CLOSED),
            ("SYN+FIN ignored", STATE_ESTABLISHED, SYN | TCP_FIN, CLIENT, STATE_ESTABLISHED),
            ("no flags", STATE_SYN_SENT, 0, CLIENT, STATE_SYN_SENT),
            ("UDP stays UDP", STATE_UDP, SYN, CLIENT, STATE_UDP),
            ("unknown state counts as new", 200, SYN, CLIENT, STATE_SYN_SENT),
            ("unknown state, ACK", 200, ACK, CLIENT, STATE_ESTABLISHED),
        ];
        for &(what, state, flags, from_client, want) in table {
            assert_eq!(next_state(state, flags, from_client), want, "{what}");
        }
    }

    #[test]
    fn timeouts_by_state() {
        let t = Timeouts::default();
        assert_eq!(t, DEFAULT_TIMEOUTS);
        assert_eq!(timeout_ns(STATE_NEW, &t), 5 * SECOND_NS);
        assert_eq!(timeout_ns(STATE_SYN_SENT, &t), 5 * SECOND_NS);
        assert_eq!(timeout_ns(STATE_ESTABLISHED, &t), 900 * SECOND_NS);
        assert_eq!(timeout_ns(STATE_FIN, &t), 60 * SECOND_NS);
        assert_eq!(timeout_ns(STATE_CLOSED, &t), 10 * SECOND_NS);
        assert_eq!(timeout_ns(STATE_UDP, &t), 300 * SECOND_NS);
        assert_eq!(timeout_ns(99, &t), 0);
    }

    #[test]
    fn expiry() {
        let t = DEFAULT_TIMEOUTS;
        let entry = FlowState {
            backend_id: 3,
            state: STATE_FIN,
            last_seen_ns: 1_000 * SECOND_NS,
            ..FlowState::default()
        };
        let limit = entry.last_seen_ns + t.tcp_fin_ns;
        assert!(!is_expired(&entry, limit, &t));
        assert!(is_expired(&entry, limit + 1, &t));
        assert!(!is_expired(&entry, 0, &t), "clock went backwards");
        assert!(is_expired(&entry, u64::MAX, &t));
        let forever = Timeouts {
            tcp_fin_ns: u64::MAX,
            ..t
        };
        assert!(!is_expired(&entry, u64::MAX, &forever));
    }

    #[test]
    fn active_means_open_and_unexpired() {
        let t = DEFAULT_TIMEOUTS;
        let at = |state, last_seen_ns| FlowState {
            backend_id: 3,
            state,
            last_seen_ns,
            ..FlowState::default()
        };
        let now = 10_000 * SECOND_NS;
        for state in [STATE_NEW, STATE_SYN_SENT, STATE_ESTABLISHED, STATE_UDP] {
            assert!(is_active(&at(state, now), now, &t), "state {state}");
            let idle = at(state, now - timeout_ns(state, &t) - 1);
            assert!(!is_active(&idle, now, &t), "state {state}, expired");
        }
        for state in [STATE_FIN, STATE_CLOSED] {
            assert!(!is_active(&at(state, now), now, &t), "state {state}");
        }
        // An unknown state has no timeout: expired after any idle time.
        assert!(is_active(&at(9, now), now, &t));
        assert!(!is_active(&at(9, now - 1), now, &t));
    }

    #[test]
    fn new_syn_on_expired_entry_starts_over() {
        let t = DEFAULT_TIMEOUTS;
        let entry = FlowState {
            backend_id: 7,
            state: STATE_ESTABLISHED,
            last_seen_ns: 5 * SECOND_NS,
            ..FlowState::default()
        };
        let live = entry.last_seen_ns + 10 * SECOND_NS;
        let dead = entry.last_seen_ns + t.tcp_established_ns + 1;
        assert_eq!(current_state(&entry, live, &t), STATE_ESTABLISHED);
        assert_eq!(current_state(&entry, dead, &t), STATE_NEW);
        // A FIN on a live entry closes it; on an expired one it is a stray packet of a new
        // flow, and a SYN starts over either way.
        assert_eq!(
            next_state(current_state(&entry, live, &t), FIN_ACK, CLIENT),
            STATE_FIN
        );
        assert_eq!(
            next_state(current_state(&entry, dead, &t), SYN, CLIENT),
            STATE_SYN_SENT
        );
        let closed = FlowState {
            state: STATE_CLOSED,
            ..entry
        };
        let after_rst = entry.last_seen_ns + t.tcp_rst_ns + 1;
        assert_eq!(current_state(&closed, after_rst, &t), STATE_NEW);
        assert_eq!(
            next_state(current_state(&closed, after_rst, &t), ACK, CLIENT),
            STATE_ESTABLISHED
        );
    }

    /// What happened, picked, inserted, recorded, and the expected backend and "opened".
    type SettleCase = (&'static str, u32, bool, Option<u32>, (u32, bool));

    #[test]
    fn new_flow_follows_the_cpu_that_recorded_it_first() {
        #[rustfmt::skip]
        let table: &[SettleCase] = &[
            ("this CPU recorded it", 7, true, None, (7, true)),
            ("this CPU recorded it (table read back)", 7, true, Some(7), (7, true)),
            ("another CPU recorded another backend first", 7, false, Some(9), (9, false)),
            ("another CPU recorded the same backend first", 7, false, Some(7), (7, false)),
            ("nothing recorded: the update failed", 7, false, None, (7, true)),
        ];
        for &(what, picked, inserted, recorded, want) in table {
            assert_eq!(settle_new_flow(picked, inserted, recorded), want, "{what}");
        }
    }

    fn arb_timeouts() -> impl Strategy<Value = Timeouts> {
        any::<[u64; 5]>().prop_map(|[a, b, c, d, e]| Timeouts {
            tcp_syn_ns: a,
            tcp_established_ns: b,
            tcp_fin_ns: c,
            tcp_rst_ns: d,
            udp_ns: e,
        })
    }

    proptest! {
        /// Any input gives a known state, and expiry never un-expires as time goes on.
        #[test]
        fn no_panic_and_expiry_is_monotone(
            state: u8, flags: u8, from_client: bool, backend_id: u32,
            last_seen_ns: u64, now_a: u64, now_b: u64,
            timeouts in prop_oneof![Just(DEFAULT_TIMEOUTS), arb_timeouts()],
        ) {
            let next = next_state(state, flags, from_client);
            prop_assert!(next <= STATE_UDP);
            let entry = FlowState { backend_id, state, born: [0; 3], last_seen_ns };
            let (early, late) = (now_a.min(now_b), now_a.max(now_b));
            if is_expired(&entry, early, &timeouts) {
                prop_assert!(is_expired(&entry, late, &timeouts));
            }
            prop_assert!(!is_expired(&entry, last_seen_ns, &timeouts));
            let state = current_state(&entry, late, &timeouts);
            prop_assert!(state == entry.state || state == STATE_NEW);
        }

        /// Two CPUs that picked for one new flow at once send it to one backend, and exactly
        /// one of them opens it: the one whose entry went in.
        #[test]
        fn racing_cpus_agree_and_one_opens(a: u32, b: u32, a_first: bool) {
            let first = if a_first { a } else { b };
            let (a_id, a_new) = settle_new_flow(a, a_first, Some(first));
            let (b_id, b_new) = settle_new_flow(b, !a_first, Some(first));
            prop_assert_eq!(a_id, first);
            prop_assert_eq!(b_id, first);
            prop_assert!(a_new != b_new);
        }
    }

    #[test]
    fn syn_opens_an_embryonic_flow_and_the_handshake_ack_promotes_it() {
        #[rustfmt::skip]
        let table: &[(&str, bool, u8, FlowTable)] = &[
            ("SYN", true, SYN, FlowTable::Embryonic),
            ("mid-stream ACK", true, ACK, FlowTable::Connections),
            ("mid-stream data", true, PSH_ACK, FlowTable::Connections),
            ("SYN-ACK is no client opening", true, SYN_ACK, FlowTable::Connections),
            ("RST", true, RST, FlowTable::Connections),
            ("UDP", false, SYN, FlowTable::Connections),
            ("UDP, no flags", false, 0, FlowTable::Connections),
        ];
        for &(what, tcp, flags, want) in table {
            assert_eq!(new_flow_table(tcp, flags), want, "{what}");
        }
        assert!(promotes(ACK));
        assert!(promotes(PSH_ACK));
        assert!(promotes(FIN_ACK));
        assert!(!promotes(SYN), "retransmitted SYN");
        assert!(!promotes(RST));
        assert!(!promotes(RST | TCP_ACK));
        assert!(!promotes(0), "no ACK");
    }

    #[test]
    fn only_consistent_hash_vips_go_stateless() {
        use crate::maps::scheduler::*;
        for (i, name) in NAMES.iter().enumerate() {
            let s = i as u8;
            let hashed = s == MAGLEV || s == SOURCE_HASH;
            assert_eq!(stateless_new_flow(s, true), hashed, "{name}");
            assert!(!stateless_new_flow(s, false), "{name}");
        }
    }

    proptest! {
        /// A promoted flow is established (or closing) in the connection table, never
        /// half-open there, and the packets that promote are exactly the ACKs without SYN or
        /// RST.
        #[test]
        fn promotion_leaves_no_half_open_entry(flags: u8) {
            if promotes(flags) {
                let state = next_state(STATE_SYN_SENT, flags, true);
                prop_assert!(state == STATE_ESTABLISHED || state == STATE_FIN, "{}", state);
            }
            prop_assert_eq!(
                promotes(flags),
                flags & TCP_ACK != 0 && flags & (TCP_SYN | TCP_RST) == 0
            );
        }

        /// Within one window exactly `limit` flows pass (all with limit 0), whatever the
        /// order of arrival inside the window; the next window starts over.
        #[test]
        fn rate_window_lets_limit_flows_through_per_window(
            limit in 0u32..50,
            start in 0u64..1 << 50,
            mut offsets in proptest::collection::vec(0u64..RATE_WINDOW_NS, 0..120),
        ) {
            offsets.sort_unstable();
            // The first flow opens a window at its own time.
            let mut window = RateWindow { start_ns: start.wrapping_sub(RATE_WINDOW_NS), count: 0 };
            let over = offsets.iter().filter(|&&o| over_rate(&mut window, start + o, limit)).count();
            let expected = if limit == 0 { 0 } else { offsets.len().saturating_sub(limit as usize) };
            prop_assert_eq!(over, expected);
            // One window later: the first flow is under any non-zero limit again.
            let later = start + offsets.last().copied().unwrap_or(0) + RATE_WINDOW_NS;
            prop_assert!(!over_rate(&mut window, later, limit.max(1)));
            prop_assert_eq!(window.count, 1);
        }

        /// A clock that goes backwards starts a new window rather than stretching one.
        #[test]
        fn rate_window_restarts_on_a_backwards_clock(now in RATE_WINDOW_NS..u64::MAX / 2, back in 1u64..1 << 40) {
            let mut window = RateWindow { start_ns: now, count: 1_000 };
            prop_assert!(!over_rate(&mut window, now - back.min(now), 1));
            prop_assert_eq!(window.count, 1);
        }
    }

    #[test]
    fn the_reverse_key_is_the_reply_of_the_flow_to_its_backend() {
        let key = FlowKey {
            src_addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40000u16.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            proto: crate::flow::PROTO_TCP,
            family: crate::flow::FAMILY_IPV4,
            _pad: [0; 2],
        };
        let backend = [10, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let port = backend_port(8080u16.to_be_bytes(), key.dst_port);
        let reverse = reverse_key(&key, &backend, port);
        assert_eq!(reverse.src_addr, backend);
        assert_eq!(reverse.src_port, 8080u16.to_be_bytes());
        assert_eq!(reverse.dst_addr, key.src_addr);
        assert_eq!(reverse.dst_port, key.src_port);
        assert_eq!((reverse.proto, reverse.family), (key.proto, key.family));
        // A backend without a port takes the packet's.
        assert_eq!(backend_port([0, 0], key.dst_port), key.dst_port);
        // The reply of the reply's flow, seen from the VIP's side, is the client again.
        assert_eq!(reverse.reversed().dst_addr, backend);
    }

    #[test]
    fn every_state_has_a_name() {
        for state in [
            STATE_NEW,
            STATE_SYN_SENT,
            STATE_ESTABLISHED,
            STATE_FIN,
            STATE_CLOSED,
            STATE_UDP,
        ] {
            assert_ne!(state_name(state), "unknown");
        }
        assert_eq!(state_name(200), "unknown");
    }
}
