//! The root check shared by the tasks that load XDP programs or create network namespaces.
//!
//! Those tasks fail loudly without root instead of skipping, because a silently skipped
//! privileged test looks exactly like a passing one.

use anyhow::{Result, bail};

/// Whether we run with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with an explanation unless we are root; `what` is the xtask command, e.g. `"demo"`.
pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    bail!(
        "cargo xtask {what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load XDP \
         programs and create network namespaces): run it as root, e.g. `sudo -E cargo xtask {what}`"
    )
}
