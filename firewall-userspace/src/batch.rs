//! Batch updates and deletes of map elements: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`
//! (kernel 5.6+), which aya 0.14 does not wrap.
//!
//! Filling a map element by element costs one bpf(2) call per element; a million blocklist
//! prefixes take seconds. A batch call hands the kernel arrays of keys and values and it loops
//! over them itself (`generic_map_update_batch()` / `generic_map_delete_batch()` in
//! `kernel/bpf/syscall.c`), which saves the per-call entry, fd lookup and attribute copy.
//!
//! The kernel processes a batch in order and stops at the first element that fails, writing back
//! how many it processed; [`BatchError::Syscall`] reports that as `done`, so `done` is also the
//! index of the element that failed. Calls are split into chunks of at most [`MAX_CHUNK`]
//! elements, and `done` counts across chunks.
//!
//! When the kernel rejects the very first batch call as a whole (`EINVAL` from a kernel that
//! predates batch commands, `ENOTSUPP`/`EOPNOTSUPP` for a map type without the batch operation,
//! e.g. deleting from an array) the functions fall back to one `BPF_MAP_UPDATE_ELEM` /
//! `BPF_MAP_DELETE_ELEM` call per element, with the same error reporting.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya::{
    Pod,
    maps::{MapData, MapError, MapType},
};

/// The most elements handed to the kernel in one call.
pub const MAX_CHUNK: usize = 65_536;

/// Why a batch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// `update` was given a different number of keys and values.
    #[error("batch update given {keys} keys but {values} values")]
    Mismatch {
        /// Number of keys.
        keys: usize,
        /// Number of values.
        values: usize,
    },
    /// The map's key and value sizes could not be read from the kernel.
    #[error("cannot read the map's information from the kernel")]
    Info(#[source] Box<MapError>),
    /// The Rust key or value type does not have the size of the map's keys or values.
    #[error("the {what} type has {size} bytes but the map's {what}s have {expected}")]
    Size {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Size of the Rust type.
        size: usize,
        /// Size the map was created with.
        expected: usize,
    },
    /// Per-CPU maps take one value per possible CPU per key, which this module does not lay out.
    #[error("batch operations on per-CPU maps ({0:?}) are not supported")]
    PerCpu(MapType),
    /// A bpf(2) call failed. Elements `0..done` were processed; the element at index `done` is
    /// the one the kernel failed on, and no later element was attempted.
    #[error("{op} failed at element {done} of {total}{}", hint(.source))]
    Syscall {
        /// The bpf command that failed.
        op: &'static str,
        /// How many elements were processed before the failure (the failing element's index).
        done: usize,
        /// How many elements the operation was given.
        total: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl BatchError {
    /// Whether an update failed because the map is full (`E2BIG`/`ENOSPC`: `max_entries`
    /// reached; for arrays, an index out of range).
    pub fn is_map_full(&self) -> bool {
        matches!(self, Self::Syscall { source, .. } if is_full(source))
    }

    /// Whether a delete failed because a key was not in the map (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Syscall { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
    }
}

fn is_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
}

/// The readable part of a syscall failure, appended to [`BatchError::Syscall`]'s message.
fn hint(error: &io::Error) -> &'static str {
    if is_full(error) {
        ": the map is full (max_entries reached)"
    } else if error.raw_os_error() == Some(libc::ENOENT) {
        ": the key is not in the map"
    } else {
        ""
    }
}

/// Inserts or overwrites (`BPF_ANY`) `keys[i]` → `values[i]` for every `i`, in order.
///
/// On failure the elements before [`BatchError::Syscall`]'s `done` are in the map and the rest
/// are not; [`BatchError::is_map_full`] tells a full map apart.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    if keys.len() != values.len() {
        return Err(BatchError::Mismatch {
            keys: keys.len(),
            values: values.len(),
        });
    }
    check(map, size_of::<K>(), Some(size_of::<V>()))?;
    run(map.fd().as_fd(), Op::Update, keys, Some(values), false)
}

/// Deletes `keys`, in order.
///
/// Meant for keys known to be in the map (for instance the difference between the loaded set
/// and its replacement): a key that is not in the map is an error, as it is for the kernel.
/// Deleting stops there: the keys before it are deleted, it and the keys after it are not, the
/// error's `done` is its index and [`BatchError::is_not_found`] is true. A caller that wants to
/// tolerate missing keys can resume with `&keys[done + 1..]`.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    check(map, size_of::<K>(), None)?;
    run::<K, u8>(map.fd().as_fd(), Op::Delete, keys, None, false)
}

/// Checks that the kernel will read exactly the memory we hand it: keys and values of the sizes
/// the map was created with, one value per key.
fn check(map: &MapData, key_size: usize, value_size: Option<usize>) -> Result<(), BatchError> {
    let info = map
        .info()
        .map_err(|error| BatchError::Info(Box::new(error)))?;
    if let Ok(
        map_type @ (MapType::PerCpuHash
        | MapType::PerCpuArray
        | MapType::LruPerCpuHash
        | MapType::PerCpuCgroupStorage),
    ) = info.map_type()
    {
        return Err(BatchError::PerCpu(map_type));
    }
    let sizes = [
        ("key", Some(key_size), info.key_size()),
        ("value", value_size, info.value_size()),
    ];
    for (what, size, expected) in sizes {
        let expected = expected as usize;
        if let Some(size) = size
            && size != expected
        {
            return Err(BatchError::Size {
                what,
                size,
                expected,
            });
        }
    }
    Ok(())
}

/// The two operations, with their bpf commands (`enum bpf_cmd` in `include/uapi/linux/bpf.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Update,
    Delete,
}

impl Op {
    const fn batch_cmd(self) -> libc::c_long {
        match self {
            Self::Update => 26, // BPF_MAP_UPDATE_BATCH
            Self::Delete => 27, // BPF_MAP_DELETE_BATCH
        }
    }

    const fn elem_cmd(self) -> libc::c_long {
        match self {
            Self::Update => 2, // BPF_MAP_UPDATE_ELEM
            Self::Delete => 3, // BPF_MAP_DELETE_ELEM
        }
    }

    const fn batch_name(self) -> &'static str {
        match self {
            Self::Update => "BPF_MAP_UPDATE_BATCH",
            Self::Delete => "BPF_MAP_DELETE_BATCH",
        }
    }

    const fn elem_name(self) -> &'static str {
        match self {
            Self::Update => "BPF_MAP_UPDATE_ELEM",
            Self::Delete => "BPF_MAP_DELETE_ELEM",
        }
    }
}

/// `union bpf_attr`'s `batch` member, used by the `BPF_MAP_*_BATCH` commands. The kernel
/// zero-fills the part of the union beyond the size we pass.
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: the number of elements. Out: the number processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`'s member used by `BPF_MAP_UPDATE_ELEM` and `BPF_MAP_DELETE_ELEM`.
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const _: () = {
    assert!(size_of::<BatchAttr>() == 56);
    assert!(std::mem::offset_of!(BatchAttr, keys) == 16);
    assert!(std::mem::offset_of!(BatchAttr, count) == 32);
    assert!(std::mem::offset_of!(BatchAttr, map_fd) == 36);
    assert!(std::mem::offset_of!(BatchAttr, elem_flags) == 40);
    assert!(size_of::<ElemAttr>() == 32);
    assert!(std::mem::offset_of!(ElemAttr, key) == 8);
    assert!(MAX_CHUNK <= u32::MAX as usize);
};

/// The kernel's internal "operation not supported" errno, which bpf(2) leaks for map types
/// without batch operations (`BPF_DO_BATCH` in `kernel/bpf/syscall.c`); not in libc.
const ENOTSUPP: i32 = 524;

/// Calls bpf(2).
///
/// # Safety
///
/// `attr` must have the layout of the `union bpf_attr` member `cmd` uses, and every pointer in
/// it must be valid for what the kernel does with it for `cmd` (for map commands: reads of
/// `count` keys and values of the map's key and value sizes).
unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: the caller vouches for `attr`'s layout and pointers; `attr` is exclusively
    // borrowed for the call, so the kernel's write-back (batch `count`) lands in memory we own,
    // and the size passed is its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<A>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn raw_fd(fd: BorrowedFd<'_>) -> u32 {
    // A valid descriptor is non-negative.
    fd.as_raw_fd() as u32
}

/// Applies `op` to all elements: in batches, or per element if `per_element` or if the kernel
/// rejects the first batch call. `values` is `Some` (of `keys.len()` values) exactly for updates,
/// and the caller has checked the sizes against the map.
fn run<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    op: Op,
    keys: &[K],
    values: Option<&[V]>,
    per_element: bool,
) -> Result<(), BatchError> {
    debug_assert_eq!(values.is_some(), op == Op::Update);
    debug_assert!(values.is_none_or(|values| values.len() == keys.len()));
    if per_element || !batched(fd, op, keys, values)? {
        one_by_one(fd, op, keys, values)?;
    }
    Ok(())
}

/// Applies `op` in chunks of [`MAX_CHUNK`]. Returns `Ok(false)`, having done nothing, when the
/// kernel does not support the batch command for this map.
fn batched<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    op: Op,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<bool, BatchError> {
    let total = keys.len();
    let mut done = 0;
    while done < total {
        let end = total.min(done + MAX_CHUNK);
        let chunk = &keys[done..end];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            values: values.map_or(0, |values| values[done..end].as_ptr() as u64),
            count: chunk.len() as u32,
            map_fd: raw_fd(fd),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a `BatchAttr`, the layout of the batch commands' attribute. `keys`
        // points to `count` keys of `size_of::<K>()` bytes and, for updates, `values` to `count`
        // values of `size_of::<V>()` bytes (the slices are that long); the caller checked that
        // these are the map's key and value sizes. The kernel only reads them.
        let Err(source) = (unsafe { sys_bpf(op.batch_cmd(), &mut attr) }) else {
            done = end;
            continue;
        };
        // On an element's failure the kernel writes back how many it processed, which is fewer
        // than it was given; when it rejects the call as a whole it leaves `count` alone.
        let processed = attr.count as usize;
        let rejected = processed >= chunk.len();
        let unsupported = matches!(
            source.raw_os_error(),
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
        );
        if done == 0 && rejected && unsupported {
            return Ok(false);
        }
        return Err(BatchError::Syscall {
            op: op.batch_name(),
            done: done + if rejected { 0 } else { processed },
            total,
            source,
        });
    }
    Ok(true)
}

/// Applies `op` with one bpf(2) call per element.
fn one_by_one<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    op: Op,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), BatchError> {
    for (index, key) in keys.iter().enumerate() {
        let mut attr = ElemAttr {
            map_fd: raw_fd(fd),
            key: std::ptr::from_ref(key) as u64,
            value: values.map_or(0, |values| std::ptr::from_ref(&values[index]) as u64),
            ..ElemAttr::default()
        };
        // SAFETY: `attr` is an `ElemAttr`, the layout of the element commands' attribute. `key`
        // points to one key and, for updates, `value` to one value, whose sizes the caller
        // checked against the map's; the kernel only reads them.
        unsafe { sys_bpf(op.elem_cmd(), &mut attr) }.map_err(|source| BatchError::Syscall {
            op: op.elem_name(),
            done: index,
            total: keys.len(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
            let overwrite =
                timed(|| do_update(map.map(), &keys, &values, true).expect("per element"));
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
}
