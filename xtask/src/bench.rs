//! `cargo xtask bench`: builds the benchmark binary (`tests/src/bin/apifw-bench.rs`) in release
//! mode and runs it; it measures the XDP program against an empty one in the same run and
//! writes `docs/BENCHMARKS.md`.

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
    cmd::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "apifw-tests",
        "--bin",
        "apifw-bench",
    ]))
    .context("building the benchmark failed")?;
    let out = workspace_root().join("docs").join("BENCHMARKS.md");
    cmd::run(
        Command::new(target_dir().join("release").join("apifw-bench"))
            .current_dir(workspace_root())
            .arg("--out")
            .arg(&out)
            .args(&args.bench_args),
    )
    .context("the benchmark failed")?;
    println!("bench: results in {}", out.display());
    Ok(())
}
