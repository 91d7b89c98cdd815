//! Rebuild the XDP program when the bpf-linker binary changes: it is an undeclared dependency of
//! this crate. (The instruction set, BPF v3, is chosen by firewall-userspace's build script.)

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
