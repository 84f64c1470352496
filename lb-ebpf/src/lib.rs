//! Empty on purpose: the XDP program is the `lb` binary (`src/main.rs`). This library target
//! exists so that the workspace can be checked on the host.
#![no_std]

/// The items every XDP program binary of this crate needs besides its `#[xdp]` function: the
/// panic handler (unreachable in a verified program: any reachable panic fails verification),
/// a host `main` so that the workspace builds on the host, and the license section.
#[macro_export]
macro_rules! program_boilerplate {
    ($name:literal) => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(not(target_arch = "bpf"))]
        fn main() {
            panic!(concat!(
                $name,
                " is an XDP program; it is built for bpfel-unknown-none by lb-user's build.rs"
            ));
        }

        #[cfg(target_arch = "bpf")]
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
