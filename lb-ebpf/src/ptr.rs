//! Bounds-checked access to packet memory. With `main`, the only module that touches the
//! `XdpContext`.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::bpf_fib_lookup as fib_lookup, programs::XdpContext,
};

/// Largest offset at which the program reads a header. Offsets come back from the per-CPU
/// scratch map as values the verifier knows nothing about; this bound is what lets it accept
/// `start + offset`.
pub const MAX_OFFSET: usize = 2048;

/// The packet as the span `[start, end)` of kernel memory the program may read and write.
pub struct Packet {
    ctx: *mut c_void,
    start: usize,
    end: usize,
    /// The interface the packet arrived on.
    pub ingress_ifindex: u32,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            ctx: ctx.ctx as *mut c_void,
            start: ctx.data(),
            end: ctx.data_end(),
            ingress_ifindex: ctx.ingress_ifindex() as u32,
        }
    }

    /// Length of the frame in bytes.
    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    /// A `T` at `offset` bytes into the packet, or `None` if the packet is too short.
    ///
    /// The bounds check sits right before the returned reference is made, as the verifier needs.
    #[inline(always)]
    pub fn ref_at<T>(&self, offset: usize) -> Option<&T> {
        if offset > MAX_OFFSET {
            return None;
        }
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `[ptr, ptr + size_of::<T>())` lies inside the packet, which stays valid for
        // the whole program run. Header types are `repr(C)` integers and byte arrays (alignment
        // 1 or 2) that any bit pattern inhabits.
        Some(unsafe { &*(ptr as *const T) })
    }

    /// A mutable `T` at `offset` bytes into the packet, or `None` if the packet is too short.
    ///
    /// # Safety
    /// The caller must not hold another reference overlapping the returned one while it lives.
    #[inline(always)]
    #[allow(
        clippy::mut_from_ref,
        reason = "the packet memory is not owned by `self`"
    )]
    pub unsafe fn ref_mut_at<T>(&self, offset: usize) -> Option<&mut T> {
        if offset > MAX_OFFSET {
            return None;
        }
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: in bounds as checked above; exclusivity is the caller's promise.
        Some(unsafe { &mut *(ptr as *mut T) })
    }

    /// `bpf_fib_lookup` for this packet's context: fills `params` and returns the
    /// `BPF_FIB_LKUP_RET_*` code (negative on bad arguments).
    #[inline(always)]
    pub fn fib_lookup(&self, params: &mut bpf_fib_lookup) -> i64 {
        // SAFETY: `ctx` is the program's own `xdp_md`, and `params` a valid, exclusively
        // borrowed `bpf_fib_lookup` of the size passed.
        unsafe {
            fib_lookup(
                self.ctx,
                params as *mut bpf_fib_lookup,
                size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        }
    }
}
