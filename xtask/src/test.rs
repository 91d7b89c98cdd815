//! `cargo xtask test`: the whole quality gate in one command, as CI runs it.
//!
//! Formatting and clippy run before the tests because they are cheap and a failure there
//! should not hide behind a long test run.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cmd, root, setup, workspace_root};

/// The eBPF crates: the firewall and the test programs. Their programs cannot be built for the
/// host together with the rest of the workspace: cargo unifies features, so
/// `firewall-common/user` (wanted by userspace and tests) links `std` into them, whose panic
/// handler then clashes with the programs' own. They are linted for their real target instead;
/// the firewall's tests are the verdict tests in the `tests` crate, which run the compiled
/// program in the kernel, and the test programs are exercised by the tests and benchmarks that
/// load them.
const EBPF_CRATES: [&str; 2] = ["firewall-ebpf", "apifw-test-ebpf"];

/// `--exclude` for each of [`EBPF_CRATES`].
fn exclude_ebpf_crates() -> Vec<&'static str> {
    EBPF_CRATES
        .iter()
        .flat_map(|name| ["--exclude", name])
        .collect()
}

/// Check-only build of [`EBPF_CRATES`] for the BPF target; no linking, so no bpf-linker needed.
const EBPF_TARGET: [&str; 4] = ["--target", "bpfel-unknown-none", "-Z", "build-std=core"];

const DENY_WARNINGS: [&str; 3] = ["--", "-D", "warnings"];

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the test harness, given after `--`, e.g. `cargo xtask test -- --test-threads=4`.
    #[arg(last = true)]
    harness_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    // The integration tests load XDP programs and build namespace labs: without root they
    // would fail, so say why up front.
    root::require_root("test")?;
    setup::run()?;
    sweep_dead_test_namespaces();

    cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting check failed: run `cargo fmt --all`")?;
    cmd::run(
        cargo()
            .args(["clippy", "--workspace"])
            .args(exclude_ebpf_crates())
            .arg("--all-targets")
            .args(DENY_WARNINGS),
    )
    .context("clippy found problems")?;
    for name in EBPF_CRATES {
        cmd::run(
            cargo()
                .args(["+nightly", "clippy", "-p", name])
                .args(EBPF_TARGET)
                .args(DENY_WARNINGS),
        )
        .with_context(|| format!("clippy found problems in the eBPF crate {name}"))?;
    }

    // The namespace tests run the real `apifw` binary; `cargo test` does not build the binaries
    // of other packages, so build it first and tell the tests where it is.
    cmd::run(cargo().args(["build", "-p", "firewall-userspace", "--bins"]))
        .context("building the apifw binary failed")?;
    let apifw = crate::target_dir().join("debug").join("apifw");

    let mut test = cargo();
    test.env("APIFW_BIN", &apifw);
    test.args(["test", "--workspace"])
        .args(exclude_ebpf_crates())
        .arg("--all-targets");
    if !args.harness_args.is_empty() {
        test.arg("--").args(&args.harness_args);
    }
    cmd::run(&mut test).context("tests failed")?;
    // The .deb an operator installs: built from the release binary and checked from outside.
    let deb = crate::package::build().context("building the Debian package failed")?;
    crate::package::verify(&deb).context("the Debian package is wrong")?;
    // The README's first command, run last and the way a user runs it (the same entry point, in
    // its own process, not a copy of its steps): a demo that fails fails the gate.
    cmd::run(cargo().args(["xtask", "demo"]))
        .context("the demo failed: `cargo xtask demo`, the README's first command, must work")?;
    println!("test: fmt, clippy, all tests, the package and the demo passed");
    Ok(())
}

/// Deletes the network namespaces a killed test or benchmark process left behind. They are named
/// `afw-<tag>-<pid>` (`apifw_tests::netns::Netns`) and removed by their guards on drop, even
/// when a test fails; only a process killed outright (SIGKILL, a machine stopped mid-run)
/// leaves them, and its pid is then gone. Namespaces of a live process are left alone: a test
/// run may be going on beside this one.
fn sweep_dead_test_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("afw-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match Command::new("ip").args(["netns", "del", &name]).status() {
            Ok(status) if status.success() => {
                println!("test: removed {name}, left by process {pid}, which is gone");
            }
            _ => eprintln!("test: could not remove {name}, left by process {pid}"),
        }
    }
}

/// `cargo` in the workspace root; taken from PATH so that rustup picks the toolchain.
fn cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(workspace_root());
    cargo
}
