//! Jails end to end (issue #8): a real nginx (Debian's) in the lab's server namespace guards a
//! path with HTTP basic auth and writes its access log; the real daemon follows it and bans a
//! brute-forcing client in XDP. Also: log rotation under attack, abuse reports, and fail2ban
//! banning through `deploy/fail2ban/action.d/apifw.conf`.
//!
//! Needs root, nginx, openssl and fail2ban (`cargo xtask setup` installs them). Every test
//! builds its own namespaces, directories and nginx; nothing listens outside the lab.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apifw_tests::{
    daemon::{Daemon, Dirs, apifw_bin},
    netns::{Netns, SERVER_ADDR, VethLab, connect_from},
    support::wait_for,
    traffic::{self, HttpResponse},
};
use firewall_common::{Action, Reason};
use nix::sys::signal::Signal;

/// The brute-forcing client.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A client with the right password.
const LEGIT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// An allowlisted client that mistypes its password.
const PARTNER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

const HTTP_PORT: u16 = 8080;
/// `admin:secret`, base64.
const GOOD_AUTH: &str = "Basic YWRtaW46c2VjcmV0";
/// `admin:wrong`, base64.
const BAD_AUTH: &str = "Basic YWRtaW46d3Jvbmc=";

/// A private nginx in `netns` listening on the lab's server address only; stopped on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with its configuration, pid, logs and temporary files under `dir`, serving
    /// `/` to anyone and `/admin/` to `admin:secret`.
    fn start(netns: &Netns, dir: &Path) -> Self {
        let www = dir.join("www");
        std::fs::create_dir_all(www.join("admin")).expect("www");
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
        std::fs::write(www.join("index.html"), "public\n").expect("index");
        std::fs::write(www.join("admin/index.html"), "welcome\n").expect("admin");
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", "secret"])
            .output()
            .expect("openssl passwd (install openssl)");
        assert!(hash.status.success(), "openssl passwd failed");
        let hash = String::from_utf8(hash.stdout).expect("utf-8");
        std::fs::write(dir.join("htpasswd"), format!("admin:{}", hash.trim())).expect("htpasswd");
        let d = dir.display();
        let config = format!(
            "user root root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             access_log {d}/access.log combined;\nclient_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\nfastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\nscgi_temp_path {d}/tmp/scgi;\n\
             server {{\nlisten {SERVER_ADDR}:{HTTP_PORT};\nroot {d}/www;\n\
             location /admin/ {{ auth_basic \"apifw test\"; auth_basic_user_file {d}/htpasswd; }}\n\
             }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx.conf");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(["nginx", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (install nginx)");
        let nginx = Self {
            child,
            dir: dir.to_owned(),
        };
        wait_for(
            "nginx to write its pid file",
            Duration::from_secs(10),
            || nginx.dir.join("nginx.pid").exists(),
        );
        nginx
    }

    fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// SIGUSR1: nginx reopens its logs (what logrotate's postrotate does).
    fn reopen_logs(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGUSR1,
        )
        .expect("SIGUSR1 nginx");
    }

    /// Lines of the access log `file` from `source`.
    fn lines_from(file: &Path, source: Ipv4Addr) -> usize {
        let prefix = format!("{source} ");
        std::fs::read_to_string(file)
            .map(|text| text.lines().filter(|l| l.starts_with(&prefix)).count())
            .unwrap_or(0)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and workers.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGQUIT,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET target` from `source` in the lab's client namespace.
fn get(
    lab: &VethLab,
    source: Ipv4Addr,
    target: &str,
    auth: Option<&str>,
) -> std::io::Result<HttpResponse> {
    let target = target.to_owned();
    let auth = auth.map(str::to_owned);
    lab.client.enter(move || {
        let stream = connect_from(source, HTTP_PORT, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|auth| vec![("Authorization", auth)])
            .unwrap_or_default();
        traffic::http_get_over(stream, &SERVER_ADDR.to_string(), &target, &headers)
    })
}

fn status(lab: &VethLab, source: Ipv4Addr, target: &str, auth: Option<&str>) -> u16 {
    get(lab, source, target, auth)
        .unwrap_or_else(|err| panic!("GET {target} from {source}: {err}"))
        .status
}

/// The jail called `name` in `apifw jails --json`.
fn jail(dirs: &Dirs, name: &str) -> serde_json::Value {
    let jails = dirs.cli_json(&["jails"]);
    jails
        .as_array()
        .expect("jails")
        .iter()
        .find(|jail| jail["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no jail {name} in {jails}"))
}

fn banned(dirs: &Dirs, source: Ipv4Addr) -> bool {
    let prefix = format!("{source}/32");
    dirs.cli_json(&["ban", "list"])
        .as_array()
        .expect("bans")
        .iter()
        .any(|row| row["prefix"] == prefix.as_str())
}

/// Sends 10 datagrams from `source` and returns how many more the XDP program dropped as
/// banned.
fn banned_drops_of_ten(lab: &VethLab, dirs: &Dirs, source: Ipv4Addr) -> u64 {
    // Let retransmissions of an earlier, refused connection die down first.
    std::thread::sleep(Duration::from_millis(300));
    let before = dirs.stats().get(Action::Drop, Reason::Banned).packets;
    traffic::send(lab, source, 10);
    std::thread::sleep(Duration::from_millis(300));
    dirs.stats().get(Action::Drop, Reason::Banned).packets - before
}

/// The ban record of `source` in the state file: (expires_at − added_at, comment).
fn ban_record(dirs: &Dirs, source: Ipv4Addr) -> (u64, String) {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dirs.state_file()).expect("state file"))
            .expect("state JSON");
    let prefix = format!("{source}/32");
    let ban = state["bans"]
        .as_array()
        .expect("bans")
        .iter()
        .find(|ban| ban["cidr"] == prefix.as_str())
        .unwrap_or_else(|| panic!("no ban of {source} in {state}"))
        .clone();
    (
        ban["expires_at"].as_u64().expect("expires_at")
            - ban["added_at"].as_u64().expect("added_at"),
        ban["comment"].as_str().unwrap_or("").to_owned(),
    )
}

fn jail_policy(log: &Path, extra: &str) -> String {
    format!(
        "[allow]\ncidrs = [\"{PARTNER}\"]\n\n[[jail]]\nname = \"nginx-auth\"\nlog = \"{}\"\n\
         status = [401]\npath = \"^/admin\"\n{extra}\n",
        log.display()
    )
}

#[test]
fn brute_force_is_banned_in_xdp_and_the_ban_grows_across_a_restart() {
    let lab = VethLab::new("jlog", &[ATTACKER, LEGIT, PARTNER]);
    let dirs = Dirs::new("jlog");
    let nginx = Nginx::start(&lab.server, &dirs.run_dir.join("nginx"));
    dirs.write_policy(&jail_policy(
        &nginx.access_log(),
        "max_retry = 3\nfind_time = \"1m\"\nban_time = \"5s\"\n\
         ban_time_increment = { factor = 2, max = \"1m\" }",
    ));
    let mut daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let log = nginx.access_log();

    assert_eq!(status(&lab, LEGIT, "/", None), 200);
    // Three wrong passwords: counted one by one, the third bans.
    for attempt in 1..=3u64 {
        assert_eq!(status(&lab, ATTACKER, "/admin/", Some(BAD_AUTH)), 401);
        wait_for(
            "the jail to count the failure",
            Duration::from_secs(10),
            || jail(&dirs, "nginx-auth")["matches"] == attempt,
        );
        if attempt < 3 {
            assert!(!banned(&dirs, ATTACKER), "banned before max_retry");
        }
    }
    wait_for("the ban", Duration::from_secs(10), || {
        banned(&dirs, ATTACKER)
    });
    let view = jail(&dirs, "nginx-auth");
    assert_eq!(view["bans"], 1, "{view}");
    assert_eq!(
        view["current_bans"][0]["source"],
        ATTACKER.to_string(),
        "{view}"
    );
    assert_eq!(view["last_match"]["source"], ATTACKER.to_string(), "{view}");
    assert_eq!(Nginx::lines_from(&log, ATTACKER), 3);
    let (ttl, comment) = ban_record(&dirs, ATTACKER);
    assert_eq!(ttl, 5, "the first ban lasts ban_time");
    assert!(
        comment.starts_with("jail nginx-auth: 3 matches"),
        "{comment}"
    );

    // Banned in XDP: the next attempt never reaches nginx, datagrams drop as banned.
    assert!(
        get(&lab, ATTACKER, "/admin/", Some(BAD_AUTH)).is_err(),
        "the banned client still reaches nginx"
    );
    assert_eq!(banned_drops_of_ten(&lab, &dirs, ATTACKER), 10);
    assert_eq!(Nginx::lines_from(&log, ATTACKER), 3);
    // The legitimate client is unaffected.
    assert_eq!(status(&lab, LEGIT, "/admin/", Some(GOOD_AUTH)), 200);

    // The allowlisted partner fails four times: counted, never banned.
    for _ in 0..4 {
        assert_eq!(status(&lab, PARTNER, "/admin/", Some(BAD_AUTH)), 401);
    }
    wait_for(
        "the partner's failures to be counted",
        Duration::from_secs(10),
        || jail(&dirs, "nginx-auth")["matches"] == 7,
    );
    assert_eq!(jail(&dirs, "nginx-auth")["allowlisted"], 1);
    assert!(!banned(&dirs, PARTNER));
    assert_eq!(status(&lab, PARTNER, "/", None), 200);

    // The ban expires and the attacker is served again.
    wait_for("the ban to expire", Duration::from_secs(20), || {
        !banned(&dirs, ATTACKER)
    });
    assert_eq!(status(&lab, ATTACKER, "/", None), 200);

    // A restart keeps the offender history (and the log position): the second ban is twice as
    // long.
    let (exit, _) = daemon.stop(Signal::SIGTERM);
    assert!(exit.success(), "{}", daemon_log_hint(&dirs));
    daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    for _ in 0..3 {
        assert_eq!(status(&lab, ATTACKER, "/admin/", Some(BAD_AUTH)), 401);
    }
    wait_for("the second ban", Duration::from_secs(10), || {
        banned(&dirs, ATTACKER)
    });
    let view = jail(&dirs, "nginx-auth");
    assert_eq!(
        view["matches"], 3,
        "nothing re-read after the restart: {view}"
    );
    assert_eq!(view["current_bans"][0]["ban_count"], 2, "{view}");
    assert_eq!(ban_record(&dirs, ATTACKER).0, 10, "ban_time × factor");
    assert_eq!(banned_drops_of_ten(&lab, &dirs, ATTACKER), 10);
    let audit = std::fs::read_to_string(dirs.audit_log()).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|line| line.contains("\"actor\":\"jail nginx-auth\"") && line.contains("ban.add")),
        "{audit}"
    );
    let log_text = daemon.log();
    assert!(log_text.contains("jail banned a source"), "{log_text}");
}

fn daemon_log_hint(dirs: &Dirs) -> String {
    format!("daemon logs in {}", dirs.run_dir.display())
}

#[test]
fn rotation_during_an_attack_loses_and_repeats_no_match() {
    let lab = VethLab::new("jrot", &[ATTACKER]);
    let dirs = Dirs::new("jrot");
    let nginx = Nginx::start(&lab.server, &dirs.run_dir.join("nginx"));
    dirs.write_policy(&jail_policy(&nginx.access_log(), "max_retry = 1000"));
    let mut daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let log = nginx.access_log();
    let renamed = log.with_extension("log.1");
    let copied = log.with_extension("log.2");
    // Each attempt its own target, as each credential-stuffing attempt logs its own user name:
    // a truncated log refilled with byte-identical lines cannot be told from the old one (see
    // `jails/logfile.rs`).
    let attempts = std::cell::Cell::new(0);
    let attack = |n: usize| {
        for _ in 0..n {
            attempts.set(attempts.get() + 1);
            let target = format!("/admin/?attempt={}", attempts.get());
            assert_eq!(status(&lab, ATTACKER, &target, Some(BAD_AUTH)), 401);
        }
    };

    attack(10);
    // Rename + new file (logrotate's default), with requests between the rename and nginx
    // reopening its log: they land in the renamed file.
    std::fs::rename(&log, &renamed).expect("rename");
    attack(5);
    nginx.reopen_logs();
    wait_for("nginx to reopen its log", Duration::from_secs(10), || {
        log.exists()
    });
    attack(5);
    // copytruncate, with requests the jail has not read yet when the log is copied: they are
    // only in the copy, which the follower finds by its fingerprints.
    wait_for("the jail to catch up", Duration::from_secs(10), || {
        jail(&dirs, "nginx-auth")["matches"] == 20
    });
    attack(5);
    std::fs::copy(&log, &copied).expect("copy");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    attack(5);
    // nginx logged the 30 requests across the files: 15 in the renamed one, 10 in the copy
    // and 5 after the truncation.
    assert_eq!(
        [&renamed, &copied, &log].map(|file| Nginx::lines_from(file, ATTACKER)),
        [15, 10, 5]
    );
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(15);
    while last["matches"] != 30 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 30 matches: {last}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        last = jail(&dirs, "nginx-auth");
    }
    // Polls after that find nothing new: nothing is read twice.
    std::thread::sleep(Duration::from_millis(2500));
    let view = jail(&dirs, "nginx-auth");
    assert_eq!(view["matches"], 30, "{view}");
    assert_eq!(view["lines"], 30, "{view}");
    assert_eq!(view["unparsed"], 0, "{view}");
    assert_eq!(view["bans"], 0, "{view}");
}

#[test]
fn abuse_reports_ban_when_their_weight_reaches_max_retry() {
    let lab = VethLab::new("jrep", &[ATTACKER, PARTNER]);
    let dirs = Dirs::new("jrep");
    dirs.write_policy(&format!(
        "[allow]\ncidrs = [\"{PARTNER}\"]\n\n[[jail]]\nname = \"app\"\nmax_retry = 5\n\
         ban_time = \"1h\"\n"
    ));
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let attacker = ATTACKER.to_string();
    let report = |source: &str, weight: &str| {
        dirs.cli_json(&[
            "report",
            source,
            "--reason",
            "replayed JWT",
            "--weight",
            weight,
        ])
    };
    let first = report(&attacker, "2");
    assert_eq!(
        (first["count"].clone(), first["banned"].clone()),
        (2.into(), false.into()),
        "{first}"
    );
    let second = report(&attacker, "2");
    assert_eq!(second["count"], 4, "{second}");
    assert!(!banned(&dirs, ATTACKER));
    let third = report(&attacker, "1");
    assert_eq!(third["banned"], true, "{third}");
    assert_eq!(third["ban_ttl_secs"], 3600, "{third}");
    assert!(banned(&dirs, ATTACKER));
    assert_eq!(banned_drops_of_ten(&lab, &dirs, ATTACKER), 10);
    let again = report(&attacker, "1");
    assert_eq!(again["banned"], true, "{again}");
    assert_eq!(jail(&dirs, "app")["bans"], 1);

    // An allowlisted source is never banned, whatever the weight.
    let partner = report(&PARTNER.to_string(), "100");
    assert_eq!(partner["allowlisted"], true, "{partner}");
    assert_eq!(partner["banned"], false, "{partner}");
    assert!(!banned(&dirs, PARTNER));
    assert_eq!(jail(&dirs, "app")["allowlisted"], 1);

    // Bad reports are refused and change nothing.
    for args in [
        vec!["report", "198.51.100.0/24", "--reason", "x"],
        vec!["report", "198.51.100.9", "--reason", "x", "--jail", "nope"],
    ] {
        let output = dirs.cli(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
    }
    // A manual unban lifts a jail's ban too, and the jail counts the source again.
    dirs.cli_json(&["ban", "del", &attacker]);
    assert_eq!(report(&attacker, "1")["count"], 1);
}

#[test]
fn fail2ban_action_bans_through_the_daemon() {
    let lab = VethLab::new("jf2b", &[ATTACKER]);
    let dirs = Dirs::new("jf2b");
    dirs.write_policy("");
    let _daemon = Daemon::start(&lab.server, &dirs, &lab.server_if);
    let socket = dirs.run_dir.join("apifw.sock");

    // A private fail2ban: its own configuration, socket, pid file and log, in the foreground.
    let conf = dirs.run_dir.join("fail2ban");
    for sub in ["action.d", "filter.d"] {
        std::fs::create_dir_all(conf.join(sub)).expect("fail2ban dirs");
    }
    let action =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fail2ban/action.d/apifw.conf");
    std::fs::copy(&action, conf.join("action.d/apifw.conf")).expect("copy the action");
    let f2b_socket = conf.join("f2b.sock");
    std::fs::write(
        conf.join("fail2ban.conf"),
        format!(
            "[Definition]\nloglevel = INFO\nlogtarget = {c}/f2b.log\nsocket = {s}\n\
             pidfile = {c}/f2b.pid\ndbfile = :memory:\n",
            c = conf.display(),
            s = f2b_socket.display()
        ),
    )
    .expect("fail2ban.conf");
    std::fs::write(
        conf.join("filter.d/apifw-test.conf"),
        "[Definition]\nfailregex = ^auth failure from <HOST>$\ndatepattern = {NONE}\n",
    )
    .expect("filter");
    let watched = conf.join("watched.log");
    std::fs::write(&watched, "").expect("watched log");
    std::fs::write(
        conf.join("jail.conf"),
        format!(
            "[DEFAULT]\nbackend = polling\n\n[apifw-test]\nenabled = true\nfilter = apifw-test\n\
             logpath = {}\nmaxretry = 2\nbantime = 600\n\
             action = apifw[apifw=\"{}\", socket=\"{}\"]\n",
            watched.display(),
            apifw_bin().display(),
            socket.display()
        ),
    )
    .expect("jail.conf");
    let mut server = Command::new("fail2ban-server")
        .args(["-f", "-x", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(&f2b_socket)
        .arg("-p")
        .arg(conf.join("f2b.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fail2ban-server (install fail2ban)");
    struct Stop<'a>(&'a mut Child, PathBuf, PathBuf);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new("fail2ban-client")
                .arg("-c")
                .arg(&self.1)
                .arg("-s")
                .arg(&self.2)
                .arg("stop")
                .output();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut server, conf.clone(), f2b_socket.clone());
    let client = |args: &[&str]| {
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&f2b_socket)
            .args(args)
            .output()
            .expect("fail2ban-client")
    };
    wait_for(
        "fail2ban to start the jail",
        Duration::from_secs(30),
        || client(&["status", "apifw-test"]).status.success(),
    );

    // fail2ban's own detection: two failures in its watched log ban through apifw.
    std::fs::write(
        &watched,
        format!("auth failure from {ATTACKER}\nauth failure from {ATTACKER}\n"),
    )
    .expect("write watched log");
    wait_for(
        "fail2ban's ban to reach apifw",
        Duration::from_secs(30),
        || banned(&dirs, ATTACKER),
    );
    let (ttl, comment) = ban_record(&dirs, ATTACKER);
    assert_eq!(ttl, 600, "fail2ban's bantime");
    assert_eq!(comment, "fail2ban apifw-test");
    assert_eq!(banned_drops_of_ten(&lab, &dirs, ATTACKER), 10);

    // fail2ban's unban lifts it.
    let unban = client(&["set", "apifw-test", "unbanip", &ATTACKER.to_string()]);
    assert!(
        unban.status.success(),
        "{}",
        String::from_utf8_lossy(&unban.stderr)
    );
    wait_for(
        "fail2ban's unban to reach apifw",
        Duration::from_secs(15),
        || !banned(&dirs, ATTACKER),
    );
    // A manual ban through fail2ban too, then its unban after apifw already lifted it.
    let ban = client(&["set", "apifw-test", "banip", "198.51.100.77"]);
    assert!(
        ban.status.success(),
        "{}",
        String::from_utf8_lossy(&ban.stderr)
    );
    wait_for("banip", Duration::from_secs(15), || {
        banned(&dirs, Ipv4Addr::new(198, 51, 100, 77))
    });
    dirs.cli_json(&["ban", "del", "198.51.100.77"]);
    let unban = client(&["set", "apifw-test", "unbanip", "198.51.100.77"]);
    assert!(
        unban.status.success(),
        "{}",
        String::from_utf8_lossy(&unban.stderr)
    );
    let log = std::fs::read_to_string(conf.join("f2b.log")).unwrap_or_default();
    assert!(
        !log.contains("ERROR"),
        "fail2ban reported errors running the action:\n{log}"
    );
}
