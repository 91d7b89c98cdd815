//! Small helpers every kind of test uses: bounded waiting, showing frames (from
//! `apifw-test-frames`), and a thread's priority.

use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Waits until `done` holds, checking every 100 ms; panics naming `what` after `timeout`. The
/// bound is a hang guard, never a timing assertion: callers give it generous room.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub use apifw_test_frames::hex;

/// Gives thread `tid` (0: the calling thread) the highest nice level, so that on a shared
/// machine whatever else runs on its CPU barely slows it (it still runs under the normal
/// scheduler, so nothing else starves).
pub fn raise_priority(tid: i32) -> anyhow::Result<()> {
    let who = libc::id_t::try_from(tid).context("thread id")?;
    // SAFETY: setpriority only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, -20) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("renice thread {tid}"));
    }
    Ok(())
}

/// The calling thread pinned to one CPU until dropped (its old affinity restored then). Tests
/// that compare the kernel with the model packet by packet need it: the model is one CPU, and
/// the program keeps per-CPU state (its leases, `firewall_common::lease`), so a thread the
/// scheduler moves between `BPF_PROG_TEST_RUN` calls would meet another CPU's slots.
pub struct OneCpu {
    /// The thread's affinity before.
    old: nix::sched::CpuSet,
    /// The CPU it runs on now.
    cpu: usize,
}

impl OneCpu {
    /// Pins the calling thread to the first CPU it may run on (tests: panics when it cannot).
    pub fn pin() -> Self {
        Self::pin_to(false).expect("pin the thread to its first CPU")
    }

    /// Pins the calling thread to the last CPU it may run on (the benchmarks: away from CPU 0,
    /// which takes most interrupts).
    pub fn pin_last() -> anyhow::Result<Self> {
        Self::pin_to(true)
    }

    fn pin_to(last: bool) -> anyhow::Result<Self> {
        let this = nix::unistd::Pid::from_raw(0);
        let old = nix::sched::sched_getaffinity(this).context("read the thread's CPUs")?;
        let allowed = |cpu: &usize| old.is_set(*cpu).unwrap_or(false);
        let mut cpus = 0..nix::sched::CpuSet::count();
        let cpu = if last {
            cpus.rev().find(allowed)
        } else {
            cpus.find(allowed)
        }
        .context("the thread may run on no CPU")?;
        let mut one = nix::sched::CpuSet::new();
        one.set(cpu).context("a CPU number within the set")?;
        nix::sched::sched_setaffinity(this, &one).context("pin the thread")?;
        Ok(Self { old, cpu })
    }

    /// The CPU the thread is pinned to: the one whose per-CPU map values its test runs use.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.old);
    }
}

/// The non-zero slots of `cpu`'s range of the admission array (`APIFW_ADMISSION`,
/// `firewall_common::admission`) in `firewall`, as `Model::admission` keeps them.
pub fn admission_slots(
    firewall: &firewall_userspace::Firewall,
    cpu: usize,
) -> std::collections::HashMap<u32, u64> {
    use firewall_common::admission::ADMISSION_SLOTS;
    let name = firewall_common::map_names::ADMISSION;
    let map = firewall
        .map(name)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let slots: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).unwrap_or_else(|err| panic!("{name}: {err}"));
    let first = u32::try_from(cpu).expect("CPU index") * ADMISSION_SLOTS;
    (0..ADMISSION_SLOTS)
        .filter_map(|slot| {
            let value = slots
                .get(&(first + slot), 0)
                .unwrap_or_else(|err| panic!("{name}[{}]: {err}", first + slot));
            (value != 0).then_some((slot, value))
        })
        .collect()
}

/// The non-zero entries of the tracked filter (`APIFW_TRACKED`, `firewall_common::tracked`) in
/// `firewall`, as `Model::tracked` keeps them.
pub fn tracked_entries(
    firewall: &firewall_userspace::Firewall,
) -> std::collections::HashMap<u32, firewall_common::tracked::TrackedEntry> {
    let name = firewall_common::map_names::TRACKED;
    let map = firewall
        .map(name)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let entries: aya::maps::Array<_, firewall_common::tracked::TrackedEntry> =
        aya::maps::Array::try_from(map).unwrap_or_else(|err| panic!("{name}: {err}"));
    entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| {
            let entry = entry.unwrap_or_else(|err| panic!("{name}[{index}]: {err}"));
            (entry != firewall_common::tracked::TrackedEntry::default())
                .then_some((index as u32, entry))
        })
        .collect()
}

/// Every entry of the hash map `name` (plain or LRU) in `firewall`.
pub fn kernel_map<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    firewall: &firewall_userspace::Firewall,
    name: &'static str,
) -> std::collections::HashMap<K, V> {
    let map = firewall
        .map(name)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let map: aya::maps::HashMap<_, K, V> =
        aya::maps::HashMap::try_from(map).unwrap_or_else(|err| panic!("{name}: {err}"));
    map.iter()
        .map(|entry| entry.unwrap_or_else(|err| panic!("{name}: {err}")))
        .collect()
}

/// A directory of bpffs (`/sys/fs/bpf/apifw-<purpose>-<pid>-<n>`) for a test's or a benchmark's
/// pins, removed with its pins when dropped. Unpinning leaves the objects alive while file
/// descriptors hold them. Unique per process and call, so parallel tests never share one.
pub struct BpffsDir {
    path: std::path::PathBuf,
}

impl BpffsDir {
    /// Creates the directory for `purpose` (a short name without slashes).
    pub fn create(purpose: &str) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/apifw-{purpose}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("create {} (bpffs mounted? root?)", path.display()))?;
        Ok(Self { path })
    }

    /// The path of `name` inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The kernel object behind an aya map handle, for the map types apifw and its test programs
/// use; `None` for others.
pub fn map_data(map: &aya::maps::Map) -> Option<&aya::maps::MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::ProgramArray(data)
        | Map::RingBuf(data) => Some(data),
        _ => None,
    }
}
