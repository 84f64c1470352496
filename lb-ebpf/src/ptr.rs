//! Bounds-checked access to packet memory. With `main`, the only module that touches the
//! `XdpContext`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// The packet as the span `[start, end)` of kernel memory the program may read and write.
pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// A `T` at `offset` bytes into the packet, or `None` if the packet is too short.
    ///
    /// The bounds check sits right before the returned reference is made, as the verifier needs.
    #[inline(always)]
    pub fn ref_at<T>(&self, offset: usize) -> Option<&T> {
        let ptr = self.start + offset;
        if ptr + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `[ptr, ptr + size_of::<T>())` lies inside the packet, which stays valid and
        // unaliased by other Rust references for the whole program run. Header types are
        // `repr(C)` byte arrays (alignment 1 or 2) that any bit pattern inhabits.
        Some(unsafe { &*(ptr as *const T) })
    }
}
