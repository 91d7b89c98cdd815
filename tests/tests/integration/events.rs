//! Drop events: the kernel's per-CPU cap is exact (BPF_PROG_TEST_RUN with the test clock), and
//! under a real flood the daemon's counters stay under the cap while the excess is counted, the
//! ring buffer is drained and the offender view names the flooding source.
//!
//! Needs root. The flood test builds its own namespaces, interfaces and pin paths.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::VethLab,
    packets,
    traffic::{Flood, scrape, send},
};
use aya::{
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunOptions},
};
use firewall_common::{
    Reason,
    events::{DropEvent, EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED},
    map_names, program_names,
    ratelimit::{TICKS_PER_SECOND, ticks},
};
use firewall_userspace::{Firewall, Loaded, compile::per_cpu_event_bucket};

/// Keeps the calling thread on one CPU until dropped: `BPF_PROG_TEST_RUN` may reschedule
/// between repeats, and the event limiter is per CPU.
struct OnOneCpu {
    allowed: nix::sched::CpuSet,
}

impl OnOneCpu {
    fn new() -> Self {
        use nix::{sched, unistd::Pid};
        let allowed = sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
        let cpu = (0..sched::CpuSet::count())
            .find(|cpu| allowed.is_set(*cpu).unwrap_or(false))
            .expect("some CPU is allowed");
        let mut one = sched::CpuSet::new();
        one.set(cpu).expect("cpu set");
        sched::sched_setaffinity(Pid::from_raw(0), &one).expect("sched_setaffinity");
        Self { allowed }
    }
}

impl Drop for OnOneCpu {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.allowed);
    }
}

/// (emitted, suppressed, lost), summed over CPUs.
fn event_stats(firewall: &Firewall) -> (u64, u64, u64) {
    let map = firewall
        .map(map_names::EVENT_STATS)
        .expect("APIFW_EVENT_STATS");
    let stats = PerCpuArray::<_, u64>::try_from(map).expect("a PerCpuArray<u64>");
    let sum = |index: u32| {
        stats
            .get(&index, 0)
            .expect("read event stats")
            .iter()
            .sum::<u64>()
    };
    (
        sum(EVENTS_EMITTED),
        sum(EVENTS_SUPPRESSED),
        sum(EVENTS_LOST),
    )
}

/// Runs the firewall program `repeat` times on `frame`; it must drop.
fn run(firewall: &mut Firewall, frame: &[u8], repeat: u32) {
    let program = firewall
        .program_mut(program_names::FIREWALL)
        .expect("firewall program");
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|err| panic!("BPF_PROG_TEST_RUN: {err}"));
    assert_eq!(result.return_value, 1, "XDP_DROP");
}

/// Drains the ring buffer, checking each event against the frame; returns how many there were.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, want: &DropEvent) -> u64 {
    let mut count = 0;
    while let Some(item) = ring.next() {
        assert_eq!(
            item.len(),
            size_of::<DropEvent>(),
            "one DropEvent per record"
        );
        // SAFETY: the record holds one DropEvent (length checked above); read unaligned.
        let event: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        assert_eq!(&event, want, "event {count}");
        count += 1;
    }
    count
}

#[test]
fn the_kernel_caps_events_exactly() {
    const PER_SECOND: u32 = 500;
    const BURST: u32 = 2000;
    const REPEAT: u32 = 20_000;
    const START_NS: u64 = 1_000 * 1_000_000_000;
    let _pinned = OnOneCpu::new();
    let cpus = u32::try_from(aya::util::nr_cpus().expect("nr_cpus")).expect("cpus");
    let text = format!(
        "[block]\ncidrs = [\"198.51.100.0/24\"]\n\
         [events]\nmax_per_second = {PER_SECOND}\nburst = {BURST}\n"
    );
    let policy = Loaded::from_str(Path::new("events.toml"), &text)
        .unwrap_or_else(|err| panic!("{err}"))
        .policy;
    let mut firewall = Firewall::load(&policy).expect("load firewall");
    let mut ring = firewall.take_events().expect("the drop-event ring buffer");

    // What one CPU's bucket allows (the same computation the policy compiler makes). `charge`
    // never costs more than a second per event.
    let bucket = per_cpu_event_bucket(PER_SECOND, BURST, cpus);
    let interval = bucket.interval.min(TICKS_PER_SECOND);
    let per_cpu_burst = (BURST / cpus).max(1);
    let at_once = bucket.tolerance / interval;
    if bucket.interval <= TICKS_PER_SECOND {
        assert_eq!(at_once, u64::from(per_cpu_burst), "{bucket:?}");
    }
    // One second later: the bucket has refilled by a second's worth, at most up to the burst.
    let tat = ticks(START_NS) + at_once * interval;
    let later = ticks(START_NS) + TICKS_PER_SECOND;
    let lead = tat.saturating_sub(later);
    let per_second = bucket.tolerance.saturating_sub(lead) / interval;
    assert_eq!(per_second, at_once.min(TICKS_PER_SECOND / interval));
    assert!(
        u64::from(REPEAT) > 4 * at_once,
        "the runs must overrun the burst"
    );
    // The ring buffer must hold them all, or they would count as lost.
    let record = (size_of::<DropEvent>() as u64).next_multiple_of(8) + 8;
    assert!(
        at_once * record < u64::from(firewall_common::events::RING_BYTES),
        "{at_once} events do not fit the ring buffer"
    );

    let src = Ipv4Addr::new(198, 51, 100, 7);
    let frame = packets::udp_frame(IpAddr::V4(src));
    let mut want = DropEvent {
        time_ns: START_NS,
        family: 4,
        reason: Reason::Blocklist as u8,
        rule: u32::MAX,
        // BPF_PROG_TEST_RUN without a context runs on the loopback device of the caller's
        // namespace, ifindex 1.
        ifindex: 1,
        len: frame.len() as u32,
        ..DropEvent::default()
    };
    want.addr[..4].copy_from_slice(&src.octets());

    eprintln!("{cpus} CPUs, {bucket:?}: {at_once} events at once, {per_second} a second later");
    firewall.set_test_clock(START_NS).expect("set clock");
    run(&mut firewall, &frame, REPEAT);
    let repeat = u64::from(REPEAT);
    assert_eq!(
        event_stats(&firewall),
        (at_once, repeat - at_once, 0),
        "(emitted, suppressed, lost) after {REPEAT} drops at one instant, {cpus} CPUs, {bucket:?}"
    );
    assert_eq!(
        drain(&mut ring, &want),
        at_once,
        "the ring buffer holds exactly the emitted events"
    );
    let dropped = firewall
        .stats()
        .expect("counters")
        .get(firewall_common::Action::Drop, Reason::Blocklist);
    assert_eq!(
        (dropped.packets, dropped.bytes),
        (repeat, repeat * frame.len() as u64)
    );

    firewall
        .set_test_clock(START_NS + 1_000_000_000)
        .expect("set clock");
    want.time_ns = START_NS + 1_000_000_000;
    run(&mut firewall, &frame, REPEAT);
    let emitted = at_once + per_second;
    assert_eq!(
        event_stats(&firewall),
        (emitted, 2 * repeat - emitted, 0),
        "one second later: exactly a second's share ({per_second}) more"
    );
    assert_eq!(drain(&mut ring, &want), per_second);

    // Same instant again: nothing left.
    run(&mut firewall, &frame, REPEAT);
    assert_eq!(event_stats(&firewall), (emitted, 3 * repeat - emitted, 0));
    assert_eq!(drain(&mut ring, &want), 0);
}

const EVENTS: &str = "apifw_events_total";
const SUPPRESSED: &str = "apifw_events_suppressed_total";
const LOST: &str = "apifw_events_lost_total";

#[test]
fn under_a_flood_events_stay_under_the_cap_and_suppressed_grows() {
    const PER_SECOND: u32 = 50;
    const BURST: u32 = 50;
    const FLOODER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
    let cpus = firewall_userspace::compile::possible_cpus();
    let bucket = per_cpu_event_bucket(PER_SECOND, BURST, cpus);
    let interval = bucket.interval.min(TICKS_PER_SECOND);
    // Events all CPUs together may emit within `elapsed`: on one CPU, n events in a window of
    // length w move its TAT by n intervals past the window's start, and the last one conformed,
    // so n * interval <= w + tolerance.
    let cap = |elapsed: Duration| {
        u64::from(cpus) * ((ticks(elapsed.as_nanos() as u64) + bucket.tolerance) / interval)
    };

    let lab = VethLab::new("evf", &[FLOODER, OTHER]);
    let dirs = Dirs::new("evf");
    dirs.write_policy(&format!(
        "[block]\ncidrs = [\"198.51.100.0/24\"]\n\
         [events]\nmax_per_second = {PER_SECOND}\nburst = {BURST}\nlog = false\n"
    ));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);

    // A few drops from another source first, fewer than any CPU's burst: each is reported.
    let others = u64::from((BURST / cpus).max(1)).min(5);
    send(&lab, OTHER, others as usize);
    let deadline = Instant::now() + Duration::from_secs(20);
    while scrape(&lab.server).counter(EVENTS, &[]) < others && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(scrape(&lab.server).counter(EVENTS, &[]), others);

    let flood = Flood::start(&lab, &[FLOODER]);
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let first = scrape(&lab.server);
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape(&lab.server);
    let elapsed = start.elapsed();
    let sent = flood.stop();
    assert!(sent > 1000, "the flood ran ({sent} datagrams)");

    let grown = |name: &str| {
        let (before, after) = (first.counter(name, &[]), second.counter(name, &[]));
        after
            .checked_sub(before)
            .unwrap_or_else(|| panic!("{name} went backwards: {before} then {after}"))
    };
    let (events, suppressed) = (grown(EVENTS), grown(SUPPRESSED));
    eprintln!(
        "{sent} datagrams; over at most {elapsed:?}: {events} events (cap {}), {suppressed} \
         suppressed",
        cap(elapsed)
    );
    assert!(
        events <= cap(elapsed),
        "{events} events in at most {elapsed:?}: more than the cap of {} ({cpus} CPUs, {bucket:?})",
        cap(elapsed)
    );
    assert!(events > 0, "events still flow under the flood");
    assert!(suppressed > 0, "the excess is counted as suppressed");
    assert_eq!(second.counter(LOST, &[]), 0, "the daemon drains the ring");
    // Once the flood has drained (a scrape is not atomic: the counters are read one after the
    // other), every packet dropped was reported, suppressed or lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut settled = scrape(&lab.server);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let next = scrape(&lab.server);
        let same = next.samples == settled.samples;
        settled = next;
        if same || Instant::now() > deadline {
            break;
        }
    }
    let dropped = settled.counter(
        "apifw_packets_total",
        &[("action", "drop"), ("reason", "blocklist")],
    );
    assert_eq!(
        dropped,
        settled.counter(EVENTS, &[])
            + settled.counter(SUPPRESSED, &[])
            + settled.counter(LOST, &[]),
        "every dropped packet is either reported, suppressed or lost:\n{}",
        settled.text
    );
    assert_eq!(settled.counter(LOST, &[]), 0, "{}", settled.text);

    // The offender view: `apifw top --once --json`. Every event emitted reaches the daemon, so
    // once the flood is over its tallies add up to the kernel's count.
    let total_events = |view: &serde_json::Value| {
        view["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .map(|row| row["events"].as_u64().expect("events"))
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (view, emitted) = loop {
        let frame = dirs.cli_json(&["top", "--once"]);
        let emitted = frame["events"]["emitted"].as_u64().expect("events.emitted");
        let view = frame["top"].clone();
        if total_events(&view) == emitted || Instant::now() > deadline {
            break (view, emitted);
        }
    };
    assert_eq!(
        total_events(&view),
        emitted,
        "the daemon tallied every emitted event: {view:#}"
    );
    assert_eq!(
        emitted,
        scrape(&lab.server).counter(EVENTS, &[]),
        "`apifw top` and /metrics agree"
    );
    let sources = view["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2, "{view:#}");
    assert_eq!(sources[0]["prefix"], "198.51.100.10/32", "{view:#}");
    assert_eq!(sources[0]["last_reason"], "blocklist", "{view:#}");
    assert_eq!(sources[1]["prefix"], "198.51.100.77/32", "{view:#}");
    assert_eq!(sources[1]["events"], others, "{view:#}");
    assert_eq!(view["subnets"][0]["prefix"], "198.51.100.0/24", "{view:#}");
    assert_eq!(view["subnets"][0]["events"], emitted, "{view:#}");
}
