//! `apifw run`: load, fill, pin, attach, then wait for SIGINT/SIGTERM and tear down.

use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    firewall::{Attachment, Firewall, FirewallError},
    lock::{InstanceLock, LockError},
    paths::PinLayout,
    policy::Policy,
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No interface to protect.
    #[error("no interfaces configured: set `interfaces` in the policy or pass --interface")]
    NoInterfaces,
    /// The instance lock is taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Loading, attaching or pinning failed.
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// Stale pins could not be removed.
    #[error("cannot remove stale pins at {}", path.display())]
    Stale {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Runs the firewall until SIGINT or SIGTERM.
pub async fn run(policy: Policy) -> Result<(), DaemonError> {
    if policy.interfaces.is_empty() {
        return Err(DaemonError::NoInterfaces);
    }
    let _lock = InstanceLock::acquire(&policy.daemon.run_dir)?;
    let layout = PinLayout::new(&policy.daemon.pin_dir);
    let versioned = layout.versioned();
    if versioned.exists() {
        // Nothing holds the lock, so these pins belong to a daemon that died without cleaning
        // up. Removing them detaches its program before ours attaches.
        warn!(path = %versioned.display(), "removing pins left by a previous daemon");
        std::fs::remove_dir_all(&versioned).map_err(|source| DaemonError::Stale {
            path: versioned.clone(),
            source,
        })?;
    }

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let mut firewall = Firewall::load(&policy)?;
    let mut attachments = Vec::new();
    let started = firewall.pin_maps(&layout).and_then(|()| {
        for interface in &policy.interfaces {
            attachments.push(firewall.attach(
                interface,
                policy.xdp_mode,
                &layout.link(interface),
            )?);
        }
        Ok(())
    });
    if let Err(err) = started {
        teardown(attachments, &layout);
        return Err(err.into());
    }
    info!(
        interfaces = ?policy.interfaces,
        pin_dir = %layout.root().display(),
        "apifw running"
    );

    // Expired bans are already ignored by XDP; sweeping them frees their map slots.
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                info!("SIGTERM received, stopping");
                break;
            }
            _ = sigint.recv() => {
                info!("SIGINT received, stopping");
                break;
            }
            _ = sweep.tick() => match firewall.sweep_bans() {
                Ok(expired) => {
                    for (prefix, ban) in expired {
                        info!(%prefix, rule = ban.rule, "ban expired");
                    }
                }
                Err(err) => error!(%err, "cannot sweep expired bans"),
            },
        }
    }
    teardown(attachments, &layout);
    info!("detached and unpinned");
    Ok(())
}

/// Detaches every attachment and removes the pins.
fn teardown(attachments: Vec<Attachment>, layout: &PinLayout) {
    for attachment in attachments {
        let interface = attachment.interface.clone();
        if let Err(err) = attachment.detach() {
            error!(interface, %err, "cannot unpin XDP link");
        }
    }
    let versioned = layout.versioned();
    if let Err(err) = std::fs::remove_dir_all(&versioned)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        error!(path = %versioned.display(), %err, "cannot remove pins");
    }
    // The root is ours too when nothing else lives there.
    let _ = std::fs::remove_dir(layout.root());
}
