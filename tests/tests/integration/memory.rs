//! Kernel memory of the maps: what the kernel accounts for each map (`memlock` in its fdinfo)
//! equals what `apifw check` computes from the limits (`dataplane::memory`), to the byte, and the
//! shipped example policy stays within 32 MiB.
//!
//! Needs root (CAP_BPF). Each test loads its own copy of the object.

use std::{collections::HashMap, net::Ipv4Addr, path::Path};

use apifw_tests::support::kernel_map;
use firewall_common::{
    map_names,
    prefix::{PrefixV4Key, PrefixV6Key, V6Summary, V6SummaryKey},
    rules::{BanEntry, BanKey, RuleKey},
};
use firewall_userspace::{
    Firewall, Loaded, Policy,
    dataplane::memory::{self, MapCost},
};

/// The goal for the shipped example policy at idle.
const EXAMPLE_BUDGET: u64 = 32 << 20;

/// Entries held by the maps whose memory grows with them.
fn held(firewall: &Firewall, map: &'static str) -> u64 {
    let count = match map {
        map_names::V4_PREFIXES => kernel_map::<PrefixV4Key, u32>(firewall, map).len(),
        map_names::V6_PREFIXES => kernel_map::<PrefixV6Key, u32>(firewall, map).len(),
        map_names::V6_SUMMARY => kernel_map::<V6SummaryKey, V6Summary>(firewall, map).len(),
        map_names::RULE_MATCH => kernel_map::<RuleKey, u32>(firewall, map).len(),
        map_names::BANS => kernel_map::<BanKey, BanEntry>(firewall, map).len(),
        other => panic!("{other} grows with its entries, and this test cannot count them"),
    };
    count as u64
}

/// Loads `policy` and checks every map's kernel figure against the computed one; the total.
fn measured_as_computed(policy: &Policy) -> u64 {
    let firewall = Firewall::load(policy).expect("load firewall");
    let costs: Vec<MapCost> =
        memory::costs(policy, memory::possible_cpus()).expect("computed costs");
    let measured: HashMap<&str, u64> = firewall.kernel_memory().into_iter().collect();
    assert_eq!(measured.len(), costs.len(), "{measured:?}");
    for cost in &costs {
        let entries = if cost.entry_bytes == 0 {
            0
        } else {
            held(&firewall, cost.map)
        };
        assert_eq!(
            measured[cost.map],
            cost.at(entries),
            "{}: the kernel's figure against the computed one for {entries} entries ({cost:?})",
            cost.map
        );
    }
    measured.values().sum()
}

#[test]
fn the_example_policy_takes_what_check_computes_and_at_most_32_mib() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/apifw.toml");
    let policy = Loaded::from_file(&path)
        .unwrap_or_else(|err| panic!("{err}"))
        .policy;
    let total = measured_as_computed(&policy);
    eprintln!(
        "examples/apifw.toml: {:.1} MiB of kernel memory on {} CPUs",
        total as f64 / f64::from(1 << 20),
        memory::possible_cpus()
    );
    assert!(
        total <= EXAMPLE_BUDGET,
        "the example policy takes {total} bytes of kernel memory"
    );
}

#[test]
fn prefix_maps_grow_with_the_entries_they_hold() {
    let block: Vec<String> = (0..5_000u32)
        .map(|index| {
            let addr = Ipv4Addr::from((198u32 << 24) | (18 << 16) | (index * 7));
            format!("\"{addr}/32\"")
        })
        .collect();
    let text = format!("[block]\ncidrs = [{}]\n", block.join(", "));
    let policy = Loaded::from_str(Path::new("grow.toml"), &text)
        .unwrap_or_else(|err| panic!("{err}"))
        .policy;
    let empty = measured_as_computed(&Policy::default());
    let grown = measured_as_computed(&policy);
    // 5,000 IPv4 /32s are 5,000 entries of the prefix hash (72 bytes each) and nothing else.
    assert_eq!(grown - empty, 5_000 * 72);
}
