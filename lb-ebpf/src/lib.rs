//! Empty on purpose: the XDP program is the `lb` binary (`src/main.rs`). This library target
//! exists so that the workspace can be checked on the host.
#![no_std]
