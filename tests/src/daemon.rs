//! The real `apifw` binary, run as a daemon inside a test namespace and killed on drop.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

pub use firewall_userspace::dataplane::stats::Snapshot;
use firewall_userspace::paths::PinLayout;

use crate::netns::Netns;

/// Path of the `apifw` binary: `$APIFW_BIN`, else next to the test executable's `deps/` folder
/// (`cargo xtask test` builds it before running the tests).
pub fn apifw_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("APIFW_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("apifw");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p firewall-userspace --bins`; \
         `cargo xtask test` does) or set APIFW_BIN",
        bin.display()
    );
    bin
}

/// Runs `apifw ARGS` to completion (outside any namespace).
pub fn apifw(args: &[&str]) -> Output {
    Command::new(apifw_bin())
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run apifw {args:?}: {err}"))
}

/// Unique pin and run directories for one test, removed on drop.
#[derive(Debug)]
pub struct Dirs {
    /// Pin root on bpffs.
    pub pin_dir: PathBuf,
    /// Lock directory.
    pub run_dir: PathBuf,
    /// Where the test writes its policy.
    pub policy: PathBuf,
}

impl Dirs {
    /// Directories named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let id = format!("{tag}-{}", std::process::id());
        let run_dir = std::env::temp_dir().join(format!("apifw-test-{id}"));
        std::fs::create_dir_all(&run_dir).expect("create run dir");
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/apifw-test-{id}")),
            policy: run_dir.join("policy.toml"),
            run_dir,
        }
    }

    /// Writes the policy file. Unless the text has its own `[daemon]` table, the audit log goes
    /// to [`Dirs::audit_log`] (never to the host's /var/log).
    pub fn write_policy(&self, text: &str) {
        let mut text = text.to_owned();
        if !text.contains("[daemon]") {
            text.push_str(&format!(
                "\n[daemon]\naudit_log = \"{}\"\n",
                self.audit_log().display()
            ));
        }
        // Written aside and renamed, as an operator's editor would: a reload never reads half a file.
        let temp = self.policy.with_extension("toml.tmp");
        std::fs::write(&temp, text).expect("write policy");
        std::fs::rename(&temp, &self.policy).expect("rename policy");
    }

    /// The audit log the test policies use.
    pub fn audit_log(&self) -> PathBuf {
        self.run_dir.join("audit.log")
    }

    /// The daemon's state file (next to the policy).
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("policy.state.json")
    }

    /// `apifw ARGS --run-dir RUN_DIR` (a control verb against this test's daemon).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--run-dir", self.run_dir.to_str().expect("utf-8")]);
        apifw(&all)
    }

    /// Like [`Dirs::cli`], asserting success and parsing `--json` output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "apifw {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "apifw {args:?} --json: {err}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The pin layout.
    pub fn layout(&self) -> PinLayout {
        PinLayout::new(&self.pin_dir)
    }

    /// `apifw stats --json` for these directories.
    pub fn stats(&self) -> Snapshot {
        let output = apifw(&[
            "stats",
            "--json",
            "--pin-dir",
            self.pin_dir.to_str().expect("utf-8"),
            "--run-dir",
            self.run_dir.to_str().expect("utf-8"),
        ]);
        assert!(
            output.status.success(),
            "apifw stats failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "apifw stats --json: {err}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A running `apifw run`, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// Starts `apifw run` for `dirs` on `interface` inside `netns` (via nsenter, which keeps
    /// /sys/fs/bpf visible), without waiting.
    ///
    /// Its stderr goes to a file in the run directory, not a pipe: a daemon logging more than a
    /// pipe holds while nobody reads would block. [`stderr_of`] reads the file.
    pub fn spawn(netns: &Netns, dirs: &Dirs, interface: &str) -> Child {
        Self::spawn_wrapped(netns, dirs, interface, &[])
    }

    /// Like [`Daemon::spawn`], with `apifw` run through `wrapper` (a command and its arguments
    /// that exec their last argument, e.g. `setpriv` with reduced privileges).
    pub fn spawn_wrapped(
        netns: &Netns,
        dirs: &Dirs,
        interface: &str,
        wrapper: &[std::ffi::OsString],
    ) -> Child {
        Self::spawn_on(netns, dirs, &[interface], wrapper)
    }

    /// Like [`Daemon::spawn_wrapped`], protecting every interface of `interfaces`.
    pub fn spawn_on(
        netns: &Netns,
        dirs: &Dirs,
        interfaces: &[&str],
        wrapper: &[std::ffi::OsString],
    ) -> Child {
        static SPAWNED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dirs.run_dir.join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).expect("create daemon log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(wrapper)
            .arg(apifw_bin())
            .args(["run", "--config"])
            .arg(&dirs.policy)
            .args(
                interfaces
                    .iter()
                    .flat_map(|interface| ["--interface", interface]),
            )
            .arg("--pin-dir")
            .arg(&dirs.pin_dir)
            .arg("--run-dir")
            .arg(&dirs.run_dir)
            .env("APIFW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn nsenter apifw run");
        logs()
            .lock()
            .expect("daemon log registry")
            .insert(child.id(), log);
        child
    }

    /// Like [`Daemon::spawn_wrapped`], without waiting for readiness, but as a guard that kills
    /// the daemon when the test ends, panics included.
    pub fn spawn_guarded(
        netns: &Netns,
        dirs: &Dirs,
        interface: &str,
        wrapper: &[std::ffi::OsString],
    ) -> Self {
        Self {
            child: Some(Self::spawn_wrapped(netns, dirs, interface, wrapper)),
        }
    }

    /// Starts the daemon and waits until it answers on its control socket (it is then attached
    /// and enforcing).
    pub fn start(netns: &Netns, dirs: &Dirs, interface: &str) -> Self {
        Self::start_wrapped(netns, dirs, interface, &[])
    }

    /// Like [`Daemon::start`], through `wrapper` as [`Daemon::spawn_wrapped`] runs it. The
    /// wrapper must exec (not fork) `apifw`, so that the child's pid is the daemon's.
    pub fn start_wrapped(
        netns: &Netns,
        dirs: &Dirs,
        interface: &str,
        wrapper: &[std::ffi::OsString],
    ) -> Self {
        Self::start_on(netns, dirs, &[interface], wrapper)
    }

    /// Like [`Daemon::start_wrapped`], protecting every interface of `interfaces`; waits until
    /// all of them are attached.
    pub fn start_on(
        netns: &Netns,
        dirs: &Dirs,
        interfaces: &[&str],
        wrapper: &[std::ffi::OsString],
    ) -> Self {
        let mut child = Self::spawn_on(netns, dirs, interfaces, wrapper);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The daemon's one readiness point: it answers `apifw status` only once it has attached
        // to every interface (the same point at which it tells systemd READY=1). The pid tells
        // this daemon from one that an earlier step left running in the same run directory.
        let ready = |child: &Child| {
            dirs.cli(&["status", "--json"])
                .stdout
                .split(|b| *b == b'\n')
                .any(|line| {
                    String::from_utf8_lossy(line).trim() == format!("\"pid\": {},", child.id())
                })
        };
        while !ready(&child) {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "apifw run exited with {status} before attaching: {}",
                    stderr_of(&mut child)
                );
            }
            assert!(
                Instant::now() < deadline,
                "apifw run did not attach within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child: Some(child) }
    }

    /// What the daemon has logged so far.
    pub fn log(&mut self) -> String {
        self.child.as_mut().map(stderr_of).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` and waits for the exit status; returns it with the daemon's stderr.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill");
        let status = child.wait().expect("wait");
        (status, stderr_of(&mut child))
    }
}

/// The log file of each daemon [`Daemon::spawn`] started, by pid.
fn logs() -> &'static std::sync::Mutex<std::collections::HashMap<u32, PathBuf>> {
    static LOGS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u32, PathBuf>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(Default::default)
}

/// Whatever a daemon from [`Daemon::spawn`] wrote to its stderr so far.
pub fn stderr_of(child: &mut Child) -> String {
    let path = logs()
        .lock()
        .expect("daemon log registry")
        .get(&child.id())
        .cloned();
    let mut text = String::new();
    if let Some(path) = path {
        let _ = std::fs::File::open(path).and_then(|mut file| file.read_to_string(&mut text));
    }
    text
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
