//! VIP lookup: is the destination a VIP address, and which VIP (exact port, then port 0); and
//! the address filter's quick "certainly not" for VIP destinations and backend sources.

use lb_common::{
    filter::{FilterKind, filter_slot},
    flow::{PROTO_TCP, PROTO_UDP},
    maps::{AddrKey, VipAddrKey, VipKey, VipMeta},
};

use crate::{
    maps::{ADDR_FILTER, LOCAL_ADDRS, VIP_ADDRS, VIPS},
    parse::L3,
};

/// False if `addr` is certainly not in the `kind` half of the address filter (one array load;
/// true may still be a miss).
#[inline(always)]
fn in_filter(kind: FilterKind, addr: &[u8; 16]) -> bool {
    let (word, mask) = filter_slot(kind, addr);
    ADDR_FILTER.get(word).is_some_and(|w| w & mask != 0)
}

/// False if the destination is certainly no VIP address.
#[inline(always)]
pub fn may_be_vip_addr(l3: &L3) -> bool {
    in_filter(FilterKind::Vip, &l3.dst)
}

/// False if the source is certainly no backend (so the packet is no reply to translate).
#[inline(always)]
pub fn may_be_from_backend(l3: &L3) -> bool {
    may_be_backend_addr(&l3.src)
}

/// False if `addr` is certainly no backend's address.
#[inline(always)]
pub fn may_be_backend_addr(addr: &[u8; 16]) -> bool {
    in_filter(FilterKind::Backend, addr)
}

/// True if some TCP or UDP VIP has the address `addr` (of `family`).
#[inline(always)]
pub fn has_vips(addr: &[u8; 16], family: u8) -> bool {
    let mut key = VipAddrKey {
        addr: *addr,
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    };
    if VIP_ADDRS.get_ptr(&key).is_some() {
        return true;
    }
    key.proto = PROTO_UDP;
    VIP_ADDRS.get_ptr(&key).is_some()
}

/// True if the packet is to one of the gateway's own addresses (the filter first, then the
/// exact set).
#[inline(always)]
pub fn is_to_gateway(l3: &L3) -> bool {
    if !in_filter(FilterKind::Local, &l3.dst) {
        return false;
    }
    let key = AddrKey {
        addr: l3.dst,
        family: l3.family,
        _pad: [0; 3],
    };
    LOCAL_ADDRS.get_ptr(&key).is_some()
}

/// True if some VIP has the packet's destination address and protocol; for an IPv6 packet
/// whose extension headers were not followed to the transport header, either protocol, so that
/// it is dropped as VIP traffic rather than passed as some other.
#[inline(always)]
pub fn is_vip_addr(l3: &L3) -> bool {
    if l3.transport_unknown() {
        has_vip_addr(l3, PROTO_TCP) || has_vip_addr(l3, PROTO_UDP)
    } else {
        has_vip_addr(l3, l3.proto)
    }
}

#[inline(always)]
fn has_vip_addr(l3: &L3, proto: u8) -> bool {
    let key = VipAddrKey {
        addr: l3.dst,
        proto,
        family: l3.family,
        _pad: [0; 2],
    };
    VIP_ADDRS.get_ptr(&key).is_some()
}

/// The VIP for destination port `port`: the exact one, else the address's port-0 VIP.
#[inline(always)]
pub fn lookup(l3: &L3, port: [u8; 2]) -> Option<VipMeta> {
    let mut key = VipKey {
        addr: l3.dst,
        port,
        proto: l3.proto,
        family: l3.family,
    };
    if let Some(meta) = VIPS.get_ptr(&key) {
        // SAFETY: a pointer the map lookup returned; VIPS is not preallocated, so the element
        // stays valid for this RCU read section even if the agent replaces it meanwhile.
        return Some(unsafe { *meta });
    }
    key.port = [0; 2];
    // SAFETY: as above.
    VIPS.get_ptr(&key).map(|meta| unsafe { *meta })
}
