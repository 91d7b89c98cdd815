//! The control plane end to end: the real daemon in network namespaces, driven by the real CLI
//! over its socket, with real traffic. Runtime changes take effect on live packets; other users
//! are refused; reloads under a flood leak nothing; `kill -9` under a flood and a restart leak
//! nothing and keep bans and counters; a corrupt state file changes nothing.
//!
//! Needs root. Every test builds its own namespaces, interfaces and pin paths.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::VethLab,
    traffic::{self, Flood, Receiver},
};
use firewall_common::{Action, Reason};
use nix::sys::signal::Signal;

/// Sends `count` datagrams from `source` and waits until the receiver has had time to see them.
fn send(lab: &VethLab, source: Ipv4Addr, count: usize) {
    traffic::send(lab, source, count);
    std::thread::sleep(Duration::from_millis(300));
}

fn exit_code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn audit_actions(dirs: &Dirs) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dirs.audit_log()).expect("audit log exists");
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("audit JSON line");
            (
                record["actor"].as_str().unwrap_or("").to_owned(),
                record["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

#[test]
fn runtime_changes_take_effect_on_live_traffic_and_are_audited() {
    let lab = VethLab::new("ctl", &[A, B]);
    let dirs = Dirs::new("ctl");
    dirs.write_policy("malformed = \"drop\"\n");
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);

    send(&lab, A, 10);
    assert_eq!(receiver.from(A), 10, "no policy yet: A passes");

    let added = dirs.cli_json(&["block", "add", "198.51.100.10", "--comment", "scraper"]);
    assert_eq!(added["added"], 1, "{added}");
    let before = dirs.stats().get(Action::Drop, Reason::Blocklist).packets;
    send(&lab, A, 10);
    assert_eq!(
        receiver.from(A),
        10,
        "blocked at run time: nothing more arrives"
    );
    assert_eq!(
        dirs.stats().get(Action::Drop, Reason::Blocklist).packets - before,
        10,
        "the XDP program dropped exactly those 10 as blocklisted"
    );
    let list = dirs.cli_json(&["block", "list"]);
    let rows = list.as_array().expect("rows");
    assert!(
        rows.iter().any(|row| row["cidr"] == "198.51.100.10/32"
            && row["origin"] == "runtime"
            && row["comment"] == "scraper"),
        "{list}"
    );
    let state = std::fs::read_to_string(dirs.state_file()).expect("state file written");
    assert!(state.contains("198.51.100.10/32"), "{state}");

    dirs.cli_json(&["block", "del", "198.51.100.10"]);
    send(&lab, A, 10);
    assert_eq!(receiver.from(A), 20, "unblocked: A passes again");
    let again = dirs.cli(&["block", "del", "198.51.100.10"]);
    assert_eq!(
        exit_code(&again),
        4,
        "deleting an absent entry: {}",
        stderr(&again)
    );

    // A TTL'd block lapses by itself.
    dirs.cli_json(&["block", "add", "198.51.100.10/32", "--ttl", "2s"]);
    send(&lab, A, 5);
    assert_eq!(receiver.from(A), 20, "blocked for two seconds");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dirs
        .cli_json(&["block", "list"])
        .as_array()
        .expect("rows")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the TTL'd entry never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    send(&lab, A, 5);
    assert_eq!(receiver.from(A), 25, "the block expired");

    // A ban with a TTL: dropped as banned, listed, then lifted by expiry.
    let banned_before = dirs.stats().get(Action::Drop, Reason::Banned).packets;
    dirs.cli_json(&[
        "ban",
        "add",
        "198.51.100.11",
        "--ttl",
        "3s",
        "--comment",
        "manual",
    ]);
    let bans = dirs.cli_json(&["ban", "list"]);
    assert!(
        bans.as_array()
            .expect("rows")
            .iter()
            .any(|row| row["prefix"] == "198.51.100.11/32"),
        "{bans}"
    );
    send(&lab, B, 10);
    assert_eq!(receiver.from(B), 0, "banned");
    assert_eq!(
        dirs.stats().get(Action::Drop, Reason::Banned).packets - banned_before,
        10
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dirs
        .cli_json(&["ban", "list"])
        .as_array()
        .expect("rows")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the ban never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    send(&lab, B, 10);
    assert_eq!(receiver.from(B), 10, "the ban expired");

    // Bad input changes nothing and says why.
    let bad = dirs.cli(&["block", "add", "198.51.100.0/24", "not-an-ip"]);
    assert_eq!(exit_code(&bad), 1);
    assert!(stderr(&bad).contains("not-an-ip"), "{}", stderr(&bad));
    assert!(
        dirs.cli_json(&["block", "list"])
            .as_array()
            .expect("rows")
            .is_empty(),
        "nothing of the refused request was applied"
    );

    // The daemon sweeps lapsed bans once a second, and audits each sweep.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !audit_actions(&dirs)
        .iter()
        .any(|(_, action)| action == "ban.expire")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let actions = audit_actions(&dirs);
    for expected in [
        "block.add",
        "block.del",
        "block.expire",
        "ban.add",
        "ban.expire",
    ] {
        assert!(
            actions.iter().any(|(_, action)| action == expected),
            "audit log lacks {expected}: {actions:?}"
        );
    }
    assert!(
        actions
            .iter()
            .any(|(actor, action)| action == "block.add" && actor.starts_with("uid 0")),
        "CLI changes carry the caller's uid: {actions:?}"
    );
}

#[test]
fn other_users_are_refused() {
    let lab = VethLab::new("uid", &[]);
    let dirs = Dirs::new("uid");
    dirs.write_policy("");
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let bin = apifw_tests::daemon::apifw_bin();
    let as_nobody = || {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["block", "add", "198.51.100.99", "--run-dir"])
            .arg(&dirs.run_dir)
            .output()
            .expect("run setpriv")
    };
    // The socket is 0600 root: the kernel refuses the connection.
    let refused = as_nobody();
    assert_eq!(exit_code(&refused), 3, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("permission denied"),
        "{}",
        stderr(&refused)
    );

    // Even if the socket's mode is loosened, the daemon checks the caller's credentials.
    let socket = dirs.run_dir.join("apifw.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let refused = as_nobody();
    assert_eq!(exit_code(&refused), 1, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("uid 65534 may not use"),
        "{}",
        stderr(&refused)
    );
    assert!(
        dirs.cli_json(&["block", "list"])
            .as_array()
            .expect("rows")
            .is_empty(),
        "the refused request changed nothing"
    );
}

const FLOOD_SOURCES: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 10),
    Ipv4Addr::new(198, 51, 100, 200),
];
const POLICY_OLD: &str = r#"
[block]
cidrs = ["198.51.100.0/24"]
"#;
// The same sources blocked through other entries: the /24 disappears and two /25s appear, so a
// swap that is not atomic would let the flood through between the two. The 20,000 extra hosts
// make each swap write long enough for a non-atomic one to be caught.
fn policy_new() -> String {
    let hosts: Vec<String> = (0..20_000u32)
        .map(|i| format!("\"198.18.{}.{}\"", i / 256, i % 256))
        .collect();
    POLICY_NEW.replace(
        "\"203.0.113.0/24\"",
        &format!("\"203.0.113.0/24\", {}", hosts.join(", ")),
    )
}
const POLICY_NEW: &str = r#"
[block]
cidrs = ["198.51.100.0/25", "198.51.100.128/25", "203.0.113.0/24"]
[[rule]]
name = "api"
protocol = "udp"
ports = [7100]
per_source = { packets_per_second = 1000 }
"#;

#[test]
fn twenty_reloads_under_a_flood_leak_nothing() {
    let lab = VethLab::new("rld", &FLOOD_SOURCES);
    let dirs = Dirs::new("rld");
    dirs.write_policy(POLICY_OLD);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    let before = dirs.stats().get(Action::Drop, Reason::Blocklist).packets;
    let tx_before = lab.client_tx_packets();
    let flood = Flood::start(&lab, &FLOOD_SOURCES);
    let new = policy_new();
    for round in 0..20 {
        dirs.write_policy(if round % 2 == 0 { &new } else { POLICY_OLD });
        let reloaded = dirs.cli_json(&["reload"]);
        assert_eq!(reloaded["policy_version"], round + 2, "{reloaded}");
    }
    let sent = flood.stop();
    std::thread::sleep(Duration::from_millis(500));
    assert!(sent > 1000, "the flood ran ({sent} datagrams)");
    for source in FLOOD_SOURCES {
        assert_eq!(receiver.from(source), 0, "{source} leaked through a reload");
    }
    // Datagrams the client's veth delivered to the server's (a full backlog can refuse some
    // before any program sees them): each was dropped in XDP as blocklisted.
    let delivered = lab.client_tx_packets() - tx_before;
    assert!(delivered > 1000, "{delivered} of {sent} delivered");
    assert_eq!(
        dirs.stats().get(Action::Drop, Reason::Blocklist).packets - before,
        delivered,
        "every delivered flood datagram was dropped in XDP as blocklisted"
    );
    let status = dirs.cli_json(&["status"]);
    assert_eq!(status["reloads"], 20, "{status}");
    assert_eq!(status["failed_reloads"], 0, "{status}");

    // An invalid policy is refused and changes nothing.
    dirs.write_policy("[block]\ncidrs = [\"198.51.100.0/33\"]\n");
    let refused = dirs.cli(&["reload"]);
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains("198.51.100.0/33"),
        "{}",
        stderr(&refused)
    );
    send(&lab, FLOOD_SOURCES[0], 10);
    assert_eq!(
        receiver.from(FLOOD_SOURCES[0]),
        0,
        "the old policy still blocks"
    );
    let status = dirs.cli_json(&["status"]);
    assert_eq!(status["failed_reloads"], 1, "{status}");
}

const BANNED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

#[test]
fn kill_9_under_a_flood_then_restart_leaks_nothing_and_keeps_bans_and_counters() {
    let lab = VethLab::new("k9", &[FLOOD_SOURCES[0], BANNED]);
    let dirs = Dirs::new("k9");
    dirs.write_policy(POLICY_OLD);
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    dirs.cli_json(&[
        "ban",
        "add",
        "192.0.2.50",
        "--ttl",
        "1h",
        "--comment",
        "abuse",
    ]);
    let receiver = Receiver::start(&lab);
    let dropped = |stats: &apifw_tests::daemon::Snapshot| {
        stats.get(Action::Drop, Reason::Blocklist).packets
            + stats.get(Action::Drop, Reason::Banned).packets
    };
    let dropped_before = dropped(&dirs.stats());
    let tx_before = lab.client_tx_packets();
    let flood = Flood::start(&lab, &[FLOOD_SOURCES[0], BANNED]);
    std::thread::sleep(Duration::from_millis(300));

    let (status, _) = daemon.stop(Signal::SIGKILL);
    assert!(!status.success());
    assert!(lab.server_has_xdp(), "enforcement survives the daemon");
    let counted_at_kill = dirs.stats();
    std::thread::sleep(Duration::from_millis(500));

    let restarted = Daemon::start(&lab.server, &dirs, &lab.server_if);
    std::thread::sleep(Duration::from_millis(300));
    let sent = flood.stop();
    std::thread::sleep(Duration::from_millis(500));

    assert!(sent > 1000, "the flood ran ({sent} datagrams)");
    assert_eq!(receiver.from(FLOOD_SOURCES[0]), 0, "blocked source leaked");
    assert_eq!(receiver.from(BANNED), 0, "banned source leaked");
    let after = dirs.stats();
    for (action, reason) in [
        (Action::Drop, Reason::Blocklist),
        (Action::Drop, Reason::Banned),
    ] {
        assert!(
            after.get(action, reason).packets > counted_at_kill.get(action, reason).packets,
            "{action:?}/{reason:?} counters kept and still counting"
        );
    }
    assert_eq!(
        dropped(&after) - dropped_before,
        lab.client_tx_packets() - tx_before,
        "every delivered datagram of the flood was dropped and counted, across the restart"
    );
    let status = dirs.cli_json(&["status"]);
    assert_eq!(status["adopted"], true, "{status}");
    assert_eq!(status["interfaces"][0]["mode"], "adopted", "{status}");
    let bans = dirs.cli_json(&["ban", "list"]);
    assert!(
        bans.as_array()
            .expect("rows")
            .iter()
            .any(|row| row["prefix"] == "192.0.2.50/32"
                && row["reason"].as_str().unwrap_or("").contains("abuse")),
        "the ban survived: {bans}"
    );
    drop(restarted);
}

#[test]
fn a_corrupt_state_file_changes_nothing() {
    let lab = VethLab::new("cst", &[A]);
    let dirs = Dirs::new("cst");
    dirs.write_policy("");
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    dirs.cli_json(&["block", "add", "198.51.100.10"]);
    let good = std::fs::read_to_string(dirs.state_file()).expect("state file");

    std::fs::write(
        dirs.state_file(),
        "{\n  \"version\": 1,\n  \"block\": [ {\"cidr\": \n",
    )
    .expect("corrupt");
    let refused = dirs.cli(&["reload"]);
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains("corrupt at line"),
        "{}",
        stderr(&refused)
    );
    send(&lab, A, 10);
    assert_eq!(receiver.from(A), 0, "the last good state is still enforced");
    let list = dirs.cli_json(&["block", "list"]);
    assert_eq!(list.as_array().expect("rows").len(), 1, "{list}");

    // A daemon cannot start on it either, and says why.
    let (status, _) = daemon.stop(Signal::SIGTERM);
    assert!(status.success());
    let mut child = Daemon::spawn(&lab.server, &dirs, &lab.server_if);
    let status = child.wait().expect("wait");
    let message = apifw_tests::daemon::stderr_of(&mut child);
    assert!(!status.success());
    assert!(message.contains("corrupt at line"), "{message}");
    assert!(!lab.server_has_xdp(), "nothing attached");

    // The operator restores the file: the runtime entry is back in force.
    std::fs::write(dirs.state_file(), good).expect("restore");
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    send(&lab, A, 10);
    assert_eq!(receiver.from(A), 0, "restored state enforced");
}

#[test]
fn an_interface_with_a_foreign_program_is_refused_without_replace() {
    let lab = VethLab::new("frn", &[]);
    let first = Dirs::new("frn1");
    first.write_policy("");
    let daemon = Daemon::start(&lab.server, &first, &lab.server_if);
    // Killed: its link stays attached and pinned where the second daemon does not look, so
    // for the second daemon it is someone else's program.
    let _ = daemon.stop(Signal::SIGKILL);
    let second = Dirs::new("frn2");
    second.write_policy("");
    let mut child = Daemon::spawn(&lab.server, &second, &lab.server_if);
    let status = child.wait().expect("wait");
    let message = apifw_tests::daemon::stderr_of(&mut child);
    assert!(!status.success());
    assert!(
        message.contains("already has an XDP program") && message.contains("--replace"),
        "{message}"
    );
    drop(first);
}

#[test]
fn pins_of_another_layout_are_replaced_without_a_gap() {
    let lab = VethLab::new("lay", &[A]);
    let dirs = Dirs::new("lay");
    dirs.write_policy("[block]\ncidrs = [\"198.51.100.0/24\"]\n");
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let _ = daemon.stop(Signal::SIGKILL);
    // Another map size: the pinned ban map no longer fits this policy.
    dirs.write_policy("[block]\ncidrs = [\"198.51.100.0/24\"]\n[limits]\nmax_bans = 1000\n");
    let receiver = Receiver::start(&lab);
    let tx_before = lab.client_tx_packets();
    let flood = Flood::start(&lab, &[A]);
    std::thread::sleep(Duration::from_millis(200));
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    std::thread::sleep(Duration::from_millis(200));
    let sent = flood.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert!(sent > 100 && lab.client_tx_packets() > tx_before);
    assert_eq!(receiver.from(A), 0, "no gap while the maps were replaced");
    let status = dirs.cli_json(&["status"]);
    assert_eq!(status["adopted"], false, "{status}");
    assert_eq!(
        status["interfaces"][0]["mode"], "adopted",
        "the link was taken over: {status}"
    );
    let capacity = status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|map| map["map"] == "APIFW_BANS")
        .map(|map| map["capacity"].clone());
    assert_eq!(capacity, Some(serde_json::json!(1000)), "{status}");
    let (_, log) = daemon.stop(Signal::SIGTERM);
    assert!(
        log.contains("incompatible") && log.contains("APIFW_BANS"),
        "{log}"
    );
}

#[test]
fn imports_and_feeds_block_live_traffic_and_bad_lines_are_reported() {
    const C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    let lab = VethLab::new("imp", &[A, B, C]);
    let dirs = Dirs::new("imp");
    let feed = dirs.run_dir.join("drop.txt");
    std::fs::write(&feed, "; Spamhaus DROP excerpt\n203.0.113.0/24 ; SBL1\n").expect("feed");
    let policy = "[block]\nfeeds = [{ path = \"drop.txt\", format = \"spamhaus\" }]\n";
    dirs.write_policy(policy);
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    send(&lab, C, 5);
    assert_eq!(receiver.from(C), 0, "the feed blocks 203.0.113.0/24");

    // An import with a bad line is refused whole, naming file and line.
    let list = dirs.run_dir.join("import.netset");
    std::fs::write(
        &list,
        "# FireHOL style\n198.51.100.10\nnot-a-cidr\n198.51.100.11/32\n",
    )
    .expect("list");
    let list_arg = list.to_str().expect("utf-8");
    let refused = dirs.cli(&["block", "import", list_arg, "--format", "firehol"]);
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains(&format!("{list_arg}:3")),
        "{}",
        stderr(&refused)
    );
    send(&lab, A, 5);
    assert_eq!(receiver.from(A), 5, "nothing was imported");

    let imported = dirs.cli_json(&[
        "block",
        "import",
        list_arg,
        "--format",
        "firehol",
        "--skip-bad-lines",
    ]);
    assert_eq!(imported["added"], 2, "{imported}");
    assert_eq!(imported["skipped"].as_array().map(Vec::len), Some(1));
    send(&lab, A, 5);
    send(&lab, B, 5);
    assert_eq!(
        (receiver.from(A), receiver.from(B)),
        (5, 0),
        "both imported sources blocked"
    );
    let rows = dirs.cli_json(&["block", "list"]);
    let origins: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["origin"].as_str())
        .collect();
    assert!(origins.iter().any(|o| o.starts_with("feed:")), "{rows}");
    assert_eq!(
        origins.iter().filter(|o| o.starts_with("import:")).count(),
        2,
        "{rows}"
    );

    // One imported entry can be deleted on its own.
    dirs.cli_json(&["block", "del", "198.51.100.10"]);
    send(&lab, A, 5);
    assert_eq!(receiver.from(A), 10, "deleted from the import");

    // A bad line in a feed rejects the reload (default), or is skipped when the feed says so.
    std::fs::write(&feed, "203.0.113.0/24 ; SBL1\n198.51.100.11/33 ; SBL2\n").expect("feed");
    let refused = dirs.cli(&["reload"]);
    assert_eq!(exit_code(&refused), 1);
    assert!(
        stderr(&refused).contains("drop.txt:2"),
        "{}",
        stderr(&refused)
    );
    dirs.write_policy(&policy.replace("}]", ", on_bad_line = \"skip\" }]"));
    dirs.cli_json(&["reload"]);
    send(&lab, C, 5);
    assert_eq!(
        receiver.from(C),
        0,
        "the feed still blocks after the reload"
    );
    let actions = audit_actions(&dirs);
    for expected in ["import", "reload.failed", "reload", "block.del"] {
        assert!(
            actions.iter().any(|(_, action)| action == expected),
            "audit log lacks {expected}: {actions:?}"
        );
    }
}
