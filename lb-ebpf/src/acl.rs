//! Per-VIP source checks: the allow and deny prefix lists (`lb_common::acl`), checked on every
//! packet of a VIP that has them, and the new-flow rate limit per source (`lb_common::limit`),
//! which only new flows pay. A VIP without either flag costs nothing here.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::lpm_trie::Key};
use lb_common::{
    Counter, FlowKey,
    acl::{AclKey, AclMatch, acl_allows, acl_prefix_len},
    limit::{SourceKey, first_bucket, prefix_mask, take_token},
    maps::{VIP_FLAG_ACL, VIP_FLAG_SOURCE_LIMIT, VipMeta},
};

use crate::{
    conntrack,
    maps::{ACL, SOURCE_BUCKETS, SOURCE_LIMITS, Scratch},
    ptr::copy16,
};

/// The checks of a packet to the VIP `meta` whose flow is `s.key`: its source must be let in
/// by the VIP's prefix lists, and a new flow must find a token in its source's bucket.
#[inline(always)]
pub fn check(s: &mut Scratch, meta: &VipMeta, now: u64) -> Result<(), Counter> {
    if meta.flags & VIP_FLAG_ACL != 0 && !allowed(&s.key, meta.vip_id, &mut s.acl) {
        return Err(Counter::DropAcl);
    }
    if meta.flags & VIP_FLAG_SOURCE_LIMIT != 0
        && !conntrack::is_tracked(&s.key)
        && !take(&s.key, meta.vip_id, &mut s.bucket, now)
    {
        return Err(Counter::DropSourceRateLimit);
    }
    Ok(())
}

/// True if the prefix lists of VIP `vip_id` let the source of flow `key` in. The trie's key
/// is built in `acl`, working memory outside the stack.
#[inline(always)]
pub fn allowed(key: &FlowKey, vip_id: u32, acl: &mut AclKey) -> bool {
    acl.prefix_len = acl_prefix_len(128);
    acl.vip_id = vip_id;
    acl.family = key.family;
    acl._pad = [0; 3];
    copy16(&mut acl.addr, &key.src_addr);
    // SAFETY: `Key<AclMatch>` is `repr(C, packed)`: a `u32` prefix length then `AclMatch`,
    // which is exactly `AclKey`'s layout after its own prefix length (`lb_common::acl` asserts
    // the sizes); packed means alignment 1, so the pointer is aligned for it. Read only.
    let lpm = unsafe { &*(acl as *const AclKey).cast::<Key<AclMatch>>() };
    acl_allows(ACL.get(lpm).copied())
}

/// Takes a token for a new flow of `key` to VIP `vip_id` at `now` from its source prefix's
/// bucket (made full, less this flow's token, for a source seen first): false if there was
/// none. The bucket's key is built in `bucket`, outside the stack.
#[inline(always)]
fn take(key: &FlowKey, vip_id: u32, bucket: &mut SourceKey, now: u64) -> bool {
    let Some(limit) = SOURCE_LIMITS.get(vip_id) else {
        return true;
    };
    if limit.rate == 0 {
        return true;
    }
    bucket.vip_id = vip_id;
    bucket.family = key.family;
    bucket._pad = [0; 3];
    for (i, (out, src)) in bucket.addr.iter_mut().zip(key.src_addr.iter()).enumerate() {
        *out = src & prefix_mask(limit.prefix_len, i);
    }
    match SOURCE_BUCKETS.get_ptr_mut(&*bucket) {
        // SAFETY: a pointer the lookup returned, valid for this run. CPUs update a bucket
        // without atomics: two at once may both take its last token (see `lb_common::limit`).
        Some(tokens) => take_token(unsafe { &mut *tokens }, now, limit.rate, limit.burst),
        None => {
            let fresh = first_bucket(now, limit.burst);
            // Another CPU may have made the bucket meanwhile: its flow and this one both pass.
            let _ = SOURCE_BUCKETS.insert(&*bucket, &fresh, u64::from(BPF_NOEXIST));
            limit.burst > 0
        }
    }
}
