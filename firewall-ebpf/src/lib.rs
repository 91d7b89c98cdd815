//! Empty library target: lets firewall-userspace declare a build-dependency on this crate so that
//! cargo rebuilds the embedded object when the program changes. The program is `src/main.rs`.
#![no_std]
