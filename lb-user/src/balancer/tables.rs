//! What the data path reads for a VIP: its meta, its backends' entries and its scheduling
//! tables (the Maglev ring, the weighted round-robin cycle, the list of backends taking flows).

use std::collections::BTreeMap;

use lb_common::{
    acl::{AclKey, acl_entries},
    limit::SourceLimit,
    maglev::{self, MaglevBackend},
    maps::{Backend, VIP_FLAG_ACL, VIP_FLAG_SOURCE_LIMIT, VipMeta},
    sched::smooth_wrr_sequence,
};

use super::{BackendInfo, Error, Forwarding, MAX_WRR_CYCLE, Scheduler, Vip, VipOptions, VipState};
use crate::model::{addr16, family};

/// The data path's entry for backend `b` of the VIP with id `vip_id` forwarded by
/// `forwarding`; `flags` are `BACKEND_FLAG_*` bits.
pub(super) fn backend_value(
    b: &BackendInfo,
    vip_id: u32,
    flags: u8,
    forwarding: Forwarding,
) -> Backend {
    Backend {
        addr: addr16(b.spec.addr.ip()),
        port: b.spec.addr.port().to_be_bytes(),
        family: family(b.spec.addr.ip()),
        state: b.spec.state.number(),
        id: b.id,
        weight: b.spec.weight,
        flags,
        forwarding: forwarding.number(),
        vip_id: vip_id as u16,
    }
}

pub(super) fn meta(state: &VipState) -> VipMeta {
    let (table_off, table_len) = state.table.map_or((0, 0), |r| (r.off, r.len));
    let (list_off, list_len) = state.list.map_or((0, 0), |r| (r.off, r.len));
    VipMeta {
        vip_id: state.id,
        scheduler: state.options.scheduler.number(),
        forwarding: state.options.forwarding.number(),
        flags: vip_flags(&state.options),
        _pad: 0,
        table_off,
        table_len,
        list_off,
        list_len,
    }
}

/// The `VIP_FLAG_*` bits of a VIP with `options`: which source checks the data path makes.
pub(super) fn vip_flags(options: &VipOptions) -> u8 {
    let mut flags = 0;
    if options.has_acl() {
        flags |= VIP_FLAG_ACL;
    }
    if options.source_rate_limit > 0 {
        flags |= VIP_FLAG_SOURCE_LIMIT;
    }
    flags
}

/// The entries of the source prefix lists of `vip`, with id `vip_id` and `options`.
pub(super) fn acl_of(vip: &Vip, vip_id: u32, options: &VipOptions) -> BTreeMap<AclKey, u8> {
    let bits =
        |list: &[crate::model::SourcePrefix]| list.iter().map(|p| p.bits()).collect::<Vec<_>>();
    acl_entries(
        vip_id,
        family(vip.addr),
        &bits(&options.allow),
        &bits(&options.deny),
    )
}

/// The per-source limit of `vip` with `options` (all zero: none).
pub(super) fn source_limit(vip: &Vip, options: &VipOptions) -> SourceLimit {
    if options.source_rate_limit == 0 {
        return SourceLimit::default();
    }
    SourceLimit {
        rate: options.source_rate_limit,
        burst: options.source_rate_limit,
        prefix_len: options.source_prefix_len_for(vip.addr),
        _pad: [0; 3],
    }
}

/// The digest of a `maglev` or `source-hash` VIP's table (`maglev::table_digest`, 16 hex
/// digits): the same on every gateway holding the same backends, whatever their ids.
/// `None` for the other schedulers.
pub(super) fn table_digest(options: &VipOptions, backends: &[BackendInfo]) -> Option<String> {
    if !matches!(options.scheduler, Scheduler::Maglev | Scheduler::SourceHash) {
        return None;
    }
    let (table, _) = build_tables(options, backends).ok()?;
    let members: Vec<MaglevBackend> = backends.iter().map(maglev_member).collect();
    Some(format!("{:016x}", maglev::table_digest(&table, &members)))
}

fn maglev_member(b: &BackendInfo) -> MaglevBackend {
    MaglevBackend::new(
        b.id,
        b.spec.weight,
        addr16(b.spec.addr.ip()),
        b.spec.addr.port().to_be_bytes(),
    )
}

/// The scheduling table and the list of backends taking new flows, as backend ids.
pub(super) fn build_tables(
    options: &VipOptions,
    backends: &[BackendInfo],
) -> Result<(Vec<u32>, Vec<u32>), Error> {
    let active: Vec<&BackendInfo> = backends
        .iter()
        .filter(|b| b.spec.takes_new_flows())
        .collect();
    let list: Vec<u32> = active.iter().map(|b| b.id).collect();
    if active.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let cycle = |weights: Vec<u32>| -> Vec<u32> {
        smooth_wrr_sequence(&weights, MAX_WRR_CYCLE)
            .into_iter()
            .map(|i| active[i as usize].id)
            .collect()
    };
    let table = match options.scheduler {
        Scheduler::Maglev | Scheduler::SourceHash => {
            let members: Vec<MaglevBackend> = active.iter().map(|b| maglev_member(b)).collect();
            maglev::build_table(&members, options.ring_size)
                .map_err(|_| Error::BadRingSize(options.ring_size))?
        }
        Scheduler::RoundRobin => cycle(vec![1; active.len()]),
        Scheduler::WeightedRoundRobin | Scheduler::WeightedRandom => {
            cycle(active.iter().map(|b| b.spec.weight).collect())
        }
        Scheduler::Random | Scheduler::LeastConn => Vec::new(),
    };
    Ok((table, list))
}
