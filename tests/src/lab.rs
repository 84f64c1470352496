//! The packet fixtures' lab: the real program in the gateway namespace of a real topology, with
//! permanent neighbour entries, so that `bpf_fib_lookup` answers as it would on a gateway.

use lb_common::{FlowKey, conntrack::FlowState, maps::CONNTRACK_MAP};
use lb_user::{
    balancer::{BackendSpec, Balancer, Forwarding, Scheduler, VipOptions},
    loader::{LoadOptions, Loaded, if_index},
    maps::BpfMaps,
};

use crate::{
    fixture::{Case, run_cases},
    netns::{GW_CLIENT_IF, Topology, gw_backend_if},
    packet::{L4, Link, frame_with},
    sa, vip,
};

/// The gateway of a 2-backend topology with the program loaded, the fixtures' VIPs configured
/// and the MAC addresses the expected frames need.
pub struct PacketLab {
    pub topo: Topology,
    pub loaded: Loaded,
    pub balancer: Balancer<BpfMaps>,
    /// ifindex of the gateway's client-side and backend-0-side interfaces.
    pub gc: u32,
    pub gb0: u32,
    /// MACs: gateway client side, gateway backend-0 side, client, backend 0.
    pub gc_mac: [u8; 6],
    pub gb0_mac: [u8; 6],
    pub client_mac: [u8; 6],
    pub b0_mac: [u8; 6],
}

/// A host on the client net that is not there, reached through the interface packets arrive on.
pub const SAME_PORT_HOST: &str = "198.18.0.3";
pub const SAME_PORT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
/// An address on backend 0's net with a route but no neighbour entry.
pub const UNRESOLVED_HOST: &str = "198.18.1.3";

impl PacketLab {
    /// The gateway, its neighbours and the fixtures' VIPs: 198.19.0.1:80/tcp, :53/udp and their
    /// IPv6 twins to backend 0; wildcard-port VIPs on 198.19.0.2 (and 198.19.0.2:8443 to
    /// backend 1); 198.19.0.3 to a host behind the client side, 198.19.0.4 to a host with no
    /// neighbour entry, 198.19.0.5 without backends; 198.19.1.1.. one per scheduler, 3:1 over
    /// backends 0 and 1.
    pub fn set_up() -> Self {
        Self::set_up_with(LoadOptions::default())
    }

    /// [`PacketLab::set_up`] with the map sizes of `options`.
    pub fn set_up_with(options: LoadOptions) -> Self {
        let topo = Topology::new(2).expect("topology");
        let gw = &topo.gateway;
        let client_mac = topo.client.mac("eth0").expect("client mac");
        let b0_mac = topo.backends[0].mac("eth0").expect("b0 mac");
        let b1_mac = topo.backends[1].mac("eth0").expect("b1 mac");
        let gb1 = gw_backend_if(1);
        for (addr, mac, dev) in [
            (topo.client.v4.to_string(), client_mac, GW_CLIENT_IF),
            (topo.client.v6.to_string(), client_mac, GW_CLIENT_IF),
            (topo.backends[0].v4.to_string(), b0_mac, "gb0"),
            (topo.backends[0].v6.to_string(), b0_mac, "gb0"),
            (topo.backends[1].v4.to_string(), b1_mac, gb1.as_str()),
            (SAME_PORT_HOST.to_owned(), SAME_PORT_MAC, GW_CLIENT_IF),
        ] {
            gw.permanent_neighbour(&addr, mac, dev)
                .expect("neighbour entry");
        }
        let mut loaded = crate::program::load_with(options);
        let (gc, gb0) = gw.run(|| {
            for iface in [GW_CLIENT_IF, "gb0", gb1.as_str()] {
                loaded.add_tx_port(iface).expect("tx port");
            }
            (if_index(GW_CLIENT_IF).unwrap(), if_index("gb0").unwrap())
        });
        let mut balancer = loaded.balancer(Default::default()).expect("balancer");
        let one = |b: &mut Balancer<BpfMaps>, v: &str, backend: &str| {
            b.add_vip(vip(v), VipOptions::default()).expect("add vip");
            b.set_backends(&vip(v), vec![BackendSpec::new(sa(backend), 1)])
                .expect("backends");
        };
        one(&mut balancer, "198.19.0.1:80/tcp", "198.18.1.2:8080");
        one(&mut balancer, "198.19.0.1:53/udp", "198.18.1.2:8080");
        one(
            &mut balancer,
            "[fd00:ffff::1]:80/tcp",
            "[fd00:0:0:1::2]:8080",
        );
        one(
            &mut balancer,
            "[fd00:ffff::1]:53/udp",
            "[fd00:0:0:1::2]:8080",
        );
        one(&mut balancer, "198.19.0.2:0/tcp", "198.18.1.2:0");
        one(&mut balancer, "198.19.0.2:0/udp", "198.18.1.2:0");
        one(&mut balancer, "198.19.0.2:8443/tcp", "198.18.2.2:9443");
        one(
            &mut balancer,
            "198.19.0.3:80/tcp",
            &format!("{SAME_PORT_HOST}:8080"),
        );
        one(
            &mut balancer,
            "198.19.0.4:80/tcp",
            &format!("{UNRESOLVED_HOST}:8080"),
        );
        balancer
            .add_vip(vip("198.19.0.5:80/tcp"), VipOptions::default())
            .expect("empty vip");
        for (i, scheduler) in Scheduler::ALL.into_iter().enumerate() {
            let v = vip(&format!("198.19.1.{}:80/tcp", i + 1));
            balancer
                .add_vip(
                    v,
                    VipOptions {
                        scheduler,
                        ..VipOptions::default()
                    },
                )
                .expect("scheduler vip");
            balancer
                .set_backends(
                    &v,
                    vec![
                        BackendSpec::new(sa("198.18.1.2:8080"), 3),
                        BackendSpec::new(sa("198.18.2.2:8080"), 1),
                    ],
                )
                .expect("backends");
        }
        Self {
            gc_mac: gw.mac(GW_CLIENT_IF).expect("gc mac"),
            gb0_mac: gw.mac("gb0").expect("gb0 mac"),
            topo,
            loaded,
            balancer,
            gc,
            gb0,
            client_mac,
            b0_mac,
        }
    }

    /// Runs `cases` as arriving on `ingress`.
    pub fn run(&mut self, ingress: u32, cases: &[Case]) -> usize {
        let loaded = &mut self.loaded;
        self.topo.gateway.run(|| {
            run_cases(cases, |input| {
                crate::program::test_run(loaded, input, Some(ingress))
            })
        })
    }

    /// True if the connection table has an entry for the flow `src` → `dst` over `proto`.
    pub fn tracked(&self, src: &str, dst: &str, proto: u8) -> bool {
        let key = crate::flow_key(sa(src), sa(dst), proto);
        self.flow_entry(CONNTRACK_MAP, &key).is_some()
    }

    /// The entry of flow `key` in the flow table `map` (`CONNTRACK` or `EMBRYONIC`).
    pub fn flow_entry(&self, map: &str, key: &FlowKey) -> Option<FlowState> {
        let map: aya::maps::HashMap<&aya::maps::MapData, FlowKey, _> =
            aya::maps::HashMap::try_from(self.loaded.ebpf.map(map).expect("map")).expect("typed");
        map.get(key, 0).ok()
    }

    /// How many entries the map `map`, keyed by flow with values of type `V`, holds.
    pub fn flow_entries<V: aya::Pod>(&self, map: &str) -> usize {
        let map: aya::maps::HashMap<&aya::maps::MapData, FlowKey, V> =
            aya::maps::HashMap::try_from(self.loaded.ebpf.map(map).expect("map")).expect("typed");
        map.keys().count()
    }

    /// The frame the gateway sends to backend 0.
    pub fn to_b0(&self, src: &str, dst: &str, l4: L4, payload: &[u8]) -> Vec<u8> {
        let link = Link {
            src_mac: self.gb0_mac,
            dst_mac: self.b0_mac,
            ttl: 63,
        };
        frame_with(link, sa(src), sa(dst), l4, payload)
    }

    /// The frame the gateway sends to the client.
    pub fn to_client(&self, src: &str, dst: &str, l4: L4, payload: &[u8]) -> Vec<u8> {
        let link = Link {
            src_mac: self.gc_mac,
            dst_mac: self.client_mac,
            ttl: 63,
        };
        frame_with(link, sa(src), sa(dst), l4, payload)
    }

    /// Adds VIP `v` (`ADDR:PORT/PROTO`) forwarded by `forwarding`, with `backends` of weight 1.
    pub fn add_forwarded_vip(&mut self, v: &str, forwarding: Forwarding, backends: &[&str]) {
        let v = vip(v);
        let options = VipOptions {
            forwarding,
            ..VipOptions::default()
        };
        self.balancer.add_vip(v, options).expect("vip");
        self.balancer
            .set_backends(
                &v,
                backends
                    .iter()
                    .map(|b| BackendSpec::new(sa(b), 1))
                    .collect(),
            )
            .expect("backends");
    }

    /// A frame from backend 0 to the gateway.
    pub fn sent_by_b0(&self, src: &str, dst: &str, l4: L4, payload: &[u8]) -> Vec<u8> {
        let link = Link {
            src_mac: self.b0_mac,
            dst_mac: self.gb0_mac,
            ttl: 64,
        };
        frame_with(link, sa(src), sa(dst), l4, payload)
    }
}
