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
    /// Not IP (ARP, LLDP, ...): passed to the kernel.
    PassNonIp = 0 => "pass_non_ip",
    /// IP, but neither to a VIP nor a reply of a tracked flow: passed (normal routing).
    PassNonVip = 1 => "pass_non_vip",
    /// Not to a VIP, and too short or malformed to tell more: passed (not ours to judge).
    PassMalformed = 2 => "pass_malformed",
    /// To a VIP: sent to a backend with XDP_TX (back out of the interface it came in on).
    FwdTx = 3 => "fwd_tx",
    /// To a VIP: sent to a backend with XDP_REDIRECT (out of another interface).
    FwdRedirect = 4 => "fwd_redirect",
    /// Reply from a backend, translated to come from the VIP, sent with XDP_TX.
    ReplyTx = 5 => "reply_tx",
    /// Reply from a backend, translated, sent with XDP_REDIRECT.
    ReplyRedirect = 6 => "reply_redirect",
    /// Translated, but the next hop's MAC address is not resolved yet: passed to the kernel,
    /// which resolves it (ARP/ND) and forwards the translated packet.
    PassNoNeighbour = 7 => "pass_no_neighbour",
    /// Translated, but the kernel's FIB had no forwarding answer (no route, forwarding off,
    /// TTL/hop limit about to expire, ...): passed to the kernel to decide.
    PassFib = 8 => "pass_fib",
    /// Translated; its TCP/UDP checksum was a partial one (transmit offload of a local sender):
    /// passed to the kernel, which completes the checksum on the way out.
    PassPartialChecksum = 9 => "pass_partial_checksum",
    /// To a VIP, cut short: the frame ends inside its IP or TCP/UDP header, or before the end
    /// its IP header gives (IPv4 total length, IPv6 payload length): dropped.
    DropTruncated = 10 => "drop_truncated",
    /// To a VIP, with an IP header that is not well-formed (IPv4 version, IHL or a total length
    /// shorter than the header; IPv6 version, extension headers longer than the payload):
    /// dropped.
    DropBadHeader = 11 => "drop_bad_header",
    /// To a VIP, with IPv4 options: dropped.
    DropIpOptions = 12 => "drop_ip_options",
    /// To a VIP, a fragment that cannot be balanced: not TCP or UDP, a first fragment that
    /// does not hold its whole transport header (or a UDP length it holds whole), an IPv6
    /// fragment header cut short: dropped.
    DropFragment = 13 => "drop_fragment",
    /// To a VIP, IPv6 with more extension headers than the parser follows: dropped.
    DropExtHeaders = 14 => "drop_ext_headers",
    /// To a VIP that has no backend taking new flows: dropped.
    DropNoBackend = 15 => "drop_no_backend",
    /// A map the program needs was missing an entry it should have (agent bug): dropped.
    DropInternal = 16 => "drop_internal",
    /// To a VIP, with a TCP data offset under 5 words or beyond the segment, or a UDP length
    /// under 8 or other than the IP payload's: dropped.
    DropBadL4Header = 17 => "drop_bad_l4_header",
    /// To a VIP, with TTL (hop limit) 1 or 0: passed untranslated, so that the kernel's ICMP
    /// time exceeded names the VIP the client sent to, not a backend.
    PassTtlExpired = 18 => "pass_ttl_expired",
    /// A reply of a backend that arrived on an interface that does not lead to that backend
    /// (spoofed from the client side): dropped.
    DropSpoofedReply = 19 => "drop_spoofed_reply",
    /// ICMP/ICMPv6 echo request to a VIP address, answered from the VIP with XDP_TX.
    IcmpEchoTx = 20 => "icmp_echo_tx",
    /// ICMP error about a VIP's reply (from the internet), translated for its backend, sent
    /// with XDP_TX.
    IcmpToBackendTx = 21 => "icmp_to_backend_tx",
    /// As [`Counter::IcmpToBackendTx`], sent with XDP_REDIRECT.
    IcmpToBackendRedirect = 22 => "icmp_to_backend_redirect",
    /// ICMP error about a client's packet (from the backend side), translated to name the VIP,
    /// sent with XDP_TX.
    IcmpToClientTx = 23 => "icmp_to_client_tx",
    /// As [`Counter::IcmpToClientTx`], sent with XDP_REDIRECT.
    IcmpToClientRedirect = 24 => "icmp_to_client_redirect",
    /// To a VIP, translated, but too big for the route to its backend (IPv4 with DF, or
    /// IPv6): answered from the VIP with ICMP fragmentation needed / packet too big quoting
    /// the packet as the client sent it, with XDP_TX.
    IcmpTooBigTx = 25 => "icmp_too_big_tx",
    /// A backend's reply too big for the route to its client (IPv4 with DF, or IPv6): passed
    /// to the kernel *untranslated*, whose fragmentation needed / packet too big then quotes
    /// the packet as the backend sent it.
    PassReplyTooBig = 26 => "pass_reply_too_big",
    /// From a backend port several VIPs share, to a client without a tracked flow (its state
    /// evicted, or never there): which VIP it answers for is unknown, and untranslated it would
    /// show the backend's address.
    DropUntrackedReply = 27 => "drop_untracked_reply",
    /// To a VIP with source prefix lists, from a source they do not let in: dropped.
    DropAcl = 28 => "drop_acl",
    /// A new flow to a VIP with a per-source new-flow limit, from a source (prefix) over it:
    /// dropped.
    DropSourceRateLimit = 29 => "drop_source_rate_limit",
    /// To a VIP, a later fragment (no ports) whose first fragment was not seen in the last
    /// `lb_common::frag::FRAG_TIMEOUT_NS` (lost, evicted, or still to come): dropped.
    DropFragmentOrphan = 30 => "drop_fragment_orphan",
    /// To a `dsr-l2` VIP: the backend's MAC address is not resolved. Dropped: the kernel
    /// would route the packet by its destination, the VIP, not to the backend (health checks
    /// or a permanent neighbour entry keep the backends' MACs resolved).
    DropDsrNoNeighbour = 31 => "drop_dsr_no_neighbour",
    /// To a `dsr-l2` VIP: no directly connected route to the backend (it is behind a router,
    /// unreachable, or on an interface the program may not redirect to, or the frame is
    /// VLAN-tagged), or IPv4 without DF too big for the backend's link (the program does not
    /// fragment). Dropped, for the same reason.
    DropDsrNoRoute = 32 => "drop_dsr_no_route",
    /// To an `ipip` VIP: no route to the backend's address the program can send on (no route,
    /// an interface the program may not redirect to, a VLAN-tagged frame), or no room in front
    /// for the outer header. Dropped: passed, the kernel would route the packet by its
    /// destination, the VIP.
    DropIpipNoRoute = 33 => "drop_ipip_no_route",
    /// To an `ipip` VIP: IPv4 without DF that, encapsulated, is too big for the route to the
    /// backend. Dropped: the program does not fragment, and the kernel would route the
    /// unencapsulated packet by the VIP (MSS clamping on the backends avoids it; see README).
    DropIpipTooBig = 34 => "drop_ipip_too_big",
}

/// Name of the per-CPU array map holding one `u64` per [`Event`].
pub const EVENTS_MAP: &str = "EVENTS";

/// Things the connection tables saw happen to a packet's flow, counted besides (not instead of)
/// the packet's outcome [`Counter`]: a packet counts at most one event, and its outcome says
/// what was done with it.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A TCP packet without SYN to a VIP found no state (evicted, expired, or tracked by
    /// another balancer): its flow was scheduled again and recorded as established.
    LostState = 0,
    /// A SYN opened a flow: recorded in the embryonic table.
    EmbryonicInsert = 1,
    /// A client's handshake ACK moved its flow from the embryonic table to the connection
    /// table, with the same backend.
    Promoted = 2,
    /// New flow of a consistent-hash VIP while this CPU was over the new-flow rate limit:
    /// scheduled without recording any state.
    StatelessNewFlow = 3,
}

impl Event {
    /// Every event, in index order.
    pub const ALL: &'static [Event] = &[
        Event::LostState,
        Event::EmbryonicInsert,
        Event::Promoted,
        Event::StatelessNewFlow,
    ];

    /// A stable `snake_case` name, used by the CLI and as a metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Event::LostState => "lost_state",
            Event::EmbryonicInsert => "embryonic_insert",
            Event::Promoted => "promoted",
            Event::StatelessNewFlow => "stateless_new_flow",
        }
    }
}

/// Number of entries in the [`EVENTS_MAP`] array.
pub const EVENT_COUNT: u32 = Event::ALL.len() as u32;

/// XDP return codes (`enum xdp_action`).
pub mod xdp_action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

impl Counter {
    /// The XDP action that goes with this outcome: each outcome implies exactly one.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Counter::FwdTx
            | Counter::ReplyTx
            | Counter::IcmpEchoTx
            | Counter::IcmpToBackendTx
            | Counter::IcmpToClientTx
            | Counter::IcmpTooBigTx => xdp_action::TX,
            Counter::FwdRedirect
            | Counter::ReplyRedirect
            | Counter::IcmpToBackendRedirect
            | Counter::IcmpToClientRedirect => xdp_action::REDIRECT,
            Counter::DropTruncated
            | Counter::DropBadHeader
            | Counter::DropIpOptions
            | Counter::DropFragment
            | Counter::DropExtHeaders
            | Counter::DropNoBackend
            | Counter::DropInternal
            | Counter::DropBadL4Header
            | Counter::DropSpoofedReply
            | Counter::DropUntrackedReply
            | Counter::DropAcl
            | Counter::DropSourceRateLimit
            | Counter::DropFragmentOrphan
            | Counter::DropDsrNoNeighbour
            | Counter::DropDsrNoRoute
            | Counter::DropIpipNoRoute
            | Counter::DropIpipTooBig => xdp_action::DROP,
            Counter::PassNonIp
            | Counter::PassNonVip
            | Counter::PassMalformed
            | Counter::PassNoNeighbour
            | Counter::PassFib
            | Counter::PassPartialChecksum
            | Counter::PassTtlExpired
            | Counter::PassReplyTooBig => xdp_action::PASS,
        }
    }
}

impl Counter {
    /// The outcome of a `dsr-l2` packet whose way to the backend ended in `self`: what the
    /// NAT path would pass to the kernel (to resolve a neighbour, to route, to fragment) is
    /// dropped instead, since the kernel would route the untranslated packet by its destination,
    /// the VIP. Every other outcome stays.
    #[inline(always)]
    pub const fn for_dsr_l2(self) -> Counter {
        match self {
            Counter::PassNoNeighbour => Counter::DropDsrNoNeighbour,
            other if other.action() == xdp_action::PASS => Counter::DropDsrNoRoute,
            other => other,
        }
    }
}

impl Counter {
    /// The outcome of an `ipip` packet whose way to the backend ended in `self`: passed to the
    /// kernel only encapsulated, to resolve the next hop's MAC ([`Counter::PassNoNeighbour`]);
    /// anything else the NAT path would pass is dropped, since unencapsulated the kernel would
    /// route it by its destination, the VIP.
    #[inline(always)]
    pub const fn for_ipip(self) -> Counter {
        match self {
            Counter::PassNoNeighbour => Counter::PassNoNeighbour,
            other if other.action() == xdp_action::PASS => Counter::DropIpipNoRoute,
            other => other,
        }
    }
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

    #[test]
    fn event_indices_are_dense_and_names_unique() {
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as u32, i as u32, "{e:?} is out of order");
        }
        let mut names: Vec<_> = Event::ALL.iter().map(|e| e.name()).collect();
        names.extend(Counter::ALL.iter().map(|c| c.name()));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Event::ALL.len() + Counter::ALL.len());
    }

    #[test]
    fn dsr_l2_never_passes_what_it_sends_to_a_backend() {
        for c in Counter::ALL {
            let dsr = c.for_dsr_l2();
            // Sent on to the backend (TX/REDIRECT) or answered stay; nothing is passed.
            match c.action() {
                xdp_action::PASS => assert_eq!(dsr.action(), xdp_action::DROP, "{c:?}"),
                action => assert_eq!(dsr, *c, "{c:?} ({action})"),
            }
        }
        assert_eq!(
            Counter::PassNoNeighbour.for_dsr_l2(),
            Counter::DropDsrNoNeighbour
        );
        assert_eq!(Counter::PassFib.for_dsr_l2(), Counter::DropDsrNoRoute);
    }

    #[test]
    fn ipip_passes_only_to_resolve_a_neighbour() {
        for c in Counter::ALL {
            let ipip = c.for_ipip();
            match c.action() {
                xdp_action::PASS if *c == Counter::PassNoNeighbour => assert_eq!(ipip, *c),
                xdp_action::PASS => assert_eq!(ipip, Counter::DropIpipNoRoute, "{c:?}"),
                _ => assert_eq!(ipip, *c, "{c:?}"),
            }
        }
    }

    #[test]
    fn names_say_what_the_action_does() {
        for c in Counter::ALL {
            let expected = match c.name().split('_').next() {
                Some("drop") => xdp_action::DROP,
                Some("pass") => xdp_action::PASS,
                _ if c.name().ends_with("_tx") => xdp_action::TX,
                _ if c.name().ends_with("_redirect") => xdp_action::REDIRECT,
                _ => panic!("{c:?} has no action in its name"),
            };
            assert_eq!(c.action(), expected, "{c:?}");
        }
    }
}
