//! Bounds-checked access to packet memory (with `main`, the only module that touches the
//! `XdpContext`), and moves of addresses that stay inline.

use core::{
    ffi::c_void,
    marker::PhantomData,
    mem::{align_of, size_of},
};

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_md},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};

/// Largest offset at which the program reads a header. Offsets come back from the per-CPU
/// scratch map as values the verifier knows nothing about; this bound is what lets it accept
/// `start + offset`.
pub const MAX_OFFSET: usize = 2048;

/// The packet as the span `[start, end)` of kernel memory the program may read and write.
///
/// References into the packet come only from here, and borrow the `Packet`: shared ones
/// ([`Packet::ref_at`]) from `&self`, a mutable one ([`Packet::ref_mut_at`]) from `&mut self`,
/// so the borrow checker sees that a mutable one overlaps no other. That holds because there
/// is one `Packet` per run: it keeps the run's `XdpContext` (the one the `#[xdp]` entry
/// point makes) borrowed mutably while it lives.
pub struct Packet<'ctx> {
    ctx: *mut c_void,
    start: usize,
    end: usize,
    /// The interface the packet arrived on.
    pub ingress_ifindex: u32,
    _ctx: PhantomData<&'ctx mut XdpContext>,
}

impl<'ctx> Packet<'ctx> {
    #[inline(always)]
    pub fn new(ctx: &'ctx mut XdpContext) -> Self {
        Self {
            ctx: ctx.ctx as *mut c_void,
            start: ctx.data(),
            end: ctx.data_end(),
            ingress_ifindex: ctx.ingress_ifindex() as u32,
            _ctx: PhantomData,
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
    /// The bounds check sits right before the returned reference is made, as the verifier needs.
    #[inline(always)]
    pub fn ref_mut_at<T>(&mut self, offset: usize) -> Option<&mut T> {
        if offset > MAX_OFFSET {
            return None;
        }
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `[ptr, ptr + size_of::<T>())` lies inside the packet, which stays valid for
        // the whole program run, and header types are plain integers and byte arrays (see
        // `ref_at`). The reference is exclusive: it borrows `self` mutably, so no other
        // reference made by this `Packet` lives as long as it does, and this `Packet` is the
        // run's only one (see [`Packet`]).
        Some(unsafe { &mut *(ptr as *mut T) })
    }

    /// Moves the packet's start by `delta` bytes (negative: room in front) with
    /// `bpf_xdp_adjust_head`; false if the kernel refused. References made before are gone
    /// (they borrow `self`), and the span is read again.
    #[inline(always)]
    pub fn adjust_head(&mut self, delta: i32) -> bool {
        // SAFETY: `ctx` is the program's own `xdp_md`; no reference into the packet outlives
        // the call, since every one borrows `self`, which is borrowed mutably here.
        let ok = unsafe { bpf_xdp_adjust_head(self.ctx.cast::<xdp_md>(), delta) } == 0;
        self.reload();
        ok
    }

    /// Moves the packet's end by `delta` bytes (negative: shorter) with `bpf_xdp_adjust_tail`,
    /// as [`Packet::adjust_head`].
    #[inline(always)]
    pub fn adjust_tail(&mut self, delta: i32) -> bool {
        // SAFETY: as in `adjust_head`.
        let ok = unsafe { bpf_xdp_adjust_tail(self.ctx.cast::<xdp_md>(), delta) } == 0;
        self.reload();
        ok
    }

    #[inline(always)]
    fn reload(&mut self) {
        let md = self.ctx.cast::<xdp_md>();
        // SAFETY: `ctx` is the program's own `xdp_md`, readable for the whole run.
        let (data, data_end) = unsafe { ((*md).data, (*md).data_end) };
        self.start = data as usize;
        self.end = data_end as usize;
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

// Moves that stay inline. Assigning a 16- or 6-byte array between two places the compiler cannot
// prove apart (packet, map values, scratch) compiles to a call of `memmove`, and zeroing 3 or
// more bytes at once to a call of `memset`: in BPF both are aya-ebpf's byte-at-a-time loops,
// about ten instructions a byte, and together they were the largest single cost of a packet.
// Moves of 1, 2, 4 and 8 bytes compile to one load and one store each.

/// `*dst = *src` for a 16-byte address, as two 8-byte moves.
#[inline(always)]
pub fn copy16(dst: &mut [u8; 16], src: &[u8; 16]) {
    let (d, s) = (dst.as_chunks_mut::<8>().0, src.as_chunks::<8>().0);
    d[0] = s[0];
    d[1] = s[1];
}

/// `*dst` = the IPv4 address `v4` in the first 4 bytes, zeros after. The zeros are volatile
/// byte stores: plain ones the compiler merges back into a `memset` call.
#[inline(always)]
pub fn set_v4(dst: &mut [u8; 16], v4: &[u8; 4]) {
    dst.as_chunks_mut::<4>().0[0] = *v4;
    let tail = dst.as_mut_ptr();
    for i in 4..16 {
        // SAFETY: byte `i < 16` of `dst`, which is exclusively borrowed.
        unsafe { tail.add(i).write_volatile(0) };
    }
}

/// Zeroes `value` in place with volatile 32-bit stores (see [`set_v4`]) and returns it.
#[inline(always)]
pub fn zeroed_in_place<T>(value: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4)) };
    let words = value.as_mut_ptr().cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // SAFETY: word `i` lies inside `value`, whose alignment suits a `u32` (checked above).
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte is written above; the caller's `T` is one that all-zero bytes
    // inhabit (the function is used for plain C structs of integers and byte arrays).
    unsafe { value.assume_init_mut() }
}

/// `*dst = *src` for a MAC address, byte by byte (the compiler merges the stores).
#[inline(always)]
pub fn copy6(dst: &mut [u8; 6], src: &[u8; 6]) {
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
    dst[3] = src[3];
    dst[4] = src[4];
    dst[5] = src[5];
}
