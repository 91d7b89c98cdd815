//! Every filesystem location apifw uses, in one place.
//!
//! Pins live under a versioned directory so that a future, incompatible map layout never reads
//! maps pinned by this one: `<pin_dir>/v<LAYOUT_VERSION>/maps/<MAP>` and
//! `<pin_dir>/v<LAYOUT_VERSION>/links/<interface>`.

use std::path::{Path, PathBuf};

/// Default root of apifw's pins on bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/apifw";
/// Default directory for the daemon's lock file (and, later, its control socket).
pub const DEFAULT_RUN_DIR: &str = "/run/apifw";
/// Where the audit log is kept unless the policy says otherwise.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/apifw/audit.log";
/// Version of the pinned map layout. Bump it whenever a pinned map's key, value or size
/// semantics change. 3: the candidate map gave way to the unpinned admission array, and the
/// plain hashes stopped being preallocated. 4: the rule's buckets moved to a tail-called
/// program, reached through the pinned `APIFW_JUMP` and `APIFW_HANDOFF`.
pub const LAYOUT_VERSION: u32 = 4;

/// Where one daemon instance pins its maps and links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// The layout under `pin_dir`.
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: pin_dir.into(),
        }
    }

    /// The configured root (`pin_dir`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versioned directory holding everything this layout version pins.
    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    /// Directory of pinned maps.
    pub fn maps_dir(&self) -> PathBuf {
        self.versioned().join("maps")
    }

    /// Directory of pinned XDP links.
    pub fn links_dir(&self) -> PathBuf {
        self.versioned().join("links")
    }

    /// Pin path of the map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin path of the XDP link on `interface`.
    pub fn link(&self, interface: &str) -> PathBuf {
        self.links_dir().join(interface)
    }
}

/// The daemon's lock file in `run_dir`: held (flock) for as long as a daemon runs there.
pub fn lock_file(run_dir: &Path) -> PathBuf {
    run_dir.join("apifw.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned() {
        let layout = PinLayout::new("/sys/fs/bpf/apifw");
        assert_eq!(
            layout.map("APIFW_STATS"),
            PathBuf::from("/sys/fs/bpf/apifw/v4/maps/APIFW_STATS")
        );
        assert_eq!(
            layout.link("eth0"),
            PathBuf::from("/sys/fs/bpf/apifw/v4/links/eth0")
        );
    }
}
