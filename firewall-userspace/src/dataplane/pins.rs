//! What a daemon finds pinned from its predecessor, and whether it can take it over.
//!
//! A daemon that died (`kill -9`, a crash, an upgrade) leaves its maps and XDP links pinned, so
//! enforcement continues. The next daemon adopts them when their layout is the one it would
//! create itself (same layout version, map types, key and value sizes and capacities);
//! otherwise it replaces the maps (bans, rate-limit state and counters start over) while still
//! swapping its program into the live links without a gap.

use std::path::PathBuf;

use aya::maps::MapData;
use firewall_common::map_names;

use crate::{dataplane::firewall, paths::PinLayout, policy::Policy};

/// Why pinned maps cannot be adopted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Incompatible {
    /// Some maps are pinned, others are missing.
    #[error("map {name} is missing from {}", dir.display())]
    Missing {
        /// The missing map.
        name: &'static str,
        /// The maps directory.
        dir: PathBuf,
    },
    /// A pinned map has another shape than this build would create.
    #[error(
        "pinned map {name} has {found}, this build needs {expected} (a different apifw version or \
         changed `[limits]`)"
    )]
    Shape {
        /// The map.
        name: &'static str,
        /// What is pinned.
        found: String,
        /// What this build creates.
        expected: String,
    },
    /// The pinned map cannot be read.
    #[error("pinned map {name} cannot be opened: {reason}")]
    Unreadable {
        /// The map.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The object of this build cannot be parsed (a build problem).
    #[error("the embedded eBPF object cannot be parsed: {0}")]
    Object(String),
}

/// What is pinned under a layout.
#[derive(Debug, PartialEq, Eq)]
pub enum Pinned {
    /// Nothing: a fresh start.
    Nothing,
    /// Maps this build can adopt.
    Adoptable,
    /// Maps this build must replace, and why.
    Incompatible(Incompatible),
}

fn shape(map_type: u32, key: u32, value: u32, max_entries: u32, flags: u32) -> String {
    format!(
        "type {map_type}, key {key} B, value {value} B, {max_entries} entries, flags {flags:#x}"
    )
}

/// Inspects the maps pinned under `layout` against what `policy` would create.
pub fn inspect(policy: &Policy, layout: &PinLayout) -> Pinned {
    let present: Vec<&'static str> = map_names::ALL
        .iter()
        .copied()
        .filter(|name| layout.map(name).exists())
        .collect();
    if present.is_empty() {
        return Pinned::Nothing;
    }
    match check(policy, layout) {
        Ok(()) => Pinned::Adoptable,
        Err(reason) => Pinned::Incompatible(reason),
    }
}

fn check(policy: &Policy, layout: &PinLayout) -> Result<(), Incompatible> {
    let object = aya_obj::Object::parse(firewall::EBPF_OBJECT)
        .map_err(|err| Incompatible::Object(err.to_string()))?;
    for name in map_names::ALL {
        let path = layout.map(name);
        if !path.exists() {
            return Err(Incompatible::Missing {
                name,
                dir: layout.maps_dir(),
            });
        }
        let definition = object
            .maps
            .get(name)
            .ok_or_else(|| Incompatible::Object(format!("no map {name}")))?;
        let expected = shape(
            definition.map_type(),
            definition.key_size(),
            definition.value_size(),
            firewall::max_entries(policy, name).unwrap_or(definition.max_entries()),
            definition.map_flags(),
        );
        let unreadable = |err: aya::maps::MapError| Incompatible::Unreadable {
            name,
            reason: err.to_string(),
        };
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .map_err(unreadable)?;
        let map_type = info.map_type().map_err(unreadable)? as u32;
        let found = shape(
            map_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        if found != expected {
            return Err(Incompatible::Shape {
                name,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// Removes the pinned maps under `layout` (not the links: they keep the old program, and its
/// maps, running until the new program replaces it).
pub fn remove_maps(layout: &PinLayout) -> std::io::Result<()> {
    match std::fs::remove_dir_all(layout.maps_dir()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Pin directories of other layout versions under the pin root (`v<N>` with another N).
pub fn other_layouts(layout: &PinLayout) -> Vec<PathBuf> {
    let current = layout.versioned();
    std::fs::read_dir(layout.root())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path != &current
                        && path
                            .file_name()
                            .and_then(|name| name.to_str())
                            .is_some_and(|name| {
                                name.strip_prefix('v')
                                    .is_some_and(|n| n.parse::<u32>().is_ok())
                            })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use firewall_common::{map_names, program_names};

    use crate::dataplane::firewall::EBPF_OBJECT;

    /// Only the product in the product: the object `apifw run` loads holds the firewall (its
    /// three programs) and the maps it pins or keeps unpinned on purpose (plus aya-log's and the data sections'), so the
    /// daemon creates nothing in the kernel for tests or benchmarks. Their programs live in
    /// `test-ebpf`.
    #[test]
    fn the_product_object_holds_only_the_firewall_and_its_maps() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        // The firewall and the two programs it tail-calls.
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        let expected_programs: BTreeSet<&str> = [
            program_names::FIREWALL,
            program_names::LIMITS,
            program_names::SYN_COOKIE,
        ]
        .into();
        assert_eq!(programs, expected_programs);
        let maps: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            // aya-log's ring and the object's data sections are not maps the daemon pins.
            .filter(|name| !name.starts_with("AYA_") && !name.starts_with('.'))
            .collect();
        let expected: BTreeSet<&str> = map_names::ALL
            .into_iter()
            .chain(map_names::UNPINNED)
            .collect();
        assert_eq!(maps, expected);
    }

    /// The ablation hook is off in the object that ships: its global sits in `.rodata` (which
    /// aya freezes, so the verifier prunes the stops) and holds `ablation::NEVER`. Found by
    /// patching it as the test hooks do and seeing which bytes change; the map aya makes of
    /// `.rodata` is one of the data sections the test above leaves out of the daemon's maps.
    #[test]
    fn the_shipped_object_never_stops() {
        use firewall_common::ablation::{NEVER, STOP_AFTER_GLOBAL};
        let shipped = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let mut patched = shipped.clone();
        let zero = [0u8; 4];
        patched
            .patch_map_data(std::collections::HashMap::from([(
                STOP_AFTER_GLOBAL,
                (&zero[..], true),
            )]))
            .expect("the object has the global, four bytes in a data section");
        let changed: Vec<(&str, Vec<u8>)> = shipped
            .maps
            .iter()
            .filter(|(name, map)| map.data() != patched.maps[*name].data())
            .map(|(name, map)| {
                let bytes = map
                    .data()
                    .iter()
                    .zip(patched.maps[name].data())
                    .filter(|(before, after)| before != after)
                    .map(|(before, _)| *before)
                    .collect();
                (name.as_str(), bytes)
            })
            .collect();
        assert_eq!(changed, [(".rodata", NEVER.to_le_bytes().to_vec())]);
    }
}
