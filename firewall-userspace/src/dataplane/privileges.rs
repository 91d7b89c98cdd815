//! The capabilities `apifw run` needs, and naming the missing ones when the kernel refuses.
//!
//! The daemon needs exactly three capabilities, and no root uid: CAP_BPF (create maps, load
//! programs, pin them), CAP_NET_ADMIN (XDP is a networking program type: loading it and
//! attaching it to an interface) and CAP_PERFMON (the verifier only lets programs of processes
//! with it do pointer arithmetic such as bounds checks against the end of the packet). The
//! kernel answers a missing one with a bare `EPERM` or `EACCES` from deep inside aya's errors,
//! which says nothing about what to grant; [`missing_for`] reads this process's effective set
//! and names what is missing, which the loader turns into an error naming them. Kernels before 5.11 also charge BPF memory to
//! RLIMIT_MEMLOCK: there the limit must be raised (`LimitMEMLOCK=infinity` in the systemd unit)
//! or CAP_SYS_RESOURCE granted, so that aya can raise it.

use std::error::Error;

/// `CAP_SYS_ADMIN`: the kernel still accepts it in place of CAP_BPF and CAP_PERFMON.
const CAP_SYS_ADMIN: u32 = 21;

/// A capability `apifw run` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// BPF maps, programs and pins.
    Bpf,
    /// Loading and attaching XDP programs.
    NetAdmin,
    /// Pointer arithmetic in the verifier (packet bounds checks).
    Perfmon,
}

impl Capability {
    /// Every capability the daemon needs, in the order the documentation lists them.
    pub const REQUIRED: [Self; 3] = [Self::Bpf, Self::NetAdmin, Self::Perfmon];

    /// The capability's number (`linux/capability.h`).
    pub fn number(self) -> u32 {
        match self {
            Self::NetAdmin => 12,
            Self::Perfmon => 38,
            Self::Bpf => 39,
        }
    }

    /// The name as the kernel's headers, capabilities(7) and systemd spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bpf => "CAP_BPF",
            Self::NetAdmin => "CAP_NET_ADMIN",
            Self::Perfmon => "CAP_PERFMON",
        }
    }

    /// What the daemon needs it for, for the error message.
    fn purpose(self) -> &'static str {
        match self {
            Self::Bpf => "to create BPF maps and load programs",
            Self::NetAdmin => "to load and attach XDP programs",
            Self::Perfmon => "for the verifier to accept the program's packet bounds checks",
        }
    }

    /// Whether the effective set `effective` grants it, directly or (for CAP_BPF and
    /// CAP_PERFMON) through CAP_SYS_ADMIN, which the kernel still honours for them.
    fn granted_by(self, effective: u64) -> bool {
        let has = |number: u32| effective & (1u64 << number) != 0;
        has(self.number()) || (self != Self::NetAdmin && has(CAP_SYS_ADMIN))
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// This process's effective capability set (`CapEff` in `/proc/self/status`), or `None` when
/// it cannot be read.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective(&status)
}

/// The `CapEff:` line of a `/proc/<pid>/status` text.
pub fn parse_effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The required capabilities that `effective` lacks.
pub fn missing_from(effective: u64) -> Vec<Capability> {
    Capability::REQUIRED
        .into_iter()
        .filter(|capability| !capability.granted_by(effective))
        .collect()
}

/// Whether `err` or one of its sources is the kernel refusing permission: `EPERM`, or the
/// verifier's `EACCES`.
pub fn is_permission_denied(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// The message of the loader's missing-capabilities error.
pub fn describe(missing: &[Capability]) -> String {
    let lacks: Vec<String> = missing
        .iter()
        .map(|capability| format!("{capability} ({})", capability.purpose()))
        .collect();
    let required: Vec<&str> = Capability::REQUIRED.iter().map(|c| c.name()).collect();
    format!(
        "the kernel refused: this process lacks {}; `apifw run` needs {} (see \"Privileges\" in \
         deploy/README.md)",
        lacks.join(" and "),
        required.join(", ")
    )
}

/// The required capabilities this process lacks, when `err` is the kernel refusing permission
/// (`EPERM`/`EACCES` anywhere in its chain) and some are missing; `None` otherwise (a refusal
/// with every capability present has another cause, which the error itself must tell).
pub fn missing_for(err: &(dyn Error + 'static)) -> Option<Vec<Capability>> {
    if !is_permission_denied(err) {
        return None;
    }
    let missing = missing_from(effective()?);
    (!missing.is_empty()).then_some(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(capabilities: &[u32]) -> u64 {
        capabilities.iter().map(|number| 1u64 << number).sum()
    }

    #[test]
    fn reads_the_effective_set_from_proc_status() {
        let status = "Name:\tapifw\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000000c000001000\n";
        assert_eq!(parse_effective(status), Some(set(&[12, 38, 39])));
        assert_eq!(parse_effective("Name:\tapifw\n"), None);
        assert!(
            effective().is_some(),
            "this process has a /proc/self/status"
        );
    }

    #[test]
    fn names_exactly_the_missing_capabilities() {
        assert!(missing_from(set(&[12, 38, 39])).is_empty());
        assert_eq!(missing_from(set(&[12, 38])), [Capability::Bpf]);
        assert_eq!(missing_from(set(&[38, 39])), [Capability::NetAdmin]);
        assert_eq!(missing_from(set(&[12, 39])), [Capability::Perfmon]);
        assert_eq!(missing_from(0), Capability::REQUIRED);
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, never for CAP_NET_ADMIN.
        assert_eq!(missing_from(set(&[CAP_SYS_ADMIN])), [Capability::NetAdmin]);
        assert!(missing_from(set(&[CAP_SYS_ADMIN, 12])).is_empty());
    }

    #[test]
    fn finds_permission_errors_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let denied = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(is_permission_denied(&denied));
        let verifier = Outer(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(is_permission_denied(&verifier));
        let other = Outer(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!is_permission_denied(&other));
    }

    #[test]
    fn the_message_names_what_is_missing_and_what_is_needed() {
        assert_eq!(
            describe(&[Capability::Bpf]),
            "the kernel refused: this process lacks CAP_BPF (to create BPF maps and load \
             programs); `apifw run` needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON (see \
             \"Privileges\" in deploy/README.md)"
        );
    }
}
