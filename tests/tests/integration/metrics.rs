//! The Prometheus endpoint end to end: the real daemon in a namespace lab, real traffic, its
//! `/metrics` scraped over HTTP and checked by `promtool`, scraped by a real Prometheus, and its
//! kernel counters kept across a `kill -9` and restart.
//!
//! Needs root, and Prometheus' `promtool` and `prometheus` in /usr/bin. Every test builds its own
//! namespaces, interfaces and pin paths; the metrics port is the default one, in each test's own
//! server namespace.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::{Netns, VethLab},
    traffic::{Exposition, METRICS_ADDR, Receiver, http_get, scrape, send, url_encode},
};
use nix::sys::signal::Signal;

const PACKETS: &str = "apifw_packets_total";
const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const UNLISTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// Scrapes until `done` holds (packets cross the veth asynchronously), for at most 20 s; returns
/// the last scrape either way, for the caller's exact assertions.
fn scrape_until(netns: &Netns, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(netns);
        if done(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes of the frames [`send`] builds for datagrams `0..count`: Ethernet, IPv4 and UDP headers
/// and the payload `packet {i}`.
fn frame_bytes(count: usize) -> u64 {
    (0..count)
        .map(|i| (14 + 20 + 8 + format!("packet {i}").len()) as u64)
        .sum()
}

fn drop_blocklist(interface: &str) -> [(&str, &str); 3] {
    [
        ("interface", interface),
        ("action", "drop"),
        ("reason", "blocklist"),
    ]
}

#[test]
fn promtool_accepts_a_live_scrape() {
    let cpus = firewall_userspace::compile::possible_cpus();
    let lab = VethLab::new("mpt", &[BLOCKED, UNLISTED]);
    let dirs = Dirs::new("mpt");
    // A burst large enough that every CPU may report all 20 drops: the events count is exact.
    dirs.write_policy(&format!(
        r#"
[block]
cidrs = ["198.51.100.0/24"]
[[rule]]
name = "api"
protocol = "udp"
ports = [7100]
per_source = {{ packets_per_second = 1000 }}
[events]
max_per_second = 100
burst = {}
"#,
        20 * cpus
    ));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    send(&lab, BLOCKED, 20);
    send(&lab, UNLISTED, 7);
    let interface = lab.server_if.as_str();
    let passed = [
        ("interface", interface),
        ("action", "pass"),
        ("reason", "default"),
    ];
    let metrics = scrape_until(&lab.server, |m| {
        m.counter(PACKETS, &drop_blocklist(interface)) >= 20
            && m.counter(PACKETS, &passed) >= 7
            && m.counter("apifw_events_total", &[]) >= 20
    });
    let text = &metrics.text;
    assert_eq!(
        metrics.counter(PACKETS, &drop_blocklist(interface)),
        20,
        "{text}"
    );
    assert_eq!(
        metrics.counter("apifw_bytes_total", &drop_blocklist(interface)),
        frame_bytes(20),
        "{text}"
    );
    assert_eq!(metrics.counter(PACKETS, &passed), 7, "{text}");
    assert_eq!(
        metrics.counter(
            "apifw_rule_packets_total",
            &[("rule", "api"), ("outcome", "passed")]
        ),
        7,
        "{text}"
    );
    let total: f64 = metrics.matching(PACKETS, &[]).map(|s| s.value).sum();
    assert_eq!(total, 27.0, "no other packet was counted: {text}");
    assert!(
        metrics
            .matching(PACKETS, &[])
            .all(|s| s.labels.get("interface").map(String::as_str) == Some(interface)),
        "every packet counted under the lab's interface: {text}"
    );
    assert_eq!(metrics.counter("apifw_events_total", &[]), 20, "{text}");
    assert_eq!(
        metrics.counter("apifw_events_suppressed_total", &[]),
        0,
        "{text}"
    );
    assert_eq!(metrics.counter("apifw_events_lost_total", &[]), 0, "{text}");
    assert_eq!(
        metrics.get("apifw_list_entries", &[("list", "block")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metrics.get(
            "apifw_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    let status = dirs.cli_json(&["status"]);
    assert_eq!(
        metrics.get("apifw_policy_version", &[]),
        status["policy_version"].as_f64(),
        "{status}\n{text}"
    );
    assert_eq!((receiver.from(BLOCKED), receiver.from(UNLISTED)), (0, 7));

    // One control request moves its counter by exactly one.
    let requests = |m: &Exposition| {
        m.counter(
            "apifw_control_requests_total",
            &[("verb", "block.list"), ("result", "ok")],
        )
    };
    let before = requests(&metrics);
    dirs.cli_json(&["block", "list"]);
    let after = scrape(&lab.server);
    assert_eq!(requests(&after), before + 1, "{}", after.text);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(after.text.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    eprintln!(
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- the scrape:\n{}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        after.text
    );

    // A client asking for OpenMetrics gets it, with the same samples.
    let open = http_get(
        &lab.server,
        METRICS_ADDR,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .expect("OpenMetrics scrape");
    assert_eq!(open.status, 200);
    assert!(
        open.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/openmetrics-text")),
        "{:?}",
        open.headers
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    let open = Exposition::parse(&open.body);
    assert_eq!(open.counter(PACKETS, &drop_blocklist(interface)), 20);
}

/// A Prometheus server inside a namespace, killed on drop.
struct Prometheus {
    child: Child,
    log: PathBuf,
    address: SocketAddr,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` in `netns`, scraping `target` every second, with its
    /// configuration, data and log under `dir`.
    fn start(netns: &Netns, dir: &std::path::Path, target: SocketAddr) -> Self {
        let address = SocketAddr::from(([127, 0, 0, 1], 9090));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: apifw\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn nsenter prometheus");
        Self {
            child,
            log,
            address,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=QUERY`: the answer's JSON, or why there is none.
    fn query(&self, netns: &Netns, query: &str) -> Result<serde_json::Value, String> {
        let target = format!("/api/v1/query?query={}", url_encode(query));
        let response =
            http_get(netns, self.address, &target, &[]).map_err(|err| format!("{err}"))?;
        if response.status != 200 {
            return Err(format!("HTTP {}: {}", response.status, response.body));
        }
        serde_json::from_str(&response.body).map_err(|err| format!("{err}: {}", response.body))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the single series an instant query returned.
fn single_value(answer: &serde_json::Value) -> Option<(serde_json::Value, String)> {
    let result = answer["data"]["result"].as_array()?;
    match result.as_slice() {
        [series] => Some((
            series["metric"].clone(),
            series["value"][1].as_str()?.to_owned(),
        )),
        _ => None,
    }
}

#[test]
fn a_real_prometheus_scrapes_the_drop_counters() {
    const N: usize = 25;
    const M: usize = 9;
    let lab = VethLab::new("mpr", &[BLOCKED, ALLOWED]);
    let dirs = Dirs::new("mpr");
    dirs.write_policy(
        "[block]\ncidrs = [\"198.51.100.0/24\"]\n[allow]\ncidrs = [\"203.0.113.0/24\"]\n",
    );
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let prometheus = Prometheus::start(&lab.server, &dirs.run_dir, METRICS_ADDR);
    send(&lab, ALLOWED, M);
    send(&lab, BLOCKED, N);
    let interface = lab.server_if.as_str();
    let allowed = [
        ("interface", interface),
        ("action", "pass"),
        ("reason", "allowlist"),
    ];
    // The daemon's own view first: every datagram is counted before Prometheus is asked.
    let metrics = scrape_until(&lab.server, |m| {
        m.counter(PACKETS, &drop_blocklist(interface)) >= N as u64
            && m.counter(PACKETS, &allowed) >= M as u64
    });
    assert_eq!(
        (
            metrics.counter(PACKETS, &drop_blocklist(interface)),
            metrics.counter(PACKETS, &allowed)
        ),
        (N as u64, M as u64),
        "{}",
        metrics.text
    );

    let dropped = r#"apifw_packets_total{action="drop",reason="blocklist"}"#;
    let passed = r#"apifw_packets_total{action="pass",reason="allowlist"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (metric, value) = loop {
        let last = match prometheus.query(&lab.server, dropped) {
            Ok(answer) => {
                if let Some((metric, value)) = single_value(&answer)
                    && value == N.to_string()
                {
                    break (metric, value);
                }
                answer.to_string()
            }
            Err(err) => err,
        };
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned {N} for {dropped} within 60 s; last answer: {last}\n\
             up: {:?}\n--- prometheus log:\n{}",
            prometheus.query(&lab.server, "up"),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value, N.to_string());
    assert_eq!(metric["interface"], interface, "{metric}");
    assert_eq!(metric["job"], "apifw", "{metric}");
    assert_eq!(metric["instance"], METRICS_ADDR.to_string(), "{metric}");

    let answer = prometheus
        .query(&lab.server, passed)
        .unwrap_or_else(|err| panic!("{passed}: {err}"));
    let (metric, value) =
        single_value(&answer).unwrap_or_else(|| panic!("one series for {passed}: {answer}"));
    assert_eq!(value, M.to_string(), "{answer}");
    assert_eq!(metric["interface"], interface, "{metric}");
    let up = prometheus
        .query(&lab.server, r#"up{job="apifw"}"#)
        .expect("query up");
    assert_eq!(
        single_value(&up).map(|(_, value)| value),
        Some("1".to_owned()),
        "{up}"
    );
}

/// Families backed by kernel counters in pinned maps: they survive the daemon.
const KERNEL_COUNTERS: [&str; 7] = [
    "apifw_packets_total",
    "apifw_bytes_total",
    "apifw_rule_packets_total",
    "apifw_rule_bytes_total",
    "apifw_events_total",
    "apifw_events_suppressed_total",
    "apifw_events_lost_total",
];

#[test]
fn counters_never_go_backwards_across_a_restart() {
    let lab = VethLab::new("mrs", &[BLOCKED, UNLISTED]);
    let dirs = Dirs::new("mrs");
    dirs.write_policy(
        r#"
[block]
cidrs = ["198.51.100.0/24"]
[[rule]]
name = "api"
protocol = "udp"
ports = [7100]
per_source = { packets_per_second = 1000 }
"#,
    );
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let interface = lab.server_if.clone();
    let blocked = move |m: &Exposition| m.counter(PACKETS, &drop_blocklist(&interface));
    send(&lab, BLOCKED, 15);
    send(&lab, UNLISTED, 4);
    let before = scrape_until(&lab.server, |m| {
        blocked(m) >= 15 && m.matching(PACKETS, &[]).map(|s| s.value).sum::<f64>() >= 19.0
    });
    assert_eq!(blocked(&before), 15, "{}", before.text);

    let (status, _) = daemon.stop(Signal::SIGKILL);
    assert!(!status.success());
    // Enforcement and counting go on while no daemon runs.
    send(&lab, BLOCKED, 3);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    send(&lab, BLOCKED, 11);
    let after = scrape_until(&lab.server, |m| blocked(m) >= 15 + 3 + 11);
    assert_eq!(
        blocked(&after),
        blocked(&before) + 3 + 11,
        "grew by exactly the datagrams sent after the kill:\n{}",
        after.text
    );
    for family in KERNEL_COUNTERS {
        for sample in before.matching(family, &[]) {
            let labels: Vec<(&str, &str)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let now = after.get(family, &labels).unwrap_or_else(|| {
                panic!(
                    "{family}{labels:?} vanished after the restart:\n{}",
                    after.text
                )
            });
            assert!(
                now >= sample.value,
                "{family}{labels:?} went backwards: {} before, {now} after",
                sample.value
            );
        }
    }
    assert!(
        before.matching(PACKETS, &[]).count() >= 2,
        "both verdicts were there to compare: {}",
        before.text
    );
}

/// The kernel's BPF run statistics, on while this lives: a `BPF_ENABLE_STATS` descriptor (the
/// kernel counts while any is open), so the test needs no write to the host's
/// `kernel.bpf_stats_enabled`.
struct BpfStats(
    #[expect(
        dead_code,
        reason = "held, not read: closing it turns the statistics off"
    )]
    std::os::fd::OwnedFd,
);

impl BpfStats {
    fn enable() -> Self {
        // union bpf_attr for BPF_ENABLE_STATS: `type` (u32), BPF_STATS_RUN_TIME = 0.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        let attr = [0u32; 4];
        // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of `attr`, which lives across the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        assert!(
            fd >= 0,
            "BPF_ENABLE_STATS: {}",
            std::io::Error::last_os_error()
        );
        let fd = i32::try_from(fd).expect("a file descriptor fits an i32");
        // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
        Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }
}

/// With the kernel's BPF statistics on, `apifw status` and the metrics give the program's own
/// cost: runs that cover the packets sent, a time, and their ratio.
#[test]
fn status_and_metrics_give_the_programs_own_cost() {
    let lab = VethLab::new("mcost", &[BLOCKED, UNLISTED]);
    let dirs = Dirs::new("mcost");
    dirs.write_policy("[block]\ncidrs = [\"198.51.100.0/24\"]\n");
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let _stats = BpfStats::enable();
    let receiver = Receiver::start(&lab);
    send(&lab, BLOCKED, 30);
    send(&lab, UNLISTED, 10);
    let interface = lab.server_if.as_str();
    // The engine refreshes the program's statistics once a second.
    let metrics = scrape_until(&lab.server, |m| {
        m.counter(PACKETS, &drop_blocklist(interface)) >= 30
            && m.get("apifw_program_runs_total", &[]).unwrap_or(0.0) >= 40.0
    });
    let text = &metrics.text;
    let runs = metrics.get("apifw_program_runs_total", &[]).unwrap_or(0.0);
    assert!(runs >= 40.0, "every packet sent is a run: {text}");
    let time = metrics
        .get("apifw_program_run_time_seconds_total", &[])
        .unwrap_or(0.0);
    assert!(time > 0.0, "{text}");
    let per_packet = metrics
        .get("apifw_program_seconds_per_packet", &[])
        .unwrap_or(0.0);
    assert!(per_packet > 0.0, "{text}");
    assert!(
        (per_packet - time / runs).abs() <= per_packet * 0.5,
        "the gauge is time over runs (both read at one tick, so within a tick's packets): {text}"
    );
    let status = dirs.cli_json(&["status"]);
    let program = &status["program"];
    assert!(program["runs"].as_u64().unwrap_or(0) >= 40, "{status}");
    assert!(program["run_time_ns"].as_u64().unwrap_or(0) > 0, "{status}");
    let human = dirs.cli(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("ns per packet over"), "{human}");
    drop(receiver);
}
