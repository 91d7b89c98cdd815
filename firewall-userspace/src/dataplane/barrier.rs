//! An RCU grace period on demand: after [`RcuBarrier::wait`] returns, every XDP program run
//! that started before the call has finished.
//!
//! A policy swap flips the active generation and must then wait until no packet still uses the
//! old one before rewriting it. Userspace cannot call `synchronize_rcu()`, but the kernel calls
//! it after every update of a map-in-map (`maybe_wait_bpf_programs()` in
//! `kernel/bpf/syscall.c`), precisely so that userspace knows no running program still sees the
//! old value. XDP programs run inside RCU read-side sections, so one such update is the barrier.
//! The barrier's maps are private to the daemon; no program uses them.

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};

use aya::maps::{ArrayOfMaps, Map, MapData, MapError};

/// The barrier could not be created or run.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// A map could not be created.
    #[error("cannot create the RCU barrier's {what}")]
    Create {
        /// Which map.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An aya map operation failed.
    #[error("RCU barrier: {action} failed")]
    Map {
        /// What was attempted.
        action: &'static str,
        /// The error.
        #[source]
        source: Box<MapError>,
    },
}

/// `union bpf_attr` for `BPF_MAP_CREATE`, as far as this module uses it; the tail is zero, which
/// the kernel requires of fields it knows and we do not set.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
    tail: [u64; 8],
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// Two tiny maps: an array of one map, and the map it holds.
pub struct RcuBarrier {
    outer: ArrayOfMaps<MapData, MapData>,
    inner: MapData,
}

/// `BPF_MAP_CREATE` of a one-entry map with 4-byte keys and values.
fn create(map_type: u32, inner_map_fd: u32, what: &'static str) -> Result<OwnedFd, BarrierError> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..MapCreateAttr::default()
    };
    attr.map_name[..12].copy_from_slice(b"apifw_rcubar");
    // SAFETY: `attr` is a valid, fully initialised BPF_MAP_CREATE attribute that lives for
    // the duration of the call; the size passed is its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw mut attr,
            size_of::<MapCreateAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(BarrierError::Create {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a successful BPF_MAP_CREATE returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl RcuBarrier {
    /// Creates the barrier's maps.
    pub fn new() -> Result<Self, BarrierError> {
        let map_err = |action| {
            move |source| BarrierError::Map {
                action,
                source: Box::new(source),
            }
        };
        let inner = create(BPF_MAP_TYPE_ARRAY, 0, "inner array")?;
        let inner = MapData::from_fd(inner).map_err(map_err("open inner array"))?;
        let outer = create(
            BPF_MAP_TYPE_ARRAY_OF_MAPS,
            inner.fd().as_fd().as_raw_fd() as u32,
            "array of maps",
        )?;
        let outer = MapData::from_fd(outer).map_err(map_err("open array of maps"))?;
        let outer = ArrayOfMaps::try_from(Map::ArrayOfMaps(outer))
            .map_err(map_err("open array of maps"))?;
        Ok(Self { outer, inner })
    }

    /// Returns once every XDP program run that started before this call has finished.
    pub fn wait(&mut self) -> Result<(), BarrierError> {
        self.outer
            .set(0, &self.inner, 0)
            .map_err(|source| BarrierError::Map {
                action: "update (synchronize_rcu)",
                source: Box::new(source),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_waits() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create BPF maps");
            return;
        }
        let mut barrier = RcuBarrier::new().expect("barrier maps");
        for _ in 0..3 {
            barrier.wait().expect("grace period");
        }
    }
}
