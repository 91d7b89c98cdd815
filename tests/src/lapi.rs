//! A private CrowdSec Local API (LAPI) for the fleet labs: Debian's `crowdsec` run LAPI-only
//! (`-no-cs`) inside a namespace of the test's, with its own configuration, sqlite database and
//! logs in a directory of the test's, stopped and removed on drop.
//!
//! Why a configuration of its own rather than `/etc/crowdsec`: tests run in parallel and must
//! not share a database or a port with each other or with a LAPI the machine runs for real. The
//! hub, the profiles and the simulation file are read from the package's own places (nothing in
//! them is written). `cargo xtask setup` installs the package offline (deploy/crowdsec/LAB-NOTES.md
//! says how); the agent (`crowdsec` without `-no-cs`) is never started, since its log acquisition
//! needs journald.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// The LAPI's port, inside its namespace.
pub const PORT: u16 = 8080;

/// A running LAPI, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Lapi {
    dir: PathBuf,
    netns_path: PathBuf,
    child: Option<Child>,
}

impl Lapi {
    /// Writes a configuration under a fresh directory named after `tag`, registers the machine
    /// `cscli` logs in as, and starts the LAPI in `netns`, listening on every address of that
    /// namespace (port [`PORT`]); returns once it answers.
    pub fn start(netns: &Netns, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("apifw-lapi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create the LAPI's directory");
        std::fs::write(dir.join("config.yaml"), config(&dir)).expect("write the LAPI config");
        let mut lapi = Self {
            dir,
            netns_path: netns.path(),
            child: None,
        };
        // Registers the machine `cscli decisions` logs in as, straight in the database (the LAPI
        // need not run), and writes its credentials where the configuration points.
        let credentials = lapi.dir.join("local_api_credentials.yaml");
        lapi.cscli_ok(&[
            "machines",
            "add",
            "apifw-lab-cscli",
            "--auto",
            "--force",
            "--url",
            &format!("http://127.0.0.1:{PORT}"),
            "-f",
            credentials.to_str().expect("utf-8 path"),
        ]);
        lapi.resume();
        lapi
    }

    /// Starts the LAPI again after [`Lapi::stop`] (same database, same keys).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the LAPI is running already");
        let log = std::fs::File::create(self.dir.join("stdout.log")).expect("create LAPI log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path.display()))
            .arg("crowdsec")
            .arg("-c")
            .arg(self.config())
            .arg("-no-cs")
            .current_dir(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn crowdsec (is Debian's crowdsec installed? `cargo xtask setup`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready when a bouncer-less request gets an HTTP answer (403: no key) on the port.
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("crowdsec exited with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the LAPI did not answer within 30 s: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the LAPI (SIGTERM, then waits); its database stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The URL of the LAPI as a host reaches it through `address` (an address of the LAPI's
    /// namespace).
    pub fn url_at(address: Ipv4Addr) -> String {
        format!("http://{address}:{PORT}")
    }

    /// `cscli -c CONFIG ARGS`, in the LAPI's namespace.
    pub fn cscli(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path.display()))
            .arg("cscli")
            .arg("-c")
            .arg(self.config())
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|err| panic!("cannot run cscli {args:?}: {err}"))
    }

    /// Like [`Lapi::cscli`], panicking with its output when it fails; returns stdout.
    pub fn cscli_ok(&self, args: &[&str]) -> String {
        let output = self.cscli(args);
        assert!(
            output.status.success(),
            "cscli {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Registers a bouncer and returns its API key.
    pub fn add_bouncer(&self, name: &str) -> String {
        self.cscli_ok(&["bouncers", "add", name, "-o", "raw"])
            .trim()
            .to_owned()
    }

    /// Registers a machine (a watcher: what pushes alerts) with `password`.
    pub fn add_machine(&self, name: &str, password: &str) {
        self.cscli_ok(&["machines", "add", name, "--password", password, "--force"]);
    }

    /// What the LAPI logged so far (its own log and its stdout).
    pub fn logs(&self) -> String {
        ["crowdsec_api.log", "crowdsec.log", "stdout.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// Whether the LAPI answers HTTP on its port (any status).
    fn answers(&self) -> bool {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path.display()))
            .args([
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{PORT}/v1/decisions"),
            ])
            .output();
        output.is_ok_and(|output| {
            let code = String::from_utf8_lossy(&output.stdout);
            code.trim() != "000" && !code.trim().is_empty()
        })
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The LAPI's configuration: everything it writes under `dir`, listening on every address of its
/// namespace, no Central API, no Prometheus listener (tests run several LAPIs at once).
fn config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {dir}/
  working_dir: .
config_paths:
  config_dir: {dir}/
  data_dir: {dir}/data/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: {dir}/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
cscli:
  output: human
db_config:
  log_level: info
  type: sqlite
  db_path: {dir}/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {dir}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 0.0.0.0:{PORT}
    profiles_path: /etc/crowdsec/profiles.yaml
    console_path: {dir}/console.yaml
    trusted_ips:
      - 127.0.0.1
prometheus:
  enabled: false
"
    )
}
