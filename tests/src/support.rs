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
    /// Pins the calling thread to the first CPU it may run on.
    pub fn pin() -> Self {
        let this = nix::unistd::Pid::from_raw(0);
        let old = nix::sched::sched_getaffinity(this).expect("read the thread's CPUs");
        let first = (0..nix::sched::CpuSet::count())
            .find(|cpu| old.is_set(*cpu).unwrap_or(false))
            .expect("the thread may run on some CPU");
        let mut one = nix::sched::CpuSet::new();
        one.set(first).expect("a CPU number within the set");
        nix::sched::sched_setaffinity(this, &one).expect("pin the thread");
        Self { old, cpu: first }
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

/// The non-zero slots of `cpu`'s admission array (`APIFW_ADMISSION`,
/// `firewall_common::admission`) in `firewall`, as `Model::admission` keeps them.
pub fn admission_slots(
    firewall: &firewall_userspace::Firewall,
    cpu: usize,
) -> std::collections::HashMap<u32, u64> {
    let name = firewall_common::map_names::ADMISSION;
    let map = firewall
        .map(name)
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    let slots: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(map).unwrap_or_else(|err| panic!("{name}: {err}"));
    (0..slots.len())
        .filter_map(|slot| {
            let values = slots
                .get(&slot, 0)
                .unwrap_or_else(|err| panic!("{name}[{slot}]: {err}"));
            let value = values[cpu];
            (value != 0).then_some((slot, value))
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
