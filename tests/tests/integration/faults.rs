//! Faults around a running daemon (issue #7), each in its own namespace lab with real traffic:
//! protected interfaces renamed, removed and re-created; a blocklist over capacity; a state
//! directory that is full or read-only. In every case the daemon keeps running, says clearly
//! what happened, and enforcement is exactly what it was (or, for an interface that came back,
//! what the policy says).
//!
//! Needs root.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    netns::VethLab,
    support::wait_for,
    traffic::{self, Receiver},
};
use firewall_common::{Action, Reason};

const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const FRIEND: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);

/// The daemon's log without terminal colour codes.
fn plain_log(daemon: &mut Daemon) -> String {
    let log = daemon.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn blocked_drops(dirs: &Dirs) -> u64 {
    dirs.stats().get(Action::Drop, Reason::Blocklist).packets
}

fn has_xdp(lab: &VethLab, interface: &str) -> bool {
    let output = lab.server.ip(&["-j", "link", "show", "dev", interface]);
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    !links[0]["xdp"].is_null()
}

/// Sends `count` datagrams from `source` and waits until the receiver counted `expect` of them
/// in total or the XDP counter moved by the rest.
fn send_and_settle(
    lab: &VethLab,
    dirs: &Dirs,
    receiver: &Receiver,
    source: Ipv4Addr,
    count: usize,
) {
    let before = (receiver.from(source), blocked_drops(dirs));
    traffic::send(lab, source, count);
    wait_for(
        &format!("{count} datagrams from {source} to settle"),
        Duration::from_secs(10),
        || {
            let delivered = receiver.from(source) - before.0;
            let dropped = blocked_drops(dirs) - before.1;
            delivered + dropped == count as u64
        },
    );
}

/// Renames a server interface (down, rename, up) and restores the routes to the client's
/// sources that going down removed.
fn rename(lab: &VethLab, from: &str, to: &str, sources: &[Ipv4Addr]) {
    lab.server.ip(&["link", "set", "dev", from, "down"]);
    lab.server.ip(&["link", "set", "dev", from, "name", to]);
    lab.server.ip(&["link", "set", "dev", to, "up"]);
    for source in sources {
        lab.server
            .ip(&["route", "replace", &format!("{source}/32"), "dev", to]);
    }
}

#[test]
fn renamed_removed_and_recreated_interfaces_are_followed_and_the_rest_keeps_working() {
    let sources = [BLOCKED, FRIEND];
    let lab = VethLab::new("ifchg", &sources);
    // A second protected interface that nothing happens to (a veth pair inside the server
    // namespace; not every kernel has the dummy driver).
    let other = format!("d{}", lab.server_if);
    let other_peer = format!("p{}", lab.server_if);
    lab.server.ip(&[
        "link",
        "add",
        &other,
        "type",
        "veth",
        "peer",
        "name",
        &other_peer,
    ]);
    lab.server.ip(&["link", "set", &other, "up"]);
    lab.server.ip(&["link", "set", &other_peer, "up"]);
    let dirs = Dirs::new("ifchg");
    dirs.write_policy(&format!(
        "xdp_mode = \"skb\"\n[block]\ncidrs = [\"{BLOCKED}/32\"]\n"
    ));
    let mut daemon = Daemon::start_on(&lab.server, &dirs, &[&lab.server_if, &other], &[]);
    let receiver = Receiver::start(&lab);

    send_and_settle(&lab, &dirs, &receiver, BLOCKED, 20);
    assert_eq!(
        (receiver.from(BLOCKED), blocked_drops(&dirs)),
        (0, 20),
        "blocked before any change"
    );

    // Renamed: detached from the renamed device, said so.
    let renamed = format!("r{}", &lab.server_if[1..]);
    rename(&lab, &lab.server_if, &renamed, &sources);
    wait_for(
        "the daemon to notice the rename",
        Duration::from_secs(10),
        || {
            plain_log(&mut daemon).contains("protected interface renamed")
                && !has_xdp(&lab, &renamed)
        },
    );
    assert!(
        plain_log(&mut daemon).contains(&format!("renamed_to=\"{renamed}\"")),
        "{}",
        plain_log(&mut daemon)
    );
    assert!(
        has_xdp(&lab, &other),
        "the other interface lost its program"
    );

    // Renamed back: attached again and enforcing, counting on.
    rename(&lab, &renamed, &lab.server_if, &sources);
    wait_for(
        "re-attach after the rename back",
        Duration::from_secs(10),
        || has_xdp(&lab, &lab.server_if) && dirs.layout().link(&lab.server_if).exists(),
    );
    send_and_settle(&lab, &dirs, &receiver, BLOCKED, 20);
    assert_eq!(
        (receiver.from(BLOCKED), blocked_drops(&dirs)),
        (0, 40),
        "blocked after the rename back"
    );

    // Removed: logged; the daemon keeps answering and the other interface keeps its program.
    lab.server.ip(&["link", "del", &lab.server_if]);
    wait_for(
        "the daemon to notice the removal",
        Duration::from_secs(10),
        || plain_log(&mut daemon).contains("protected interface removed"),
    );
    assert!(
        dirs.cli(&["status"]).status.success(),
        "daemon stopped answering: {}",
        plain_log(&mut daemon)
    );
    assert!(
        has_xdp(&lab, &other),
        "the other interface lost its program"
    );

    // Re-created: attached to the new device, enforcing the same policy.
    lab.connect(&sources);
    wait_for(
        "re-attach to the re-created interface",
        Duration::from_secs(10),
        || has_xdp(&lab, &lab.server_if),
    );
    assert!(
        daemon
            .log()
            .contains("protected interface is back: attached"),
        "{}",
        plain_log(&mut daemon)
    );
    send_and_settle(&lab, &dirs, &receiver, BLOCKED, 20);
    send_and_settle(&lab, &dirs, &receiver, FRIEND, 20);
    assert_eq!(
        (
            receiver.from(BLOCKED),
            receiver.from(FRIEND),
            blocked_drops(&dirs)
        ),
        (0, 20, 60),
        "after re-creation: blocked source dropped and counted, friend served"
    );
    let (status, log) = daemon.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "daemon exit {status}: {log}");
}

#[test]
fn a_blocklist_over_capacity_is_refused_naming_the_limit_and_nothing_changes() {
    let lab = VethLab::new("mapful", &[BLOCKED]);
    let dirs = Dirs::new("mapful");
    dirs.write_policy(&format!(
        "xdp_mode = \"skb\"\n[block]\ncidrs = [\"{BLOCKED}/32\"]\n[limits]\nmax_v4_prefixes = 100\n"
    ));
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    let state_before = std::fs::read(dirs.state_file()).unwrap_or_default();
    // 150 /32s in 203.0.113.0/24: more than the 100 the limit allows.
    let list = dirs.run_dir.join("big.txt");
    let text: String = (1..=150).map(|i| format!("203.0.113.{i}/32\n")).collect();
    std::fs::write(&list, text).expect("write list");
    let output = dirs.cli(&["block", "import", list.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "import over capacity succeeded: {stderr}"
    );
    assert!(
        stderr.contains("limits.max_v4_prefixes") && stderr.contains("100"),
        "the error must name the limit and the setting: {stderr}"
    );
    // Nothing partial: the list, the state file and enforcement are as before.
    let listed = dirs.cli_json(&["block", "list"]);
    let text = listed.to_string();
    assert!(
        !text.contains("203.0.113."),
        "part of the import landed: {text}"
    );
    assert_eq!(
        std::fs::read(dirs.state_file()).unwrap_or_default(),
        state_before,
        "state file changed"
    );
    send_and_settle(&lab, &dirs, &receiver, BLOCKED, 10);
    assert_eq!((receiver.from(BLOCKED), blocked_drops(&dirs)), (0, 10));
    drop(daemon);
}

/// A small filesystem mounted over a directory for the test, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "apifw-test",
                dir.to_str().expect("utf-8"),
            ])
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Self {
            dir: dir.to_owned(),
        }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args([
                "-o",
                &format!("remount,{options}"),
                self.dir.to_str().expect("utf-8"),
            ])
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options}");
    }

    /// Fills the filesystem up (a file as large as it takes).
    fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn a_full_or_read_only_state_directory_changes_nothing() {
    let lab = VethLab::new("diskfl", &[BLOCKED, FRIEND]);
    let dirs = Dirs::new("diskfl");
    let state_dir = dirs.run_dir.join("state");
    let fs = SmallFs::mount(&state_dir, "256k");
    let state_file = state_dir.join("apifw.state.json");
    dirs.write_policy(&format!(
        "xdp_mode = \"skb\"\n[block]\ncidrs = [\"{BLOCKED}/32\"]\n[daemon]\naudit_log = \"{}\"\nstate_file = \"{}\"\n",
        dirs.audit_log().display(),
        state_file.display()
    ));
    let daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let receiver = Receiver::start(&lab);
    // One runtime change that must survive everything below.
    let output = dirs.cli(&["block", "add", "203.0.113.1/32"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let saved = std::fs::read(&state_file).expect("state file written");

    for (case, prepare) in [("full", "fill"), ("read-only", "ro")] {
        let filler = match prepare {
            "fill" => Some(fs.fill()),
            _ => {
                fs.remount("ro");
                None
            }
        };
        let output = dirs.cli(&["block", "add", &format!("{FRIEND}/32")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{case}: block add succeeded");
        assert!(
            stderr.contains(&state_file.display().to_string()),
            "{case}: the error must name the state file: {stderr}"
        );
        // Enforcement unchanged: the friend still passes, the blocked source is still dropped.
        let before = receiver.from(FRIEND);
        send_and_settle(&lab, &dirs, &receiver, FRIEND, 10);
        assert_eq!(
            receiver.from(FRIEND) - before,
            10,
            "{case}: a refused change was enforced"
        );
        // Nothing half-written: the state file is the old one, no temporary file is left.
        assert_eq!(
            std::fs::read(&state_file).expect("state file"),
            saved,
            "{case}: state file changed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&state_dir)
            .expect("read state dir")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "apifw.state.json" && name != "filler")
            .collect();
        assert!(leftovers.is_empty(), "{case}: left behind {leftovers:?}");
        let listed = dirs.cli_json(&["block", "list"]).to_string();
        assert!(
            !listed.contains(&FRIEND.to_string()),
            "{case}: listed {listed}"
        );
        // Space back / writable again: the same change now works.
        match filler {
            Some(filler) => std::fs::remove_file(filler).expect("remove filler"),
            None => fs.remount("rw"),
        }
    }
    let output = dirs.cli(&["block", "add", &format!("{FRIEND}/32")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let before = blocked_drops(&dirs);
    traffic::send(&lab, FRIEND, 10);
    wait_for("the friend to be blocked", Duration::from_secs(10), || {
        blocked_drops(&dirs) == before + 10
    });
    drop(daemon);
}
