//! Developer tasks for apifw, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! The tasks live in Rust rather than shell so that they share error handling, clean up after
//! themselves through `Drop`, and can be unit-tested where they contain logic worth testing.
//! Each command is one module; adding a command is one `Task` variant plus one module.

mod bench;
mod cmd;
mod demo;
mod lab;
#[cfg(test)]
mod layers;
mod package;
mod root;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for apifw")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing apifw needs: nightly + rust-src, bpf-linker, Debian
    /// tools, bpffs. Idempotent; `test` and `demo` run it first.
    Setup,
    /// Check formatting and clippy, run every test in the workspace, build and check the
    /// Debian package, then run the demo (needs root): the whole gate, as CI runs it.
    Test(test::Args),
    /// Build the daemon and run it in a throwaway network-namespace lab (needs root).
    Demo,
    /// Measure the XDP program against an empty one and write docs/BENCHMARKS.md (needs root).
    Bench(bench::Args),
    /// Build the Debian package target/package/apifw_<version>_<arch>.deb: the release binary,
    /// the systemd unit, the example policy as /etc/apifw/apifw.toml, docs, man pages and shell
    /// completions.
    Package,
}

/// Prints errors as a readable cause chain rather than `Debug` (which would add a backtrace of
/// xtask itself whenever RUST_BACKTRACE is set, burying the failing command).
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Package => package::run(),
    }
}

/// The workspace root, so tasks behave the same from whichever directory cargo was started in.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` like cargo itself does.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
