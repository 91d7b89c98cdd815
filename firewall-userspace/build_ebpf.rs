//! Builds an eBPF crate of this workspace for `bpfel-unknown-none` with the nightly toolchain and
//! bpf-linker, and leaves the object at `$OUT_DIR/<crate>` for `include_bytes_aligned!`. Shared
//! by two build scripts (`#[path]`): firewall-userspace's (the firewall, `firewall-ebpf`) and
//! apifw-tests' (the test programs, `test-ebpf`). Run `cargo xtask setup` once to install what
//! this needs.
//!
//! This follows aya-build's approach (a nested cargo with its own target directory, because
//! cargo cannot express "the binary of another crate, for another target" as a dependency), but
//! sets the code generation flags itself: aya-build 0.2 owns RUSTFLAGS and so cannot select the
//! BPF instruction set. We need `-C target-cpu=v3` (kernel >= 5.1): 32-bit jumps and ALU, and
//! the atomic instructions (fetch-and-add, compare-and-exchange) that shared state needs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const BPF_TARGET: &str = "bpfel-unknown-none";

/// Flags for the BPF build, separated as CARGO_ENCODED_RUSTFLAGS wants them.
fn rustflags(host_arch: &str) -> String {
    [
        // aya-ebpf selects per-architecture definitions (pt_regs) by this cfg.
        format!("--cfg=bpf_target_arch=\"{host_arch}\""),
        "-Ctarget-cpu=v3".to_owned(),
        // BTF lets the kernel and bpftool show the program's types and source lines.
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
}

/// Builds the eBPF package `package` (in `crate_dir`, a sibling of the calling crate's
/// directory; its binary has the package's name) for `bpfel-unknown-none` and copies its object
/// to `$OUT_DIR/<package>`.
pub fn build(crate_dir: &str, package: &str) -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?
        .join(crate_dir);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let host_arch = env::var("CARGO_CFG_TARGET_ARCH")?;

    // The caller's build-dependency on the eBPF crate's library makes cargo rerun us when the
    // crate or its dependencies change; this covers its binary and build script.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    // A target directory of our own: the outer cargo holds a lock on the workspace's.
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            package,
            "--bins",
        ])
        .args(["--release", "--target", BPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags(&host_arch))
        // Let rustup pick the nightly toolchain rather than the stable one running us.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    let output = cargo
        .output()
        .with_context(|| format!("cannot run {cargo:?}; is rustup installed?"))?;
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!(
            "building the eBPF package {package} failed ({}); has `cargo xtask setup` been run?",
            output.status
        );
    }

    let object = target_dir.join(BPF_TARGET).join("release").join(package);
    copy(&object, &out_dir.join(package))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}
