//! VIP lookup: is the destination a VIP address, and which VIP (exact port, then port 0).

use lb_common::maps::{VipAddrKey, VipKey, VipMeta};

use crate::{
    maps::{VIP_ADDRS, VIPS},
    parse::L3,
};

/// True if some VIP has the packet's destination address and protocol.
#[inline(always)]
pub fn is_vip_addr(l3: &L3) -> bool {
    let key = VipAddrKey {
        addr: l3.dst,
        proto: l3.proto,
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
