//! The XDP mode an interface actually runs a program in, as the kernel reports it
//! (`IFLA_XDP_ATTACHED` of `RTM_GETLINK`): `xdp_mode = auto` may have fallen back to generic.

use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};

use super::neighbours::Netlink;

/// The name `status` gives a kernel's `IFLA_XDP_ATTACHED` value.
pub fn mode_name(attached: XdpAttached) -> &'static str {
    match attached {
        XdpAttached::None => "none",
        XdpAttached::Driver => "native",
        XdpAttached::SocketBuffer => "generic",
        XdpAttached::Hardware => "offload",
        XdpAttached::Multiple => "multiple",
        _ => "unknown",
    }
}

/// The XDP mode of the program attached to `iface` (of the calling thread's namespace):
/// `native`, `generic`, `offload`, `multiple`, or `none`.
pub fn xdp_mode(iface: &str) -> anyhow::Result<&'static str> {
    let mut link = LinkMessage::default();
    link.header.index = crate::loader::if_index(iface)?;
    let answers = Netlink::open()?.request(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST)?;
    for answer in answers {
        let RouteNetlinkMessage::NewLink(link) = answer else {
            continue;
        };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else {
                continue;
            };
            for x in xdp {
                if let LinkXdp::Attached(attached) = x {
                    return Ok(mode_name(attached));
                }
            }
        }
    }
    Ok("none")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_have_the_names_operators_know() {
        assert_eq!(mode_name(XdpAttached::Driver), "native");
        assert_eq!(mode_name(XdpAttached::SocketBuffer), "generic");
        assert_eq!(mode_name(XdpAttached::None), "none");
    }
}
