//! What can go wrong loading, filling, attaching or pinning the firewall, and the one place that
//! names missing capabilities when the kernel refuses permission.

use std::path::PathBuf;

use aya::programs::ProgramError;

use crate::{
    compile::tables::CapacityError,
    dataplane::{batch, privileges, stats},
};

/// Why the firewall could not be loaded, filled, attached or pinned.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The object or its maps could not be loaded (often: a missing capability, which
    /// [`privileges::missing_for`] then names).
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    /// The kernel refused an operation and this process lacks capabilities the daemon needs:
    /// the error names them, rather than leaving the operator with a bare `EPERM`.
    #[error("{}", privileges::describe(missing))]
    MissingCapabilities {
        /// The required capabilities this process lacks.
        missing: Vec<privileges::Capability>,
        /// What the kernel refused.
        #[source]
        source: Box<FirewallError>,
    },
    /// A program is missing from the object or could not be loaded or attached.
    #[error("program `{name}`: {action} failed")]
    Program {
        /// Program name.
        name: &'static str,
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The object lacks a map the userspace expects (object and binary out of sync).
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A program loaded over another firewall's maps got a map of its own (test hooks only).
    #[error("map `{0}` is not the one of the firewall it was to share")]
    NotShared(&'static str),
    /// A map operation failed.
    #[error("map `{name}`: {action} failed")]
    Map {
        /// Map name.
        name: &'static str,
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The lists do not fit the maps.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// Attaching to an interface failed.
    #[error("cannot attach to interface `{interface}` in {mode} mode: {reason}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Mode tried.
        mode: &'static str,
        /// A readable cause.
        reason: String,
        /// The interface already carries an XDP program.
        busy: bool,
        /// The error.
        #[source]
        source: Box<ProgramError>,
    },
    /// The kernel attached through netlink (no bpf_link), so the attachment cannot be pinned.
    #[error(
        "the XDP attachment on `{interface}` is not a bpf_link and cannot be pinned (kernel older than 5.9?)"
    )]
    NotPinnable {
        /// Interface name.
        interface: String,
    },
    /// Pinning failed.
    #[error("cannot pin {}", path.display())]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// A pin directory could not be created.
    #[error("cannot create {}", path.display())]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A pinned link of a previous daemon could not be taken over.
    #[error("cannot adopt the pinned XDP link on `{interface}`: {action} failed: {reason}")]
    Adopt {
        /// Interface name.
        interface: String,
        /// What was attempted.
        action: &'static str,
        /// The cause.
        reason: String,
    },
    /// A batch map write failed.
    #[error("map `{name}`: writing failed")]
    Batch {
        /// Map name.
        name: &'static str,
        /// The error.
        #[source]
        source: batch::BatchError,
    },
    /// The RCU barrier failed.
    #[error(transparent)]
    Barrier(#[from] crate::dataplane::barrier::BarrierError),
    /// Reading the counters failed.
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
}

/// `err` unchanged, unless it is the kernel refusing permission while this process lacks some
/// of the required capabilities: then an error naming them, with `err` as its source.
pub(super) fn explain(err: FirewallError) -> FirewallError {
    if matches!(err, FirewallError::MissingCapabilities { .. }) {
        return err;
    }
    match privileges::missing_for(&err) {
        Some(missing) => FirewallError::MissingCapabilities {
            missing,
            source: Box::new(err),
        },
        None => err,
    }
}
