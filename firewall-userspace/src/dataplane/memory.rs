//! Kernel memory of the firewall's maps: what the `[limits]` cost before a packet arrives, what
//! each entry adds, and what the maps hold now.
//!
//! The figures are the kernel's own accounting (the `memlock` line of a map's fdinfo, which
//! `bpftool map show` prints as `memlock`): [`costs`] computes it from the map definitions of the
//! embedded object and the policy's capacities with the kernel's formulas (kernel/bpf/hashtab.c,
//! arraymap.c and ringbuf.c, `*_map_mem_usage`), so `apifw check` can tell an operator what a
//! limit costs without loading anything, and [`in_use`] reads it back from the loaded maps. A
//! kernel test holds the two to each other, map by map.
//!
//! Why the numbers look as they do:
//! - A hash map costs 16 bytes of bucket per entry of capacity, rounded up to a power of two,
//!   whatever it holds. Preallocated, it also holds every element from the start (48 bytes of
//!   header plus key and value, each rounded to 8); with `BPF_F_NO_PREALLOC` an element (and 8
//!   bytes of free-list node) is allocated when it is inserted. The prefix tables and the ban map
//!   are not preallocated, so their memory follows the entries held.
//! - LRU hashes cannot be anything but preallocated (the kernel refuses the flag), so
//!   `max_tracked_sources` and `max_tracked_subnets` cost their full size at idle: they are the
//!   limits to size for the host.
//! - Per-CPU arrays hold each value once per possible CPU.

use aya_obj::Object;
use firewall_common::map_names;

use super::firewall::{self, EBPF_OBJECT};
use crate::policy::Policy;

/// `BPF_MAP_TYPE_*` values the object uses.
const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PROG_ARRAY: u32 = 3;
const PERCPU_ARRAY: u32 = 6;
const LRU_HASH: u32 = 9;
const RINGBUF: u32 = 27;
/// `BPF_F_NO_PREALLOC`.
const NO_PREALLOC: u32 = 1;

/// `struct bpf_htab` and the map header, as 6.x kernels account them.
const HTAB_HEADER: u64 = 832;
/// `HASHTAB_MAP_LOCK_COUNT` ints per possible CPU.
const HTAB_LOCKS_PER_CPU: u64 = 8 * 4;
/// `struct bucket`: a list head and a lock.
const BUCKET: u64 = 16;
/// `struct htab_elem` before the key.
const HTAB_ELEM_HEADER: u64 = 48;
/// The free-list node of an element allocated on insert.
const LLIST_NODE: u64 = 8;
/// `struct bpf_array` and the map header.
const ARRAY_HEADER: u64 = 312;
/// A ring buffer's pages beyond its data: the consumer, producer and header pages, and the
/// page pointers (its data pages are mapped twice).
const PAGE: u64 = 4096;
const RINGBUF_HEADER: u64 = 304;

/// What one map costs in kernel memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCost {
    /// Map name.
    pub map: &'static str,
    /// The `[limits]` setting that sizes it, if one does.
    pub limit: Option<&'static str>,
    /// Capacity in entries (both policy generations, where the map holds two).
    pub capacity: u64,
    /// Bytes with no entry held.
    pub idle_bytes: u64,
    /// Bytes each entry adds (0: preallocated).
    pub entry_bytes: u64,
}

impl MapCost {
    /// Bytes when `entries` are held.
    pub fn at(&self, entries: u64) -> u64 {
        self.idle_bytes + self.entry_bytes * entries.min(self.capacity)
    }

    /// Bytes when the map is full.
    pub fn full(&self) -> u64 {
        self.at(self.capacity)
    }
}

/// Errors of [`costs`] and [`in_use`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The embedded object does not parse (a broken build).
    #[error("the embedded eBPF object does not parse: {0}")]
    Object(String),
    /// The kernel's account of a map could not be read.
    #[error("cannot read the kernel memory of map {map} from {path}")]
    FdInfo {
        /// Map name.
        map: &'static str,
        /// The fdinfo file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The fdinfo of a map had no `memlock` line.
    #[error("{path} (map {map}) has no memlock line")]
    NoMemlock {
        /// Map name.
        map: &'static str,
        /// The fdinfo file.
        path: String,
    },
}

/// The `[limits]` setting that sizes `map`.
fn limit_of(map: &str) -> Option<&'static str> {
    Some(match map {
        map_names::V4_PREFIXES => "max_v4_prefixes",
        map_names::V6_PREFIXES | map_names::V6_SUMMARY => "max_v6_prefixes",
        map_names::SOURCES => "max_tracked_sources",
        map_names::SUBNETS | map_names::ESCALATION => "max_tracked_subnets",
        map_names::BANS => "max_bans",
        _ => return None,
    })
}

fn round8(bytes: u32) -> u64 {
    u64::from(bytes).div_ceil(8) * 8
}

/// What every map of the firewall costs under `policy` on a host with `cpus` possible CPUs,
/// pinned maps first, in [`map_names::ALL`] order, then the unpinned ones.
pub fn costs(policy: &Policy, cpus: u32) -> Result<Vec<MapCost>, MemoryError> {
    let object = Object::parse(EBPF_OBJECT).map_err(|err| MemoryError::Object(err.to_string()))?;
    let cpus = u64::from(cpus.max(1));
    let mut out = Vec::new();
    for map in map_names::ALL.into_iter().chain(map_names::UNPINNED) {
        let definition = object
            .maps
            .get(map)
            .ok_or_else(|| MemoryError::Object(format!("no map {map}")))?;
        let capacity = u64::from(if map == map_names::ADMISSION {
            firewall::admission_entries(u32::try_from(cpus).unwrap_or(u32::MAX))
        } else {
            firewall::max_entries(policy, map).unwrap_or(definition.max_entries())
        });
        let key = round8(definition.key_size());
        let value = round8(definition.value_size());
        let (idle_bytes, entry_bytes) = match definition.map_type() {
            HASH | LRU_HASH => {
                let lru = definition.map_type() == LRU_HASH;
                let buckets = capacity.next_power_of_two() * BUCKET;
                let fixed = HTAB_HEADER + HTAB_LOCKS_PER_CPU * cpus + buckets;
                let element = HTAB_ELEM_HEADER + key + value;
                if definition.map_flags() & NO_PREALLOC != 0 {
                    (fixed, element + LLIST_NODE)
                } else if lru {
                    (fixed + element * capacity, 0)
                } else {
                    // A preallocated plain hash keeps one spare element per CPU, and a pointer
                    // to it.
                    (fixed + element * (capacity + cpus) + 8 * cpus, 0)
                }
            }
            // A program array's slots are pointers: accounted as an array of 8-byte values.
            ARRAY | PROG_ARRAY => (ARRAY_HEADER + value * capacity, 0),
            PERCPU_ARRAY => (ARRAY_HEADER + 8 * capacity + value * capacity * cpus, 0),
            RINGBUF => {
                let data_pages = capacity / PAGE;
                (
                    capacity + 3 * PAGE + (3 + 2 * data_pages) * 8 + RINGBUF_HEADER,
                    0,
                )
            }
            other => {
                return Err(MemoryError::Object(format!(
                    "map {map} has type {other}, which this accounting does not know"
                )));
            }
        };
        out.push(MapCost {
            map,
            limit: limit_of(map),
            capacity,
            idle_bytes,
            entry_bytes,
        });
    }
    Ok(out)
}

/// The possible CPUs of this host, as the kernel sizes per-CPU maps.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
}

/// The kernel's account of `map` (`memlock` in the fdinfo of `fd`), in bytes.
pub fn memlock(map: &'static str, fd: std::os::fd::BorrowedFd<'_>) -> Result<u64, MemoryError> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|source| MemoryError::FdInfo {
        map,
        path: path.clone(),
        source,
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or(MemoryError::NoMemlock { map, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limits;

    fn cost(costs: &[MapCost], map: &str) -> MapCost {
        costs
            .iter()
            .find(|cost| cost.map == map)
            .cloned()
            .unwrap_or_else(|| panic!("no cost for {map}"))
    }

    /// Figures read from `bpftool map show` on kernel 6.18 (2 CPUs) for maps of the same shapes.
    #[test]
    fn the_formulas_reproduce_the_kernels_figures() {
        let policy = Policy {
            limits: Limits {
                max_v4_prefixes: 1 << 20,
                max_tracked_sources: 65536,
                ..Limits::default()
            },
            ..Policy::default()
        };
        let costs = costs(&policy, 2).expect("costs");
        // `hash key 8 value 4 entries 2097152 flags 1`: 33555328 B empty.
        let prefixes = cost(&costs, map_names::V4_PREFIXES);
        assert_eq!(prefixes.capacity, 2 << 20);
        assert_eq!(prefixes.idle_bytes, 33_555_328);
        // ... and 72 B per element inserted (`entries 1024`: 17280 B empty, 17424 B with two).
        assert_eq!(prefixes.entry_bytes, 72);
        // `lru_hash key 20 value 40 entries 65536`: 8389504 B.
        let sources = cost(&costs, map_names::SOURCES);
        assert_eq!((sources.idle_bytes, sources.entry_bytes), (8_389_504, 0));
        // `array key 4 value 8 entries 131072` (65536 slots per CPU): 1048888 B.
        let admission = cost(&costs, map_names::ADMISSION);
        assert_eq!(admission.capacity, 131_072);
        assert_eq!(admission.idle_bytes, 1_048_888);
        // `ringbuf entries 262144`: 275784 B.
        assert_eq!(cost(&costs, map_names::EVENTS).idle_bytes, 275_784);
    }

    #[test]
    fn only_the_sized_maps_name_a_limit() {
        let costs = costs(&Policy::default(), 4).expect("costs");
        let limited: Vec<(&str, &str)> = costs
            .iter()
            .filter_map(|cost| cost.limit.map(|limit| (cost.map, limit)))
            .collect();
        assert_eq!(limited.len(), 7, "{limited:?}");
        assert_eq!(
            costs.len(),
            map_names::ALL.len() + map_names::UNPINNED.len()
        );
    }
}
