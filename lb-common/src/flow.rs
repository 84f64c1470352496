//! The 5-tuple that identifies a flow, as the XDP program reads it off the wire.

/// `FlowKey::family` for IPv4 (addresses in the first 4 bytes, the rest zero).
pub const FAMILY_IPV4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// A flow's 5-tuple. Addresses and ports are in network byte order, exactly as in the packet.
/// IPv4 addresses take the first 4 bytes of the 16; the other 12 are zero.
///
/// Used as a map key, so it has no implicit padding: every byte is a named field.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key with source and destination swapped: what the reply direction of this flow
    /// carries.
    pub const fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `FlowKey` is `repr(C)`, `Copy`, made of byte arrays and bytes only (no padding, as the
// size assertion above checks), so every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
