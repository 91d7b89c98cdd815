//! Build settings of the XDP program.
//!
//! - Rebuild when the bpf-linker binary changes: it is an undeclared dependency of this crate.
//! - bpf-linker does the code generation (the crate reaches it as LLVM bitcode), so the BPF
//!   instruction set is chosen here: 32-bit ALU instructions (kernel >= 5.1) spare the zero
//!   extensions around every 32-bit operation. (Misaligned loads would shorten header reads too,
//!   but LLVM then also emits misaligned stack stores for map keys, which the verifier rejects.)

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("bpf") {
        // rustc already passes `--cpu generic` and aya-build owns RUSTFLAGS, so the feature is
        // named on its own.
        println!("cargo:rustc-link-arg=--cpu-features=+alu32");
    }
}
