//! The in-kernel flood generator: `BPF_PROG_RUN` of `apifw_flood_gen` in live-frames mode, on a
//! thread of its own pinned to one CPU.
//!
//! With `BPF_F_TEST_XDP_LIVE_FRAMES` the kernel runs the program on `repeat` frames built from
//! `data_in` (in batches, from a page pool) and carries out its verdicts: `XDP_TX` transmits the
//! frame out of the `ingress_ifindex` given in the `xdp_md` context. The kernel resolves that
//! ifindex in the network namespace of the calling thread, so the thread enters the
//! generator's namespace for each flood (and leaves it afterwards, so that a deleted namespace
//! is not kept alive by it).

use std::{
    fs::File,
    path::PathBuf,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions},
};

use crate::programs::{TestPrograms, map_names, program_names};

/// Frames per `BPF_PROG_RUN` call: tens of milliseconds at the rates seen here, so a flood
/// ends close to its planned duration.
const FRAMES_PER_CALL: u32 = 1 << 18;
/// Frames the kernel runs through the program before it transmits them (its default).
const BATCH: u32 = 64;

/// One flood to send.
struct Job {
    /// The generator's namespace.
    netns: PathBuf,
    /// The veth end to send from, in that namespace.
    ifindex: u32,
    frame: Vec<u8>,
    /// Low source bits to vary (see `apifw_test_ebpf::map_names::FLOOD_CONFIG`).
    source_bits: u32,
    duration: Duration,
    /// Send one frame in this many (the others are dropped in the generator), 1 for all.
    send_every: u32,
    /// Rewrite the frame's headers ([`restored_bytes`]) from the template before each send
    /// (see [`Generator::restoring_template`]).
    restore: bool,
}

/// How much of `frame` the generator writes back into each frame when asked to: its Ethernet,
/// IP (IPv4 without options, or IPv6 without extension headers) and TCP header without
/// options; 0 for a frame shorter than that.
pub fn restored_bytes(frame: &[u8]) -> usize {
    let ipv6 = frame.get(12..14) == Some(&[0x86, 0xdd]);
    let bytes = if ipv6 { 14 + 40 + 20 } else { 14 + 20 + 20 };
    if frame.len() >= bytes { bytes } else { 0 }
}

/// What one flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    /// Frames the program ran on (and sent, unless the device refused them).
    pub frames: u64,
    /// Wall time of the flood.
    pub seconds: f64,
    /// CPU time of the generator thread during the flood, ns.
    pub cpu_ns: u64,
}

/// The generator thread; stops when dropped.
pub struct Generator {
    /// Whether floods restore the template in every frame ([`Generator::restoring_template`]).
    restore: bool,
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<anyhow::Result<Sent>>,
    thread: Option<JoinHandle<()>>,
}

impl Generator {
    /// Loads the generator program and starts its thread, pinned to `cpu`.
    pub fn start(cpu: usize) -> anyhow::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (result_tx, results) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("apfl-generator".into())
            .spawn(move || {
                let mut state = match Worker::new(cpu) {
                    Ok(state) => {
                        let _ = ready_tx.send(Ok(()));
                        state
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                for job in job_rx {
                    let result = state.flood(&job);
                    if result_tx.send(result).is_err() {
                        return;
                    }
                }
            })
            .context("spawn the generator thread")?;
        ready_rx
            .recv()
            .context("the generator thread died while starting")??;
        Ok(Self {
            restore: false,
            jobs: Some(jobs),
            results,
            thread: Some(thread),
        })
    }

    /// Floods from `ifindex` in the namespace `netns` for `duration`, from the first
    /// 2^`source_bits` addresses of 198.18.0.0/15.
    pub fn flood(
        &self,
        netns: PathBuf,
        ifindex: u32,
        frame: &[u8],
        source_bits: u32,
        duration: Duration,
    ) -> anyhow::Result<Sent> {
        self.flood_thinned(netns, ifindex, frame, source_bits, duration, 1)
    }

    /// Like [`Generator::flood`], but sends only one burst of 64 consecutive frames in
    /// `send_every` (the generator drops the others before they leave): a slower flood, in
    /// batches as a NIC's interrupt moderation delivers them. A `BPF_PROG_RUN` call cannot be
    /// paced from outside without sending its 2^18 frames in one burst, and small calls cost a
    /// page pool each. [`Sent::frames`] counts every frame the program ran on, sent or not.
    pub fn flood_thinned(
        &self,
        netns: PathBuf,
        ifindex: u32,
        frame: &[u8],
        source_bits: u32,
        duration: Duration,
        send_every: u32,
    ) -> anyhow::Result<Sent> {
        self.flood_job(
            netns,
            ifindex,
            frame,
            source_bits,
            duration,
            send_every,
            self.restore,
        )
    }

    /// Makes the floods that follow write the template's headers ([`restored_bytes`]) back into
    /// every frame before rewriting its source. The kernel's live-frames mode reuses its pages
    /// without rewriting them, so a frame that the receiver's XDP program rewrote in place and
    /// sent back (a SYN turned into a cookie SYN-ACK by `XDP_TX`: veth hands the page itself)
    /// would otherwise leave again as a SYN-ACK. Costs a 54- or 74-byte copy per frame, so off
    /// unless a receiver rewrites frames.
    pub fn restoring_template(&mut self, on: bool) {
        self.restore = on;
    }

    #[expect(clippy::too_many_arguments, reason = "one job's fields")]
    fn flood_job(
        &self,
        netns: PathBuf,
        ifindex: u32,
        frame: &[u8],
        source_bits: u32,
        duration: Duration,
        send_every: u32,
        restore: bool,
    ) -> anyhow::Result<Sent> {
        let job = Job {
            netns,
            ifindex,
            frame: frame.to_vec(),
            source_bits,
            duration,
            send_every: send_every.max(1),
            restore,
        };
        self.jobs
            .as_ref()
            .context("generator stopped")?
            .send(job)
            .context("the generator thread is gone")?;
        self.results
            .recv()
            .context("the generator thread is gone")?
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the generator thread holds.
struct Worker {
    programs: TestPrograms,
    /// The namespace the thread started in, to return to after each flood.
    home: File,
}

impl Worker {
    fn new(cpu: usize) -> anyhow::Result<Self> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pin the generator to CPU {cpu}"))?;
        crate::support::raise_priority(0)?;
        let mut programs = TestPrograms::load()?;
        programs
            .program_mut(program_names::FLOOD_GEN)
            .context("load the flood generator")?;
        let home = File::open("/proc/thread-self/ns/net").context("open own network namespace")?;
        Ok(Self { programs, home })
    }

    fn flood(&mut self, job: &Job) -> anyhow::Result<Sent> {
        let netns =
            File::open(&job.netns).with_context(|| format!("open {}", job.netns.display()))?;
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter {}", job.netns.display()))?;
        let result = self.send(job);
        nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("return to the original network namespace")?;
        result
    }

    fn send(&mut self, job: &Job) -> anyhow::Result<Sent> {
        let size = u32::try_from(job.frame.len())?;
        let ctx = xdp_md(job.ifindex, size);
        let mut config: Array<_, u32> =
            Array::try_from(self.programs.map_mut(map_names::FLOOD_CONFIG)?)?;
        config
            .set(map_names::FLOOD_CONFIG_SOURCE_BITS, job.source_bits, 0)
            .context("configure the generator")?;
        config
            .set(map_names::FLOOD_CONFIG_SEND_EVERY, job.send_every, 0)
            .context("configure the generator")?;
        let restore = if job.restore {
            restored_bytes(&job.frame)
        } else {
            0
        };
        config
            .set(map_names::FLOOD_CONFIG_RESTORE, u32::try_from(restore)?, 0)
            .context("configure the generator")?;
        if restore != 0 {
            let mut template = [0u8; map_names::FLOOD_TEMPLATE_BYTES];
            template[..restore].copy_from_slice(&job.frame[..restore]);
            let mut templates: Array<_, [u8; map_names::FLOOD_TEMPLATE_BYTES]> =
                Array::try_from(self.programs.map_mut(map_names::FLOOD_TEMPLATE)?)?;
            templates
                .set(0, template, 0)
                .context("give the generator its template")?;
        }
        let program = self.programs.program_mut(program_names::FLOOD_GEN)?;
        let cpu_before = thread_cpu_ns();
        let started = Instant::now();
        let mut frames = 0u64;
        while started.elapsed() < job.duration {
            let run = program.test_run(TestRunOptions {
                data_in: Some(&job.frame),
                ctx_in: Some(&ctx),
                repeat: FRAMES_PER_CALL,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::default()
            });
            match run {
                Ok(_) => frames += u64::from(FRAMES_PER_CALL),
                // A signal for the process (a child exiting) may land on this thread: the kernel
                // then stops the run early, after an unknown part of its frames. Go on; the
                // count misses at most that part.
                Err(aya::programs::ProgramError::SyscallError(err))
                    if err.io_error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err).context("BPF_PROG_RUN with live frames"),
            }
        }
        Ok(Sent {
            frames,
            seconds: started.elapsed().as_secs_f64(),
            cpu_ns: thread_cpu_ns().saturating_sub(cpu_before),
        })
    }
}

/// `struct xdp_md` for `BPF_PROG_RUN`: `data` 0 (no metadata), `data_end` the frame's size (the
/// kernel requires it), `data_meta` 0, `ingress_ifindex`, `rx_queue_index` 0, `egress_ifindex` 0.
fn xdp_md(ifindex: u32, size: u32) -> Vec<u8> {
    [0, size, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect()
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(time.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_md_layout() {
        let ctx = xdp_md(7, 60);
        assert_eq!(ctx.len(), 24);
        assert_eq!(&ctx[4..8], &60u32.to_ne_bytes());
        assert_eq!(&ctx[12..16], &7u32.to_ne_bytes());
    }
}
