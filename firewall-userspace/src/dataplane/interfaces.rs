//! Interface lifecycle: protected interfaces that disappear, are renamed or come back.
//!
//! The policy names interfaces, so protection follows the name. When the device behind a name
//! goes away (removed, or renamed so that the name no longer resolves to it), the kernel has
//! already detached a deleted device's link, and a renamed device is no longer what the policy
//! protects; the daemon drops that attachment and says which of the two happened. When a device
//! with the name appears again (re-created, or renamed back), the daemon attaches to it. The rest
//! of the interfaces are never touched. The daemon polls once a second, on its tick.

use std::collections::BTreeMap;

/// What became of one protected interface since the last look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The device the firewall was attached to no longer exists.
    Removed { interface: String, ifindex: u32 },
    /// The device still exists under another name.
    Renamed {
        interface: String,
        ifindex: u32,
        now: String,
    },
    /// A device with the name exists and the firewall is not attached to it.
    Appeared { interface: String, ifindex: u32 },
}

/// The ifindex the firewall is attached to for each protected interface (`None`: not attached,
/// waiting for the interface).
#[derive(Clone, Debug, Default)]
pub struct InterfaceWatch {
    attached: BTreeMap<String, Option<u32>>,
}

impl InterfaceWatch {
    /// Watches `interfaces`, each attached to the given ifindex (or not attached).
    pub fn new(interfaces: impl IntoIterator<Item = (String, Option<u32>)>) -> Self {
        Self {
            attached: interfaces.into_iter().collect(),
        }
    }

    /// What changed, given how names resolve now (`index_of`) and what an ifindex is called now
    /// (`name_of`). Nothing is updated until [`Self::record`].
    pub fn changes(
        &self,
        index_of: impl Fn(&str) -> Option<u32>,
        name_of: impl Fn(u32) -> Option<String>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for (interface, attached) in &self.attached {
            let current = index_of(interface);
            if *attached == current {
                continue;
            }
            if let Some(ifindex) = *attached {
                changes.push(match name_of(ifindex) {
                    Some(now) => Change::Renamed {
                        interface: interface.clone(),
                        ifindex,
                        now,
                    },
                    None => Change::Removed {
                        interface: interface.clone(),
                        ifindex,
                    },
                });
            }
            if let Some(ifindex) = current {
                changes.push(Change::Appeared {
                    interface: interface.clone(),
                    ifindex,
                });
            }
        }
        changes
    }

    /// Records that `interface` is now attached to `ifindex` (or to nothing).
    pub fn record(&mut self, interface: &str, ifindex: Option<u32>) {
        self.attached.insert(interface.to_owned(), ifindex);
    }

    /// Whether `interface` is attached.
    pub fn is_attached(&self, interface: &str) -> bool {
        self.attached.get(interface).is_some_and(Option::is_some)
    }
}

/// The system's answers: `if_nametoindex` and `if_indextoname`.
pub fn index_of(interface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(interface).ok()
}

/// The current name of `ifindex`, if the device exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write, including the NUL.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Removes an XDP program attached through netlink (not a bpf_link) from `interface`, for
/// `--replace`.
pub fn remove_foreign_program(interface: &str) -> bool {
    // iproute2 speaks the netlink XDP attribute with every mode flag; the mode of the foreign
    // program is unknown, so each is tried. A bpf_link owned by another process cannot be
    // removed this way, and the retried attach then reports it.
    let mut removed = false;
    for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
        removed |= std::process::Command::new("ip")
            .args(["link", "set", "dev", interface, mode, "off"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn watch() -> InterfaceWatch {
        InterfaceWatch::new([("eth0".to_owned(), Some(2)), ("eth1".to_owned(), Some(3))])
    }

    #[test]
    fn nothing_changes_while_names_resolve_to_the_attached_devices() {
        let names = HashMap::from([("eth0", 2), ("eth1", 3)]);
        let changes = watch().changes(|n| names.get(n).copied(), |_| None);
        assert_eq!(changes, vec![]);
    }

    #[test]
    fn removed_renamed_and_recreated_devices_are_told_apart() {
        // eth0 deleted; eth1 renamed to wan1 (ifindex 3 lives on) and a new eth1 is ifindex 9.
        let names = HashMap::from([("eth1", 9), ("wan1", 3)]);
        let changes = watch().changes(
            |n| names.get(n).copied(),
            |i| {
                names
                    .iter()
                    .find(|(_, v)| **v == i)
                    .map(|(k, _)| (*k).to_owned())
            },
        );
        assert_eq!(
            changes,
            vec![
                Change::Removed {
                    interface: "eth0".into(),
                    ifindex: 2
                },
                Change::Renamed {
                    interface: "eth1".into(),
                    ifindex: 3,
                    now: "wan1".into()
                },
                Change::Appeared {
                    interface: "eth1".into(),
                    ifindex: 9
                },
            ]
        );
    }

    #[test]
    fn a_detached_interface_that_comes_back_appears_once_recorded() {
        let mut watch = watch();
        watch.record("eth0", None);
        assert!(!watch.is_attached("eth0"));
        let names = HashMap::from([("eth0", 12), ("eth1", 3)]);
        let changes = watch.changes(|n| names.get(n).copied(), |_| None);
        assert_eq!(
            changes,
            vec![Change::Appeared {
                interface: "eth0".into(),
                ifindex: 12
            }]
        );
        watch.record("eth0", Some(12));
        assert!(
            watch
                .changes(|n| names.get(n).copied(), |_| None)
                .is_empty()
        );
    }
}
