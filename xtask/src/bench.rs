//! `cargo xtask bench`: builds the benchmark binary (the `bench` crate, `apifw-bench`) and the
//! `apifw` binary in release mode and runs the benchmark; it measures the XDP program against an
//! empty one in the same run, times loading 1M CIDRs into the running daemon next to
//! `ipset restore` and `nft -f`, and writes `docs/BENCHMARKS.md`.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cmd, root, setup, target_dir, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the benchmark binary, e.g. `-- --runs 7 --repeat 2000000`.
    #[arg(last = true)]
    bench_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    root::require_root("bench")?;
    setup::run()?;
    // The control-plane benchmark measures `ipset restore` and `nft -f` next to apifw.
    setup::ensure_bench_packages()?;
    cmd::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "apifw-bench",
        "-p",
        "firewall-userspace",
        // Both packages' binaries (`apifw-bench` and `apifw`): a `--bin apifw` filter would
        // build only the latter, and a fresh tree would have no benchmark to run.
        "--bins",
    ]))
    .context("building the benchmark failed")?;
    let release = target_dir().join("release");
    let out = workspace_root().join("docs").join("BENCHMARKS.md");
    cmd::run(
        Command::new(release.join("apifw-bench"))
            .current_dir(workspace_root())
            // The daemon the control-plane benchmark starts.
            .env("APIFW_BIN", release.join("apifw"))
            .arg("--out")
            .arg(&out)
            .args(&args.bench_args),
    )
    .context("the benchmark failed")?;
    println!("bench: results in {}", out.display());
    Ok(())
}
