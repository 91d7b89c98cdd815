//! Batch updates, deletes and reads of map elements: `BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH` and `BPF_MAP_LOOKUP_BATCH` (kernel 5.6+), which aya 0.14 does not wrap.
//!
//! Reading a whole map element by element costs two bpf(2) calls per element (next key, then
//! lookup): a ban map of 100,000 CrowdSec decisions took about half a second of CPU to read, and
//! the daemon reads its ban map every second. [`lookup_all`] reads it in a few calls.
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

/// Below this many elements [`update_parallel`] stays on the calling thread: a thread costs
/// more than it saves on small writes.
const PARALLEL_MIN: usize = 131_072;

/// At most this many threads write one map at once.
const PARALLEL_MAX_THREADS: usize = 4;

/// Like [`update`], with the elements split into contiguous parts written by up to
/// `available_parallelism()` threads at once (at most [`PARALLEL_MAX_THREADS`]).
///
/// Why: a million-entry prefix list is mostly the kernel's time inserting into the hash (each
/// insert a bucket lock, an allocation and cache misses over a table of tens of MiB), and the
/// kernel's hash maps lock per bucket, so inserts from several CPUs proceed side by side. On
/// failure, which elements are in the map is not said: the failing part's elements before
/// [`BatchError::Syscall`]'s `done` (counted from the start of `keys`) are, those after it are
/// not, and other parts may be written wholly or in part. Callers that need the prefix
/// guarantee of [`update`] use it; the prefix tables do not (a failed generation write is
/// rewritten whole next time).
pub fn update_parallel<K: Pod + Sync, V: Pod + Sync>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(PARALLEL_MAX_THREADS);
    if keys.len() < PARALLEL_MIN || threads < 2 || keys.len() != values.len() {
        return update(map, keys, values);
    }
    check(map, size_of::<K>(), Some(size_of::<V>()))?;
    let fd = map.fd().as_fd();
    let all = keys.len();
    let part = all.div_ceil(threads);
    let results: Vec<Result<(), BatchError>> = std::thread::scope(|scope| {
        let writers: Vec<_> = keys
            .chunks(part)
            .zip(values.chunks(part))
            .enumerate()
            .map(|(index, (keys, values))| {
                scope.spawn(move || {
                    run(fd, Op::Update, keys, Some(values), false).map_err(|err| match err {
                        BatchError::Syscall {
                            op,
                            done,
                            total: _,
                            source,
                        } => BatchError::Syscall {
                            op,
                            done: index * part + done,
                            total: all,
                            source,
                        },
                        other => other,
                    })
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|writer| {
                writer.join().unwrap_or_else(|_| {
                    Err(BatchError::Syscall {
                        op: "BPF_MAP_UPDATE_BATCH",
                        done: 0,
                        total: all,
                        source: io::Error::other("a batch writer thread panicked"),
                    })
                })
            })
            .collect()
    });
    results.into_iter().collect()
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

/// Elements read per `BPF_MAP_LOOKUP_BATCH` call: large enough that a hash bucket always fits
/// (the kernel refuses a call whose buffer cannot hold the next bucket), small enough that the
/// buffers stay modest.
const LOOKUP_CHUNK: usize = 8_192;

/// Reads every element of a (non per-CPU) hash or array map with `BPF_MAP_LOOKUP_BATCH`.
/// `Ok(None)` when the kernel does not support it for this map, having read nothing: the
/// caller then iterates as before. Elements changed during the read may be seen or not, as with
/// an iteration by keys.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> Result<Option<Vec<(K, V)>>, BatchError> {
    check(map, size_of::<K>(), Some(size_of::<V>()))?;
    let fd = map.fd().as_fd();
    let (key_size, value_size) = (size_of::<K>(), size_of::<V>());
    let mut keys = vec![0u8; LOOKUP_CHUNK * key_size];
    let mut values = vec![0u8; LOOKUP_CHUNK * value_size];
    // The resume token: a bucket index (u32) for hash maps, a key for arrays; 8-byte aligned
    // buffers at least as long as either.
    let token_words = key_size.max(4).div_ceil(8);
    let mut in_token = vec![0u64; token_words];
    let mut out_token = vec![0u64; token_words];
    let mut read = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: raw_fd(fd),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a `BatchAttr`, the layout of the batch commands' attribute. The
        // kernel writes at most `count` keys and values of the map's key and value sizes (checked
        // equal to `K`'s and `V`'s) into `keys` and `values`, which hold `LOOKUP_CHUNK` of each,
        // reads a token from `in_token` and writes one to `out_token`, both at least as long as
        // a key and as a u32 and 8-byte aligned.
        let done = match unsafe { sys_bpf(LOOKUP_BATCH, &mut attr) } {
            Ok(()) => false,
            // The end of the map; this call's elements are still in the buffers.
            Err(source) if source.raw_os_error() == Some(libc::ENOENT) => true,
            Err(source)
                if first
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
            {
                return Ok(None);
            }
            Err(source) => {
                return Err(BatchError::Syscall {
                    op: "BPF_MAP_LOOKUP_BATCH",
                    done: read.len(),
                    total: read.len(),
                    source,
                });
            }
        };
        let count = (attr.count as usize).min(LOOKUP_CHUNK);
        read.reserve(count);
        for i in 0..count {
            // SAFETY: element `i < count ≤ LOOKUP_CHUNK` lies within the buffers, which the
            // kernel filled with `count` keys and values; `K` and `V` are `Pod`, valid for any
            // bytes, and read unaligned.
            let element = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * key_size).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * value_size).cast::<V>()),
                )
            };
            read.push(element);
        }
        if done {
            return Ok(Some(read));
        }
        std::mem::swap(&mut in_token, &mut out_token);
        first = false;
    }
}

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const LOOKUP_BATCH: libc::c_long = 24;

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
#[path = "batch_tests.rs"]
mod tests;
