//! Unit tests of the parent module, in a file of their own to keep the module readable.

use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, IterableMap as _, MapError, PerCpuHashMap};

use super::*;

const BPF_F_NO_PREALLOC: u32 = 1;

/// Whether the kernel tests can run; they create maps, which needs root.
fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping: creating BPF maps needs root");
    }
    root
}

fn hash(max_entries: u32, flags: u32) -> HashMap<MapData, u64, u32> {
    HashMap::create(max_entries, flags).expect("create hash map")
}

/// Distinct keys for the indices in `range`, spread over the key space (multiplying by an
/// odd constant is a bijection modulo 2^64).
fn keys(range: std::ops::Range<u64>) -> Vec<u64> {
    range
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

fn count(map: &HashMap<MapData, u64, u32>) -> usize {
    let mut count = 0;
    for key in map.keys() {
        key.expect("iterate keys");
        count += 1;
    }
    count
}

fn syscall_error(error: BatchError) -> (&'static str, usize, usize, io::Error) {
    match error {
        BatchError::Syscall {
            op,
            done,
            total,
            source,
        } => (op, done, total, source),
        other => panic!("expected a syscall error, got {other:?}"),
    }
}

fn do_update(
    map: &MapData,
    keys: &[u64],
    values: &[u32],
    per_element: bool,
) -> Result<(), BatchError> {
    check(map, size_of::<u64>(), Some(size_of::<u32>()))?;
    run(
        map.fd().as_fd(),
        Op::Update,
        keys,
        Some(values),
        per_element,
    )
}

fn do_delete(map: &MapData, keys: &[u64], per_element: bool) -> Result<(), BatchError> {
    check(map, size_of::<u64>(), None)?;
    run::<u64, u8>(map.fd().as_fd(), Op::Delete, keys, None, per_element)
}

/// Update, overwrite, delete half, overfill; through the batch or the per-element path.
fn exercise(flags: u32, per_element: bool) {
    const N: u64 = 200_000;
    let map = hash(300_000, flags);
    let data = map.map();
    let keys = keys(0..N);
    let values: Vec<u32> = (0..N as u32).collect();

    do_update(data, &keys, &values, per_element).expect("update");
    assert_eq!(count(&map), N as usize);
    for (key, value) in keys.iter().zip(&values) {
        assert_eq!(map.get(key, 0).expect("lookup"), *value);
    }

    let new_values: Vec<u32> = values.iter().map(|v| v + 1_000_000).collect();
    do_update(data, &keys, &new_values, per_element).expect("overwrite");
    assert_eq!(count(&map), N as usize);
    for (key, value) in keys.iter().zip(&new_values) {
        assert_eq!(map.get(key, 0).expect("lookup"), *value);
    }

    let (even, odd): (Vec<_>, Vec<_>) = keys.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let even: Vec<u64> = even.into_iter().map(|(_, key)| *key).collect();
    do_delete(data, &even, per_element).expect("delete");
    assert_eq!(count(&map), N as usize / 2);
    for key in &even {
        assert!(matches!(map.get(key, 0), Err(MapError::KeyNotFound)));
    }
    for (i, key) in odd {
        assert_eq!(map.get(key, 0).expect("lookup"), new_values[i]);
    }

    // 100,000 left; room for 200,000 more: the 200,001st of 250,000 new keys fails, in the
    // fourth chunk of a batch.
    let more = keys_more();
    let more_values = vec![7; more.len()];
    let error = do_update(data, &more, &more_values, per_element).expect_err("overfill");
    assert!(error.is_map_full(), "{error:?}");
    let message = error.to_string();
    let (op, done, total, _) = syscall_error(error);
    let expected_op = if per_element {
        "BPF_MAP_UPDATE_ELEM"
    } else {
        "BPF_MAP_UPDATE_BATCH"
    };
    assert_eq!((op, done, total), (expected_op, 200_000, 250_000));
    assert!(message.contains("map is full"), "{message}");
    assert_eq!(count(&map), 300_000);
    assert_eq!(map.get(&more[done - 1], 0).expect("last inserted"), 7);
    assert!(matches!(
        map.get(&more[done], 0),
        Err(MapError::KeyNotFound)
    ));
}

fn keys_more() -> Vec<u64> {
    keys(1_000_000..1_250_000)
}

#[test]
fn batch_prealloc() {
    if root() {
        exercise(0, false);
    }
}

#[test]
fn batch_no_prealloc() {
    if root() {
        exercise(BPF_F_NO_PREALLOC, false);
    }
}

#[test]
fn per_element_prealloc() {
    if root() {
        exercise(0, true);
    }
}

#[test]
fn per_element_no_prealloc() {
    if root() {
        exercise(BPF_F_NO_PREALLOC, true);
    }
}

#[test]
fn public_api_and_mismatch() {
    if !root() {
        return;
    }
    let map = hash(1_000, 0);
    let keys = keys(0..500);
    let values = vec![3u32; 500];
    assert!(matches!(
        update(map.map(), &keys, &values[..499]),
        Err(BatchError::Mismatch {
            keys: 500,
            values: 499
        })
    ));
    assert_eq!(count(&map), 0);
    update(map.map(), &keys, &values).expect("update");
    assert_eq!(count(&map), 500);
    delete(map.map(), &keys[..200]).expect("delete");
    assert_eq!(count(&map), 300);
    update::<u64, u32>(map.map(), &[], &[]).expect("empty update");
    delete::<u64>(map.map(), &[]).expect("empty delete");
}

#[test]
fn delete_of_a_missing_key_reports_its_index() {
    if !root() {
        return;
    }
    let map = hash(1_000, 0);
    let keys = keys(0..10);
    update(map.map(), &keys, &[1u32; 10]).expect("update");
    let missing = 12_345;
    let error = delete(map.map(), &[keys[0], keys[1], missing, keys[3]]).expect_err("missing");
    assert!(error.is_not_found(), "{error:?}");
    assert!(error.to_string().contains("not in the map"), "{error}");
    let (op, done, total, _) = syscall_error(error);
    assert_eq!((op, done, total), ("BPF_MAP_DELETE_BATCH", 2, 4));
    assert!(matches!(map.get(&keys[0], 0), Err(MapError::KeyNotFound)));
    assert!(matches!(map.get(&keys[1], 0), Err(MapError::KeyNotFound)));
    assert_eq!(map.get(&keys[3], 0).expect("untouched"), 1);
    assert_eq!(count(&map), 8);
}

#[test]
fn wrong_sizes_and_per_cpu_maps_are_refused() {
    if !root() {
        return;
    }
    let map = hash(10, 0);
    assert!(matches!(
        update(map.map(), &[1u32], &[1u32]),
        Err(BatchError::Size {
            what: "key",
            size: 4,
            expected: 8
        })
    ));
    assert!(matches!(
        update(map.map(), &[1u64], &[1u64]),
        Err(BatchError::Size {
            what: "value",
            size: 8,
            expected: 4
        })
    ));
    assert!(matches!(
        delete(map.map(), &[1u16]),
        Err(BatchError::Size { what: "key", .. })
    ));
    let per_cpu = PerCpuHashMap::<MapData, u32, u32>::create(10, 0).expect("create");
    assert!(matches!(
        update(per_cpu.map(), &[1u32], &[1u32]),
        Err(BatchError::PerCpu(MapType::PerCpuHash))
    ));
}

/// Arrays support batch updates but not batch deletes (nor deletes at all).
#[test]
fn arrays_update_in_batch_and_fall_back_for_delete() {
    if !root() {
        return;
    }
    let array = Array::<MapData, u32>::create(1_000, 0).expect("create array");
    let indices: Vec<u32> = (0..1_000).collect();
    let values: Vec<u32> = indices.iter().map(|i| i * 3).collect();
    update(array.map(), &indices, &values).expect("update");
    for i in [0, 1, 500, 999] {
        assert_eq!(array.get(&i, 0).expect("get"), i * 3);
    }
    let error = update(array.map(), &[5u32, 1_000], &[0u32, 0]).expect_err("out of range");
    assert!(error.is_map_full(), "{error:?}");
    let (op, done, total, _) = syscall_error(error);
    assert_eq!((op, done, total), ("BPF_MAP_UPDATE_BATCH", 1, 2));
    // The batch delete is refused as a whole (ENOTSUPP), the per-element one fails.
    let error = delete(array.map(), &[1u32]).expect_err("delete from array");
    let (op, done, total, source) = syscall_error(error);
    assert_eq!((op, done, total), ("BPF_MAP_DELETE_ELEM", 0, 1));
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
}

/// A whole map read back in batches is exactly what is in it: hash maps (preallocated or not,
/// empty, several chunks, after deletes) and arrays.
#[test]
fn lookup_all_reads_back_every_element() {
    if !root() {
        return;
    }
    for flags in [0, BPF_F_NO_PREALLOC] {
        let map = hash(100_000, flags);
        let read = lookup_all::<u64, u32>(map.map()).expect("read");
        assert_eq!(read, Some(Vec::new()), "an empty map");
        let keys = keys(0..50_000);
        let values: Vec<u32> = (0..50_000).collect();
        update(map.map(), &keys, &values).expect("update");
        delete(map.map(), &keys[..10_000]).expect("delete");
        let mut read = lookup_all::<u64, u32>(map.map())
            .expect("read")
            .expect("hash maps read in batches");
        read.sort_unstable();
        let mut expected: Vec<(u64, u32)> = keys[10_000..]
            .iter()
            .copied()
            .zip(values[10_000..].iter().copied())
            .collect();
        expected.sort_unstable();
        assert_eq!(read, expected, "flags {flags}");
    }
    let array = Array::<MapData, u32>::create(20_000, 0).expect("create array");
    let indices: Vec<u32> = (0..20_000).collect();
    let values: Vec<u32> = indices.iter().map(|i| i * 3).collect();
    update(array.map(), &indices, &values).expect("update");
    let read = lookup_all::<u32, u32>(array.map())
        .expect("read")
        .expect("arrays read in batches");
    assert_eq!(read, indices.into_iter().zip(values).collect::<Vec<_>>());
    assert!(matches!(
        lookup_all::<u32, u32>(hash(10, 0).map()),
        Err(BatchError::Size { what: "key", .. })
    ));
    let per_cpu = PerCpuHashMap::<MapData, u32, u32>::create(10, 0).expect("create");
    assert!(matches!(
        lookup_all::<u32, u32>(per_cpu.map()),
        Err(BatchError::PerCpu(MapType::PerCpuHash))
    ));
}

#[test]
fn parallel_update_writes_every_element_and_reports_a_full_map() {
    if !root() {
        return;
    }
    // Above PARALLEL_MIN, so the work is split whenever the machine has two CPUs.
    const N: u64 = 2 * PARALLEL_MIN as u64 + 7;
    let keys = keys(0..N);
    let values: Vec<u32> = (0..N as u32).collect();
    for flags in [0, BPF_F_NO_PREALLOC] {
        let map = hash(N as u32 + 10, flags);
        update_parallel(map.map(), &keys, &values).expect("parallel update");
        let read: std::collections::HashMap<u64, u32> = lookup_all::<u64, u32>(map.map())
            .expect("lookup batch")
            .expect("supported")
            .into_iter()
            .collect();
        assert_eq!(read.len(), N as usize, "flags {flags}");
        for (key, value) in keys.iter().zip(&values) {
            assert_eq!(read.get(key), Some(value), "flags {flags}: key {key:#x}");
        }
        // Too small a map: the error says so, whichever part hit the limit.
        let small = hash(PARALLEL_MIN as u32, flags);
        let error = update_parallel(small.map(), &keys, &values).expect_err("map too small");
        assert!(error.is_map_full(), "flags {flags}: {error:?}");
        let (_, done, total, _) = syscall_error(error);
        assert_eq!(total, N as usize);
        assert!(done < N as usize, "done {done}");
    }
    // Mismatched lengths are refused as by `update`.
    let map = hash(16, 0);
    assert!(matches!(
        update_parallel(map.map(), &keys, &values[1..]),
        Err(BatchError::Mismatch { .. })
    ));
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Prints how long a million updates take; no assertions on time.
#[test]
#[ignore = "a measurement, not a check: run with --release -- --ignored --nocapture"]
fn measure_one_million() {
    if !root() {
        return;
    }
    const N: u64 = 1_000_000;
    let keys = keys(0..N);
    let values: Vec<u32> = (0..N as u32).collect();
    for (name, flags) in [("prealloc", 0), ("BPF_F_NO_PREALLOC", BPF_F_NO_PREALLOC)] {
        let map = hash(N as u32, flags);
        let insert = timed(|| do_update(map.map(), &keys, &values, false).expect("batch"));
        let overwrite = timed(|| do_update(map.map(), &keys, &values, false).expect("batch"));
        let remove = timed(|| do_delete(map.map(), &keys, false).expect("batch delete"));
        eprintln!(
            "batch       {name:>17}: insert {insert:>10.3?}  overwrite {overwrite:>10.3?}  delete {remove:>10.3?}"
        );
        let map = hash(N as u32, flags);
        let insert = timed(|| do_update(map.map(), &keys, &values, true).expect("per element"));
        let overwrite = timed(|| do_update(map.map(), &keys, &values, true).expect("per element"));
        let remove = timed(|| do_delete(map.map(), &keys, true).expect("per element delete"));
        eprintln!(
            "per element {name:>17}: insert {insert:>10.3?}  overwrite {overwrite:>10.3?}  delete {remove:>10.3?}"
        );
        let mut map = hash(N as u32, flags);
        let insert = timed(|| {
            for (key, value) in keys.iter().zip(&values) {
                map.insert(key, value, 0).expect("aya insert");
            }
        });
        eprintln!("aya insert  {name:>17}: insert {insert:>10.3?}");
    }
}
