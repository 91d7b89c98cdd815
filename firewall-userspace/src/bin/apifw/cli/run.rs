//! `apifw run --config FILE`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use tracing::warn;

use crate::cli::Locations;
use firewall_userspace::{
    daemon::{self, RunOptions},
    engine::Overrides,
    policy::{EbpfLog, Loaded, LogFormat, XdpModeSetting},
};

/// Arguments of `apifw run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy file.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Protect these interfaces instead of the policy's `interfaces` (repeatable).
    #[arg(long = "interface", short, value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Override the policy's `xdp_mode`.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Pin and lock locations.
    #[command(flatten)]
    pub locations: Locations,
    /// Replace an XDP program that another tool attached to a configured interface (without
    /// it, such an interface is refused).
    #[arg(long)]
    pub replace: bool,
    /// Kernel-side debug logging (aya-log), overriding the policy's `ebpf_log`: one log line
    /// per packet, for debugging only.
    #[arg(long, value_enum)]
    pub ebpf_log: Option<EbpfLogArg>,
}

/// `--ebpf-log` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EbpfLogArg {
    /// No logs.
    Off,
    /// A line per decision.
    Debug,
}

/// `--xdp-mode` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native, falling back to skb.
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Skb,
}

/// Runs the daemon.
pub fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::from_file(&args.config)?;
    let host_warnings = loaded.host_warnings();
    let policy = loaded.policy;
    init_logging(policy.daemon.log_format);
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    // Warnings, not errors: the unit starts before the services it protects.
    for warning in &host_warnings {
        warn!("{warning}");
    }
    let overrides = Overrides {
        interfaces: args.interfaces,
        xdp_mode: args.xdp_mode.map(|mode| match mode {
            XdpModeArg::Auto => XdpModeSetting::Auto,
            XdpModeArg::Native => XdpModeSetting::Native,
            XdpModeArg::Skb => XdpModeSetting::Skb,
        }),
        pin_dir: args.locations.pin_dir,
        run_dir: args.locations.run_dir,
        ebpf_log: args.ebpf_log.map(|level| match level {
            EbpfLogArg::Off => EbpfLog::Off,
            EbpfLogArg::Debug => EbpfLog::Debug,
        }),
    };
    let options = RunOptions {
        policy_path: args.config,
        overrides,
        replace: args.replace,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(policy, options))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    // The XDP program's aya-log records (target `firewall_ebpf`) arrive at debug level and
    // only when `ebpf_log = "debug"` makes the program write them, so they pass the filter.
    let filter = tracing_subscriber::EnvFilter::try_from_env("APIFW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,firewall_ebpf=debug"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
