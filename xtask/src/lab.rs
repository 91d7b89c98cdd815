//! Throwaway network-namespace labs: everything a [`Lab`] creates, it removes again when dropped,
//! whether the task succeeded, failed or was interrupted.
//!
//! Nothing here touches host interfaces: veth pairs are created inside a namespace with their
//! peer placed directly into another one, so the host's network never sees them.

use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

use crate::cmd;

/// Set by the signal handler; long waits poll it so that an interrupt unwinds through `Drop`.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Turns Ctrl-C (and SIGTERM/SIGHUP) into an error at the next check instead of killing the
/// process, so that the lab's `Drop` still runs and removes the namespaces.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("lab: still cleaning up, please wait");
        } else {
            eprintln!("lab: interrupted, removing the lab");
        }
    })
    .context("installing the Ctrl-C handler")
}

/// Fails once an interrupt has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `ready` every 100 ms until it returns true, failing after `timeout` or on interrupt.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Handle to a process started with [`Lab::spawn`].
#[derive(Clone, Copy)]
pub struct ProcessId(usize);

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once we have reaped it, so `Drop` does not signal a pid that may have been reused.
    exited: bool,
}

/// Network namespaces, background processes and directories, removed in reverse order on drop.
pub struct Lab {
    /// Prefix of every namespace name; carries our pid so parallel labs never collide.
    prefix: String,
    work_dir: PathBuf,
    namespaces: Vec<String>,
    processes: Vec<Process>,
    owned_paths: Vec<PathBuf>,
}

impl Lab {
    /// Starts an empty lab whose names start with `name` and whose scratch files (logs, web
    /// root) live in `/tmp/<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let work_dir = std::env::temp_dir().join(name);
        if work_dir.exists() {
            bail!(
                "{} already exists: left over from a crashed run? remove it and retry",
                work_dir.display()
            );
        }
        let mut lab = Self {
            prefix: name.to_owned(),
            work_dir: work_dir.clone(),
            namespaces: Vec::new(),
            processes: Vec::new(),
            owned_paths: Vec::new(),
        };
        lab.own_path(&work_dir);
        fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        Ok(lab)
    }

    /// Scratch directory removed with the lab.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Removes `path` (recursively) when the lab is dropped, if it still exists then.
    pub fn own_path(&mut self, path: &Path) {
        self.owned_paths.push(path.to_owned());
    }

    /// Creates namespace `<prefix>-<role>` with its loopback up and returns its name.
    pub fn add_namespace(&mut self, role: &str) -> Result<String> {
        check_interrupted()?;
        let name = format!("{}-{role}", self.prefix);
        cmd::output(Command::new("ip").args(["netns", "add", &name]))?;
        // Recorded only once created, so that we never delete a namespace someone else owns.
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        check_interrupted()?;
        cmd::output(Command::new("ip").args(["-n", ns]).args(args))?;
        Ok(())
    }

    /// Links `ns` to `bridge` in `switch_ns` with a veth pair: `ifname` inside `ns`, `port`
    /// enslaved to the bridge. The pair is created inside `ns` with its peer placed straight
    /// into `switch_ns`, so it never exists in the host namespace.
    pub fn connect(
        &self,
        ns: &str,
        ifname: &str,
        switch_ns: &str,
        port: &str,
        bridge: &str,
    ) -> Result<()> {
        self.ip(
            ns,
            &[
                "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", switch_ns,
            ],
        )?;
        self.ip(switch_ns, &["link", "set", port, "master", bridge, "up"])?;
        self.ip(ns, &["link", "set", ifname, "up"])
    }

    /// Runs `argv` inside `ns` to completion and returns its output whatever its exit status.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        check_interrupted()?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(argv);
        command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to start `{}`", cmd::display(&command)))
    }

    /// Starts `command` in the background with stdout and stderr in `<work_dir>/<name>.log`.
    ///
    /// It gets its own process group so that a Ctrl-C in the terminal reaches only us: we then
    /// stop it in order (the daemon must unpin before its namespace goes away).
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<ProcessId> {
        check_interrupted()?;
        let log = self.work_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start `{}`", cmd::display(&command)))?;
        self.processes.push(Process {
            name: name.to_owned(),
            child,
            log,
            exited: false,
        });
        Ok(ProcessId(self.processes.len() - 1))
    }

    /// Fails, quoting its log, if the process has exited.
    pub fn ensure_running(&mut self, id: ProcessId) -> Result<()> {
        let process = &mut self.processes[id.0];
        if let Some(status) = process.child.try_wait()? {
            process.exited = true;
            bail!(
                "{} exited early ({status}); its output:\n{}",
                process.name,
                read_log(&process.log)
            );
        }
        Ok(())
    }

    /// Everything the process has printed so far.
    pub fn log(&self, id: ProcessId) -> String {
        read_log(&self.processes[id.0].log)
    }

    /// Sends SIGTERM to the process and waits up to `grace` for it to exit; a process that
    /// does not is killed and reported as an error.
    pub fn terminate(&mut self, id: ProcessId, grace: Duration) -> Result<ExitStatus> {
        let process = &mut self.processes[id.0];
        let status = stop(process, grace)?;
        process.exited = true;
        Ok(status)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for process in self.processes.iter_mut().rev() {
            if process.exited {
                continue;
            }
            if let Err(err) = stop(process, Duration::from_secs(5)) {
                eprintln!("lab: {err:#}");
            }
            process.exited = true;
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = cmd::output(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("lab: {err:#}");
            }
        }
        for path in self.owned_paths.iter().rev() {
            if path.exists()
                && let Err(err) = fs::remove_dir_all(path)
            {
                eprintln!("lab: removing {}: {err}", path.display());
            }
        }
        println!(
            "lab: removed {} namespaces and {} processes",
            self.namespaces.len(),
            self.processes.len()
        );
    }
}

/// SIGTERM to the process, then its group (so helpers it forked go too), SIGKILL after `grace`.
fn stop(process: &mut Process, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = process.child.try_wait()? {
        return Ok(status);
    }
    let pid =
        Pid::from_raw(i32::try_from(process.child.id()).context("pid does not fit in pid_t")?);
    // The daemon is the process itself (nsenter and `ip netns exec` exec it): signal it first
    // so it shuts down exactly as `kill -TERM <pid>` would make it.
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = process.child.try_wait()? {
            let _ = killpg(pid, Signal::SIGTERM);
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(pid, Signal::SIGKILL);
    process.child.wait()?;
    bail!(
        "{} did not exit within {grace:?} of SIGTERM and was killed; its output:\n{}",
        process.name,
        read_log(&process.log)
    )
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|err| format!("<cannot read {}: {err}>", path.display()))
}
