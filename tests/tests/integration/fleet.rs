//! The fleet lab: two apifw hosts and one real CrowdSec Local API (Debian's `crowdsec`, LAPI
//! only, in a namespace of its own), each host a daemon protecting its server's veth and
//! polling the LAPI over a second link that apifw does not protect.
//!
//! ```text
//!  client A ──veth (XDP)── host A ──link── LAPI ──link── host B ──(XDP) veth── client B
//! ```
//!
//! Decisions are made with `cscli`, as an operator would; the hosts' verdicts are read from
//! their counters, exactly (the labs carry no other frames). Propagation times are printed, not
//! asserted: the waits are hang guards only.
//!
//! Needs root and `crowdsec`/`cscli` (`cargo xtask setup` installs them, offline).

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs},
    lapi::Lapi,
    netns::{Netns, SERVER_ADDR, VethLab},
    support::wait_for,
};
use firewall_common::{Action, Reason};
use firewall_userspace::dataplane::stats::Snapshot;

/// Banned by an `Ip` decision.
const BANNED_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);
/// Inside the `Range` decision's prefix.
const IN_BANNED_RANGE: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 9);
const BANNED_RANGE: &str = "198.18.7.0/24";
/// Never decided on.
const NEUTRAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Banned by a decision made while the LAPI's hosts could not reach it.
const LATE_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 78);

const SOURCES: [Ipv4Addr; 4] = [BANNED_HOST, IN_BANNED_RANGE, NEUTRAL, LATE_HOST];

/// Generous bound on anything the lab waits for; the poll interval is 1 s.
const PATIENCE: Duration = Duration::from_secs(30);

/// One apifw host: its lab (server and client namespaces), directories and the LAPI's address
/// as it reaches it.
struct Host {
    name: &'static str,
    dirs: Dirs,
    lab: VethLab,
    _daemon: Option<Daemon>,
}

impl Host {
    /// Builds the host's lab and joins its server namespace to the LAPI's namespace by a link
    /// of its own (`index` picks the /30 in 198.51.100.0/24).
    fn new(
        name: &'static str,
        tag: &str,
        lapi_ns: &Netns,
        index: u8,
        sources: &[Ipv4Addr],
    ) -> (Self, Ipv4Addr) {
        let lab = VethLab::new(tag, sources);
        let suffix = std::process::id() % 100_000;
        let lapi_if = format!("l{tag}{suffix}");
        let host_if = format!("h{tag}{suffix}");
        assert!(lapi_if.len() <= 15, "{lapi_if} too long");
        let lapi_addr = Ipv4Addr::new(198, 51, 100, 4 * index + 1);
        let host_addr = Ipv4Addr::new(198, 51, 100, 4 * index + 2);
        lapi_ns.ip(&[
            "link",
            "add",
            &lapi_if,
            "type",
            "veth",
            "peer",
            "name",
            &host_if,
            "netns",
            lab.server.name(),
        ]);
        lapi_ns.ip(&["addr", "add", &format!("{lapi_addr}/30"), "dev", &lapi_if]);
        lapi_ns.ip(&["link", "set", &lapi_if, "up"]);
        lab.server
            .ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        lab.server.ip(&["link", "set", &host_if, "up"]);
        let dirs = Dirs::new(&format!("fleet-{tag}"));
        (
            Self {
                name,
                dirs,
                lab,
                _daemon: None,
            },
            lapi_addr,
        )
    }

    fn start(&mut self, policy: &str) {
        self.dirs.write_policy(policy);
        self._daemon = Some(Daemon::start(
            &self.lab.server,
            &self.dirs,
            &self.lab.server_if,
        ));
    }

    /// The daemon's CrowdSec link, from `apifw status --json`.
    fn crowdsec(&self) -> serde_json::Value {
        self.dirs.cli_json(&["status"])["crowdsec"].clone()
    }

    /// The prefixes of the bans whose reason names CrowdSec.
    fn crowdsec_bans(&self) -> Vec<String> {
        self.bans()
            .into_iter()
            .filter(|(_, reason)| reason.to_lowercase().contains("crowdsec"))
            .map(|(prefix, _)| prefix)
            .collect()
    }

    /// Every ban in force: its prefix and reason, from `apifw bans --json`.
    fn bans(&self) -> Vec<(String, String)> {
        let bans = self.dirs.cli_json(&["bans"]);
        bans["bans"]
            .as_array()
            .expect("bans is an array")
            .iter()
            .map(|ban| {
                (
                    ban["prefix"].as_str().expect("prefix").to_owned(),
                    ban["reason"].as_str().expect("reason").to_owned(),
                )
            })
            .collect()
    }

    /// Sends `count` datagrams from each of `sources` and returns how the counters moved, once
    /// every datagram has been counted.
    fn verdicts(&self, sources: &[Ipv4Addr], count: usize) -> Vec<(Action, Reason, u64)> {
        let before = self.dirs.stats();
        for &source in sources {
            self.lab.client.enter(move || {
                let socket = UdpSocket::bind((source, 0)).expect("bind client UDP socket");
                for i in 0..count {
                    socket
                        .send_to(format!("datagram {i}").as_bytes(), (SERVER_ADDR, 7000))
                        .expect("send");
                }
            });
        }
        let expected = (sources.len() * count) as u64;
        let mut moved = Vec::new();
        wait_for(
            &format!("host {} to count {expected} datagrams", self.name),
            PATIENCE,
            || {
                moved = deltas(&before, &self.dirs.stats());
                moved.iter().map(|(_, _, n)| n).sum::<u64>() >= expected
            },
        );
        moved
    }
}

/// Per-(action, reason) packet deltas between two snapshots; pairs that did not move are left
/// out.
fn deltas(before: &Snapshot, after: &Snapshot) -> Vec<(Action, Reason, u64)> {
    after
        .counters
        .iter()
        .map(|row| {
            let old = before.get(row.action, row.reason).packets;
            (row.action, row.reason, row.packets - old)
        })
        .filter(|(_, _, delta)| *delta > 0)
        .collect()
}

fn policy(lapi_url: &str, key: &str) -> String {
    format!(
        r#"
[crowdsec]
lapi_url = "{lapi_url}"
api_key = "{key}"
poll_interval = "1s"
timeout = "3s"
connect_timeout = "1s"
"#
    )
}

/// Waits until every host holds exactly `wanted` among its CrowdSec bans (in any order);
/// returns how long it took after `since`, per host.
fn until_bans(hosts: &[&Host], wanted: &[&str], since: Instant) -> Vec<Duration> {
    hosts
        .iter()
        .map(|host| {
            let mut wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
            wanted.sort();
            let mut held = Vec::new();
            wait_for(
                &format!("host {} to hold the CrowdSec bans {wanted:?}", host.name),
                PATIENCE,
                || {
                    held = host.crowdsec_bans();
                    held.sort();
                    held == wanted
                },
            );
            since.elapsed()
        })
        .collect()
}

#[test]
fn a_lapi_decision_is_enforced_on_every_host_and_survives_a_lapi_outage() {
    let lapi_ns = Netns::new("flL");
    let mut lapi = Lapi::start(&lapi_ns, "fleet");
    let (mut host_a, url_a) = Host::new("A", "fla", &lapi_ns, 0, &SOURCES);
    let (mut host_b, url_b) = Host::new("B", "flb", &lapi_ns, 1, &SOURCES);
    host_a.start(&policy(&Lapi::url_at(url_a), &lapi.add_bouncer("apifw-a")));
    host_b.start(&policy(&Lapi::url_at(url_b), &lapi.add_bouncer("apifw-b")));
    let hosts = [&host_a, &host_b];
    for host in hosts {
        wait_for(
            &format!("host {} to sync with the LAPI", host.name),
            PATIENCE,
            || host.crowdsec()["syncs"].as_u64().unwrap_or(0) >= 1,
        );
        assert_eq!(
            host.verdicts(&SOURCES, 5),
            vec![(Action::Pass, Reason::Default, 20)],
            "host {}: nothing decided yet, everything passes",
            host.name
        );
    }

    // An operator bans a host and a range.
    let decided = Instant::now();
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        &BANNED_HOST.to_string(),
        "--duration",
        "1h",
    ]);
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--range",
        BANNED_RANGE,
        "--duration",
        "30m",
    ]);
    let took = until_bans(&hosts, &["203.0.113.77/32", BANNED_RANGE], decided);
    println!(
        "fleet: two decisions reached host A in {:?}, host B in {:?}",
        took[0], took[1]
    );
    for host in hosts {
        assert_eq!(
            host.verdicts(&SOURCES, 10),
            vec![
                (Action::Pass, Reason::Default, 20),
                (Action::Drop, Reason::Banned, 10),
                (Action::Drop, Reason::SubnetBanned, 10),
            ],
            "host {}: the banned host and range are dropped in XDP, the others pass",
            host.name
        );
        assert_eq!(host.crowdsec()["decisions"], 2, "host {}", host.name);
    }

    // The LAPI goes away: the bans stay enforced, the failures are counted.
    lapi.stop();
    for host in hosts {
        let errors = host.crowdsec()["errors"].as_u64().unwrap_or(0);
        wait_for(
            &format!("host {} to notice the LAPI is gone", host.name),
            PATIENCE,
            || host.crowdsec()["errors"].as_u64().unwrap_or(0) > errors,
        );
        assert_eq!(
            host.verdicts(&SOURCES, 10),
            vec![
                (Action::Pass, Reason::Default, 20),
                (Action::Drop, Reason::Banned, 10),
                (Action::Drop, Reason::SubnetBanned, 10),
            ],
            "host {}: the bans outlive the LAPI's outage",
            host.name
        );
    }

    // Once the LAPI is back, the hosts follow it again: a new decision and a deleted one reach
    // both.
    lapi.resume();
    let resumed = Instant::now();
    lapi.cscli_ok(&[
        "decisions",
        "add",
        "--ip",
        &LATE_HOST.to_string(),
        "--duration",
        "1h",
    ]);
    lapi.cscli_ok(&["decisions", "delete", "--ip", &BANNED_HOST.to_string()]);
    let took = until_bans(&hosts, &["203.0.113.78/32", BANNED_RANGE], resumed);
    println!(
        "fleet: after the LAPI came back, a new and a deleted decision reached host A in {:?}, \
         host B in {:?}",
        took[0], took[1]
    );
    for host in hosts {
        assert_eq!(
            host.verdicts(&SOURCES, 10),
            vec![
                (Action::Pass, Reason::Default, 20),
                (Action::Drop, Reason::Banned, 10),
                (Action::Drop, Reason::SubnetBanned, 10),
            ],
            "host {}: the lifted host passes, the late one is dropped",
            host.name
        );
        let link = host.crowdsec();
        assert_eq!(link["decisions"], 2, "host {}: {link}", host.name);
        assert_eq!(
            link["last_error"],
            serde_json::Value::Null,
            "host {}",
            host.name
        );
    }
    assert!(
        !lapi.logs().is_empty(),
        "the LAPI logged nothing: is it the configured one?"
    );
}

/// Reported to host A's jail; never decided on by an operator.
const REPORTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

#[test]
fn a_jail_ban_on_one_host_is_dropped_on_the_other() {
    let lapi_ns = Netns::new("fjL");
    let lapi = Lapi::start(&lapi_ns, "fleet-jail");
    let sources = [REPORTED, NEUTRAL];
    let (mut host_a, url_a) = Host::new("A", "fja", &lapi_ns, 0, &sources);
    let (mut host_b, url_b) = Host::new("B", "fjb", &lapi_ns, 1, &sources);
    lapi.add_machine("apifw-a", "fleet-lab-password-a");
    let bouncer_a = policy(&Lapi::url_at(url_a), &lapi.add_bouncer("apifw-a"));
    host_a.start(&format!(
        r#"{bouncer_a}machine_id = "apifw-a"
password = "fleet-lab-password-a"

[[jail]]
name = "app-reports"
max_retry = 5
ban_time = "10m"
"#
    ));
    host_b.start(&policy(&Lapi::url_at(url_b), &lapi.add_bouncer("apifw-b")));
    for host in [&host_a, &host_b] {
        wait_for(
            &format!("host {} to sync with the LAPI", host.name),
            PATIENCE,
            || host.crowdsec()["syncs"].as_u64().unwrap_or(0) >= 1,
        );
    }
    assert_eq!(
        host_b.verdicts(&sources, 5),
        vec![(Action::Pass, Reason::Default, 10)],
        "host B: nothing banned yet"
    );

    // A local service on host A reports the source; A's jail bans it and pushes the ban.
    let reported = Instant::now();
    let outcome = host_a.dirs.cli_json(&[
        "report",
        &REPORTED.to_string(),
        "--reason",
        "credential stuffing",
        "--weight",
        "5",
    ]);
    assert_eq!(outcome["banned"], true, "{outcome}");
    let took = until_bans(&[&host_b], &["203.0.113.99/32"], reported);
    println!(
        "fleet: a jail ban on host A was enforced on host B after {:?}",
        took[0]
    );
    assert_eq!(
        host_b.verdicts(&sources, 10),
        vec![
            (Action::Pass, Reason::Default, 10),
            (Action::Drop, Reason::Banned, 10),
        ],
        "host B drops the source host A's jail banned"
    );
    let decisions = lapi.cscli_ok(&["decisions", "list", "--origin", "apifw", "-o", "json"]);
    assert!(
        decisions.contains("\"203.0.113.99\""),
        "the LAPI holds host A's decision: {decisions}"
    );

    // Host A gets its own decision back through the stream: applied once, its jail's ban stays
    // the one in force (one ban, not relabelled as CrowdSec's).
    wait_for("host A to get its own decision back", PATIENCE, || {
        host_a.crowdsec()["decisions"] == 1
    });
    let held: Vec<(String, String)> = host_a
        .bans()
        .into_iter()
        .filter(|(prefix, _)| prefix == "203.0.113.99/32")
        .collect();
    assert_eq!(held.len(), 1, "host A: {held:?}");
    assert!(
        !held[0].1.to_lowercase().contains("crowdsec"),
        "host A: the jail's ban stays the one in force: {held:?}"
    );
    assert_eq!(
        host_a.verdicts(&sources, 10),
        vec![
            (Action::Pass, Reason::Default, 10),
            (Action::Drop, Reason::Banned, 10),
        ],
        "host A drops it too"
    );
    let link = host_a.crowdsec();
    assert_eq!(link["push"]["pushed"], 1, "host A pushed one ban: {link}");
    assert_eq!(link["push"]["errors"], 0, "host A: {link}");
    assert_eq!(link["push"]["queued"], 0, "host A: {link}");
}
