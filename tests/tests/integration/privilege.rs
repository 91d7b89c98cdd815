//! Least privilege: the daemon runs as an unprivileged uid holding only CAP_BPF,
//! CAP_NET_ADMIN and CAP_PERFMON (as ambient capabilities, the way the systemd unit in
//! `deploy/systemd/` grants them), and still loads, attaches, enforces, takes runtime changes
//! and reloads, and takes over its own pins after `kill -9`. Without any one of the three it
//! refuses to start and names the missing capability. Users without privileges are refused by
//! the control socket.
//!
//! Needs root (to build the labs and hand the lab's directories to the test uid). Every test
//! builds its own namespaces, interfaces and pin paths.

use std::{
    ffi::OsString,
    net::Ipv4Addr,
    process::Output,
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs, apifw_bin, stderr_of},
    netns::VethLab,
    support::wait_for,
    traffic::{self, Receiver},
};
use firewall_common::{Action, Reason};
use firewall_userspace::dataplane::privileges::{self, Capability};
use nix::{
    sys::signal::Signal,
    unistd::{Gid, Uid},
};

/// The uid (and gid) the daemon runs as: no user of this machine, so it owns nothing but what
/// the test hands it.
const DAEMON_UID: u32 = 64_123;
/// An unprivileged user for the CLI (nobody).
const OUTSIDER_UID: u32 = 65_534;

const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

const POLICY: &str = "[block]\ncidrs = [\"198.51.100.10/32\"]\n";

/// `setpriv` arguments that run a command as [`DAEMON_UID`] with exactly `capabilities`
/// (inheritable, ambient and bounding sets), no supplementary groups and no_new_privs, as
/// `deploy/systemd/apifw.service` would with `User=`.
fn restricted(capabilities: &[Capability]) -> Vec<OsString> {
    let caps: String = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|capability| {
            format!(
                "+{}",
                capability
                    .name()
                    .trim_start_matches("CAP_")
                    .to_ascii_lowercase()
            )
        }))
        .collect::<Vec<_>>()
        .join(",");
    [
        "setpriv".to_owned(),
        format!("--reuid={DAEMON_UID}"),
        format!("--regid={DAEMON_UID}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set={caps}"),
        "--no-new-privs".to_owned(),
    ]
    .map(OsString::from)
    .to_vec()
}

/// Hands the run directory and the pin root to [`DAEMON_UID`], as an operator (or the unit's
/// `RuntimeDirectory=` and `ExecStartPre=+`) would for a daemon that is not root.
fn hand_over(dirs: &Dirs) {
    std::fs::create_dir_all(&dirs.pin_dir)
        .unwrap_or_else(|err| panic!("create {}: {err}", dirs.pin_dir.display()));
    for dir in [&dirs.run_dir, &dirs.pin_dir] {
        nix::unistd::chown(
            dir,
            Some(Uid::from_raw(DAEMON_UID)),
            Some(Gid::from_raw(DAEMON_UID)),
        )
        .unwrap_or_else(|err| panic!("chown {}: {err}", dir.display()));
    }
}

/// Runs the CLI as `uid` with no capabilities at all.
fn cli_as(uid: u32, dirs: &Dirs, args: &[&str]) -> Output {
    std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            "--inh-caps=-all".to_owned(),
            "--bounding-set=-all".to_owned(),
        ])
        .arg(apifw_bin())
        .args(args)
        .arg("--run-dir")
        .arg(&dirs.run_dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run setpriv apifw {args:?}: {err}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `name:` line of `/proc/<pid>/status`, e.g. `CapEff`.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Asserts that `pid` runs as [`DAEMON_UID`] with exactly the three capabilities.
fn assert_least_privilege(pid: u32) {
    let expected: u64 = Capability::REQUIRED
        .iter()
        .map(|capability| 1u64 << capability.number())
        .sum();
    assert_eq!(
        status_field(pid, "Uid"),
        format!("{DAEMON_UID}\t{DAEMON_UID}\t{DAEMON_UID}\t{DAEMON_UID}"),
        "the daemon runs as the unprivileged uid"
    );
    assert_eq!(status_field(pid, "Groups"), "", "no supplementary groups");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(
        privileges::parse_effective(&status),
        Some(expected),
        "the daemon's effective set is exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    );
    for set in ["CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            u64::from_str_radix(&status_field(pid, set), 16).expect("hex capability set"),
            expected,
            "{set} is exactly the three capabilities"
        );
    }
}

/// Sends `count` datagrams from `source` and gives the receiver time to see them.
fn send(lab: &VethLab, source: Ipv4Addr, count: usize) {
    traffic::send(lab, source, count);
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn three_capabilities_and_no_root_uid_suffice_to_enforce_change_reload_and_take_over() {
    let lab = VethLab::new("prv", &[BLOCKED, OTHER]);
    let dirs = Dirs::new("prv");
    dirs.write_policy(POLICY);
    hand_over(&dirs);
    let wrapper = restricted(&Capability::REQUIRED);
    let daemon = Daemon::start_wrapped(&lab.server, &dirs, &lab.server_if, &wrapper);
    assert_least_privilege(daemon.pid());
    assert!(lab.server_has_xdp(), "attached");

    // Enforcing: the blocked source is dropped and counted, the other one passes.
    let receiver = Receiver::start(&lab);
    let before = dirs.stats();
    send(&lab, BLOCKED, 10);
    send(&lab, OTHER, 10);
    assert_eq!(receiver.from(BLOCKED), 0, "the blocked source is dropped");
    assert_eq!(receiver.from(OTHER), 10, "the other source passes");
    let after = dirs.stats();
    assert_eq!(
        after.get(Action::Drop, Reason::Blocklist).packets
            - before.get(Action::Drop, Reason::Blocklist).packets,
        10,
        "exactly the blocked datagrams were dropped as blocklisted"
    );
    assert_eq!(
        after.get(Action::Pass, Reason::Default).packets
            - before.get(Action::Pass, Reason::Default).packets,
        10,
        "exactly the other datagrams passed"
    );

    // A runtime change through the socket (root's CLI): installed in the kernel and persisted
    // in the state file, which the unprivileged daemon writes in its own directory.
    let added = dirs.cli_json(&["block", "add", "198.51.100.11"]);
    assert_eq!(added["added"], 1, "{added}");
    send(&lab, OTHER, 10);
    assert_eq!(receiver.from(OTHER), 10, "blocked at run time");
    let state = std::fs::read_to_string(dirs.state_file()).expect("state file written");
    assert!(state.contains("198.51.100.11/32"), "{state}");

    // SIGHUP (the unit's ExecReload) reloads.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        Signal::SIGHUP,
    )
    .expect("SIGHUP");
    wait_for("the SIGHUP reload", Duration::from_secs(30), || {
        dirs.cli_json(&["status"])["reloads"] == 1
    });
    assert_eq!(dirs.cli_json(&["status"])["failed_reloads"], 0);

    // Without privileges, the CLI is refused: another user by the socket's mode (exit 3), the
    // daemon's own uid without root by the daemon's peer-credential check (exit 1).
    let outsider = cli_as(OUTSIDER_UID, &dirs, &["block", "add", "198.51.100.99"]);
    assert_eq!(outsider.status.code(), Some(3), "{}", stderr(&outsider));
    assert!(
        stderr(&outsider).contains("permission denied"),
        "{}",
        stderr(&outsider)
    );
    let own_uid = cli_as(DAEMON_UID, &dirs, &["block", "add", "198.51.100.99"]);
    assert_eq!(own_uid.status.code(), Some(1), "{}", stderr(&own_uid));
    assert!(
        stderr(&own_uid).contains(&format!("uid {DAEMON_UID} may not use")),
        "{}",
        stderr(&own_uid)
    );
    let list = dirs.cli_json(&["block", "list"]);
    let cidrs: Vec<&str> = list
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["cidr"].as_str())
        .collect();
    assert_eq!(
        cidrs,
        ["198.51.100.10/32", "198.51.100.11/32"],
        "the refused requests changed nothing: {list}"
    );

    // `kill -9`, then a new daemon with the same three capabilities takes over the pinned maps
    // and link: no privilege beyond them is needed to adopt.
    let (status, _) = daemon.stop(Signal::SIGKILL);
    assert_eq!(status.code(), None, "killed by SIGKILL");
    let daemon = Daemon::start_wrapped(&lab.server, &dirs, &lab.server_if, &wrapper);
    assert_least_privilege(daemon.pid());
    let status = dirs.cli_json(&["status"]);
    assert_eq!(status["adopted"], true, "{status}");
    let before = dirs.stats().get(Action::Drop, Reason::Blocklist).packets;
    send(&lab, BLOCKED, 10);
    send(&lab, OTHER, 10);
    assert_eq!(
        receiver.from(BLOCKED),
        0,
        "still blocked after the takeover"
    );
    assert_eq!(
        receiver.from(OTHER),
        10,
        "the runtime block survived the takeover"
    );
    assert_eq!(
        dirs.stats().get(Action::Drop, Reason::Blocklist).packets - before,
        20,
        "both sources' datagrams were dropped as blocklisted"
    );

    // SIGTERM: exit 0, detached and unpinned, also without root.
    let (status, log) = daemon.stop(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!lab.server_has_xdp(), "detached on SIGTERM");
    assert!(
        !dirs.layout().versioned().exists(),
        "pins removed on SIGTERM"
    );
}

#[test]
fn without_any_one_of_the_three_capabilities_the_daemon_names_it_and_attaches_nothing() {
    let lab = VethLab::new("nocap", &[]);
    for missing in Capability::REQUIRED {
        let dirs = Dirs::new(&format!("nocap-{}", missing.number()));
        dirs.write_policy(POLICY);
        hand_over(&dirs);
        let granted: Vec<Capability> = Capability::REQUIRED
            .into_iter()
            .filter(|capability| *capability != missing)
            .collect();
        let mut child =
            Daemon::spawn_wrapped(&lab.server, &dirs, &lab.server_if, &restricted(&granted));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "apifw run without {missing} did not exit: {}",
                    stderr_of(&mut child)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = stderr_of(&mut child);
        assert_eq!(status.code(), Some(1), "without {missing}: {log}");
        let error = log
            .lines()
            .find(|line| line.starts_with("error: "))
            .unwrap_or_else(|| panic!("without {missing}, no error line: {log}"));
        assert!(
            error.starts_with(&format!(
                "error: the kernel refused: this process lacks {missing} ("
            )),
            "without {missing}, the error names it first: {error}"
        );
        for other in &granted {
            assert!(
                !error.contains(&format!("lacks {other}"))
                    && !error.contains(&format!("and {other} (")),
                "without {missing}, the error blames {other}, which was granted: {error}"
            );
        }
        assert!(
            error.contains("needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
            "the error lists what is needed: {error}"
        );
        assert!(!lab.server_has_xdp(), "without {missing}: nothing attached");
        assert!(
            !dirs.layout().links_dir().join(&lab.server_if).exists(),
            "without {missing}: no link pinned"
        );
    }
}
