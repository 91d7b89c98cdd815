//! The interfaces the firewall is attached to: attaching (or adopting the link a previous daemon
//! pinned) at start, the counter slot of each interface, following a device that goes away and
//! comes back, and detaching at the end. The daemon decides when; the engine owns the links.

use std::{collections::HashMap, path::Path};

use tracing::{error, warn};

use crate::{
    dataplane::{
        firewall::{Attachment, FirewallError},
        interfaces::remove_foreign_program,
        pins::other_layouts,
    },
    errors::chain,
    paths::PinLayout,
    policy::XdpModeSetting,
};

use super::Engine;

/// Where each attached interface's packets are counted: counter slot → interface name, and
/// ifindex → interface name (for drop events).
#[derive(Debug, Default)]
pub struct CounterSlots {
    /// Interface name per counter slot.
    pub by_slot: HashMap<u32, String>,
    /// Interface name per ifindex.
    pub by_ifindex: HashMap<u32, String>,
}

impl Engine {
    /// Attaches to (or adopts the pinned link of) every interface of the policy. When one fails,
    /// the error is returned and what was attached so far stays listed, for [`Engine::detach_all`].
    ///
    /// With `replace`, an XDP program another tool attached through netlink is removed first.
    pub fn attach_all(&mut self, layout: &PinLayout, replace: bool) -> Result<(), FirewallError> {
        let old_layouts = other_layouts(layout);
        let interfaces = self.policy.interfaces.clone();
        let mode = self.policy.xdp_mode;
        for interface in &interfaces {
            let pin = layout.link(interface);
            let old_pin = old_layouts
                .iter()
                .map(|dir| dir.join("links").join(interface))
                .find(|path| path.exists());
            let adopted = if pin.exists() {
                Some(self.dataplane.adopt(interface, &pin, &pin))
            } else {
                old_pin.map(|old| self.dataplane.adopt(interface, &old, &pin))
            };
            match adopted {
                Some(Ok(attachment)) => {
                    self.attachments.push(attachment);
                    continue;
                }
                Some(Err(err)) => {
                    // The pinned link is unusable (its interface went away and came back, say):
                    // drop it and attach anew.
                    warn!(interface, err = %chain(&err), "cannot adopt the pinned link; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
                None => {}
            }
            let mut result = self.dataplane.attach(interface, mode, &pin);
            if let Err(FirewallError::Attach { busy: true, .. }) = &result {
                if replace {
                    warn!(
                        interface,
                        "--replace: removing the XDP program already attached"
                    );
                    remove_foreign_program(interface);
                    result = self.dataplane.attach(interface, mode, &pin);
                } else if let Err(FirewallError::Attach { reason, .. }) = &mut result {
                    reason.push_str("; pass --replace to replace it");
                }
            }
            self.attachments.push(result?);
        }
        Ok(())
    }

    /// Gives each attached interface its counter slot (1, 2, ...; the last slot is shared by
    /// interfaces beyond it), so that counters and metrics carry the interface, and publishes
    /// the names for the metrics.
    pub fn assign_counter_slots(&mut self) -> CounterSlots {
        let mut slots = CounterSlots::default();
        for (index, attachment) in self.attachments.iter().enumerate() {
            let slot = (index as u32 + 1).min(firewall_common::stats::INTERFACE_SLOTS - 1);
            match nix::net::if_::if_nametoindex(attachment.interface.as_str()) {
                Ok(ifindex) => {
                    if let Err(err) = self.dataplane.set_interface_slot(ifindex, slot) {
                        warn!(interface = attachment.interface, err = %chain(&err), "cannot set the counter slot");
                    }
                    slots.by_slot.insert(slot, attachment.interface.clone());
                    slots
                        .by_ifindex
                        .insert(ifindex, attachment.interface.clone());
                }
                Err(err) => warn!(interface = attachment.interface, %err, "no ifindex"),
            }
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.interfaces = slots.by_slot.clone();
        }
        slots
    }

    /// Attaches to `interface` (device `ifindex`) again after its device came back, pinning the
    /// link at `pin` and restoring its counter `slot`.
    pub fn reattach(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: XdpModeSetting,
        pin: &Path,
        slot: Option<u32>,
    ) -> Result<&Attachment, FirewallError> {
        // A link pinned for the old device is stale now.
        let _ = std::fs::remove_file(pin);
        let attachment = self.dataplane.attach(interface, mode, pin)?;
        if let Some(slot) = slot
            && let Err(err) = self.dataplane.set_interface_slot(ifindex, slot)
        {
            warn!(interface, err = %chain(&err), "cannot set the counter slot");
        }
        self.attachments.push(attachment);
        Ok(self.attachments.last().expect("just pushed"))
    }

    /// Unpins and drops the attachment of `interface` (whose device vanished or was renamed), if
    /// there is one.
    pub fn detach(&mut self, interface: &str) {
        if let Some(at) = self
            .attachments
            .iter()
            .position(|attachment| attachment.interface == interface)
        {
            let attachment = self.attachments.swap_remove(at);
            if let Err(err) = attachment.detach()
                && err.kind() != std::io::ErrorKind::NotFound
            {
                error!(interface, %err, "cannot unpin the link of a vanished interface");
            }
        }
    }

    /// Detaches from every interface and removes the pins (the pin root too, when nothing else
    /// lives there): what stopping the daemon does.
    pub fn detach_all(&mut self, layout: &PinLayout) {
        for attachment in std::mem::take(&mut self.attachments) {
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
        let _ = std::fs::remove_dir(layout.root());
    }

    /// The interfaces attached now.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}
