//! Attaching the loaded firewall to interfaces (native or generic XDP, links pinned so that
//! enforcement outlives the daemon) and adopting the links a previous daemon pinned.

use std::path::{Path, PathBuf};

use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use firewall_common::program_names;
use tracing::{info, warn};

use super::{Firewall, FirewallError, explain};
use crate::policy::XdpModeSetting;

/// An XDP attachment, pinned so that enforcement does not depend on the daemon's file
/// descriptors.
pub struct Attachment {
    /// The interface.
    pub interface: String,
    /// The mode the kernel accepted; `None` for a link adopted from a previous daemon (the
    /// kernel keeps the mode it was created with).
    pub mode: Option<XdpMode>,
    /// Where the link is pinned.
    pub pin: PathBuf,
    link: FdLink,
}

impl Attachment {
    /// The mode as a word.
    pub fn mode_name(&self) -> &'static str {
        self.mode.map_or("adopted", mode_name)
    }

    /// Unpins the link and drops it, which detaches the program from the interface.
    pub fn detach(self) -> std::io::Result<()> {
        std::fs::remove_file(&self.pin)?;
        drop(self.link);
        Ok(())
    }
}

impl Firewall {
    /// Attaches the firewall to `interface`, pins the link at `pin` and returns it.
    ///
    /// `auto` tries native mode and falls back to generic (skb) mode only when the driver cannot
    /// do native XDP; an interface that already carries an XDP program is an error in any mode.
    pub fn attach(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
        pin: &Path,
    ) -> Result<Attachment, FirewallError> {
        self.attach_unexplained(interface, setting, pin)
            .map_err(explain)
    }

    fn attach_unexplained(
        &mut self,
        interface: &str,
        setting: XdpModeSetting,
        pin: &Path,
    ) -> Result<Attachment, FirewallError> {
        let program = self.load_program(program_names::FIREWALL)?;
        let modes: &[XdpMode] = match setting {
            XdpModeSetting::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeSetting::Native => &[XdpMode::Driver],
            XdpModeSetting::Skb => &[XdpMode::Skb],
        };
        let mut last_error = None;
        for (i, mode) in modes.iter().enumerate() {
            match program.attach(interface, *mode) {
                Ok(id) => {
                    let link = program
                        .take_link(id)
                        .map_err(|source| FirewallError::Program {
                            name: program_names::FIREWALL,
                            action: "take link",
                            source: Box::new(source),
                        })?;
                    let link = FdLink::try_from(link).map_err(|_| FirewallError::NotPinnable {
                        interface: interface.to_owned(),
                    })?;
                    let link = link.pin(pin).map_err(|source| FirewallError::Pin {
                        path: pin.to_owned(),
                        source: Box::new(source),
                    })?;
                    info!(interface, mode = mode_name(*mode), "attached");
                    return Ok(Attachment {
                        interface: interface.to_owned(),
                        mode: Some(*mode),
                        pin: pin.to_owned(),
                        link: FdLink::from(link),
                    });
                }
                Err(source) => {
                    let reason = explain_attach_error(interface, &source);
                    let fallback = i + 1 < modes.len() && !is_busy(&source);
                    if fallback {
                        warn!(interface, %reason, "native XDP unavailable, falling back to skb mode");
                    }
                    last_error = Some(FirewallError::Attach {
                        interface: interface.to_owned(),
                        mode: mode_name(*mode),
                        reason,
                        busy: matches!(os_error(&source), Some(libc::EBUSY | libc::EEXIST)),
                        source: Box::new(source),
                    });
                    if !fallback {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or(FirewallError::MissingMap("none")))
    }

    /// Takes over the XDP link a previous daemon pinned at `from` on `interface`: the kernel
    /// swaps this firewall's program into the live link atomically (`bpf_link_update`), so the
    /// interface is never without a filter. The link ends up pinned at `to`.
    pub fn adopt(
        &mut self,
        interface: &str,
        from: &Path,
        to: &Path,
    ) -> Result<Attachment, FirewallError> {
        let adopt_err = |action: &'static str, reason: String| FirewallError::Adopt {
            interface: interface.to_owned(),
            action,
            reason,
        };
        let pinned = PinnedLink::from_pin(from)
            .map_err(|err| adopt_err("open pinned link", err.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|err| adopt_err("open pinned link", err.to_string()))?;
        let program = self.load_program(program_names::FIREWALL)?;
        let id = program
            .attach_to_link(link)
            .map_err(|err| adopt_err("replace the program in the link", err.to_string()))?;
        let link = program
            .take_link(id)
            .map_err(|err| adopt_err("take link", err.to_string()))?;
        let mut link =
            FdLink::try_from(link).map_err(|err| adopt_err("take link", err.to_string()))?;
        if from != to {
            link = FdLink::from(link.pin(to).map_err(|source| FirewallError::Pin {
                path: to.to_owned(),
                source: Box::new(source),
            })?);
            let _ = std::fs::remove_file(from);
        }
        info!(
            interface,
            "adopted the pinned XDP link; program replaced in place"
        );
        Ok(Attachment {
            interface: interface.to_owned(),
            mode: None,
            pin: to.to_owned(),
            link,
        })
    }
}

fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Default => "default",
        XdpMode::Skb => "skb",
        XdpMode::Driver => "native",
        XdpMode::Hardware => "offload",
    }
}

fn os_error(err: &ProgramError) -> Option<i32> {
    match err {
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    }
}

fn is_busy(err: &ProgramError) -> bool {
    matches!(os_error(err), Some(libc::EBUSY | libc::EEXIST))
        || matches!(err, ProgramError::UnknownInterface { .. })
}

fn explain_attach_error(interface: &str, err: &ProgramError) -> String {
    match (err, os_error(err)) {
        (ProgramError::UnknownInterface { .. }, _) => {
            format!("no interface `{interface}` in this network namespace")
        }
        (_, Some(libc::EBUSY | libc::EEXIST)) => format!(
            "`{interface}` already has an XDP program attached (another apifw daemon, or another \
             XDP program: see `ip link show {interface}`)"
        ),
        (_, Some(libc::EPERM | libc::EACCES)) => {
            "permission denied (needs CAP_NET_ADMIN and CAP_BPF)".into()
        }
        (_, Some(libc::EOPNOTSUPP)) => "the driver does not support this XDP mode".into(),
        _ => err.to_string(),
    }
}
