//! Control-plane benchmark (issue #4): load a list of 1M IPv4 CIDRs from a file into the running
//! firewall, next to `ipset restore` and `nft -f` of the same list measured in the same run.
//!
//! Every measurement starts from nothing: a fresh network namespace (and, for apifw, a fresh
//! daemon attached to a veth in it, with its own pin and run directories), removed again
//! afterwards by RAII guards. Nothing runs in the host's namespace: the daemon is started with
//! `nsenter --net=`, `ipset` and `nft` with `ip netns exec`. The three loaders run one after the
//! other in every round, so machine noise hits all of them alike.
//!
//! What is timed is the wall-clock time of the loading command, from its start to its exit:
//! `apifw block import FILE` (the CLI sends the file to the daemon over the control socket; the
//! daemon parses it, compiles the tables, saves its state file and installs both policy
//! generations into the kernel maps before it answers), `ipset restore < FILE` and `nft -f FILE`.

use std::{
    collections::HashSet,
    fmt::Write as _,
    fs::File,
    io::{BufWriter, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use ipnet::Ipv4Net;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng, seq::SliceRandom as _};

use crate::{daemon::Dirs, netns::Netns};

/// Name of the ipset set and of the nftables table and set.
const SET_NAME: &str = "apifw_bench";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Entries in the list (70% /32, 25% /24, 5% /16).
    pub entries: usize,
    /// Rounds; each round measures every loader once.
    pub runs: usize,
    /// `APIFW_LOG` for the daemon (`debug` shows the generation writes); its log lines from
    /// each import are printed to stderr when this is not `info`.
    pub daemon_log: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            entries: 1_000_000,
            runs: 3,
            daemon_log: "info".into(),
        }
    }
}

/// `entries` distinct, pairwise disjoint IPv4 prefixes from a seeded generator: exactly 70% /32,
/// 25% /24 and the rest /16, in random order, spread over the unicast space (1.0.0.0 to
/// 223.255.255.255 without 127/8). No prefix contains another, so an nftables interval set
/// takes the list without `auto-merge`, and all three loaders store exactly the same entries.
pub fn cidr_list(entries: usize, seed: u64) -> anyhow::Result<Vec<Ipv4Net>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let hosts = entries * 70 / 100;
    let nets24 = entries * 25 / 100;
    let nets16 = entries - hosts - nets24;
    let unicast_16s = |first: u32| (1..=223).contains(&first) && first != 127;
    let available16 = (1..=223u32).filter(|first| unicast_16s(*first)).count() * 256;
    ensure!(
        nets16 <= available16 * 9 / 10,
        "{entries} entries need {nets16} /16s; only {available16} unicast /16s exist"
    );
    let random_top16 = |rng: &mut SmallRng| loop {
        let top = rng.random::<u32>() >> 16;
        if unicast_16s(top >> 8) {
            return top;
        }
    };
    let mut list = Vec::with_capacity(entries);
    let mut taken16 = HashSet::with_capacity(nets16);
    while taken16.len() < nets16 {
        let top = random_top16(&mut rng);
        if taken16.insert(top) {
            list.push(Ipv4Net::new(Ipv4Addr::from(top << 16), 16)?);
        }
    }
    let mut taken24 = HashSet::with_capacity(nets24);
    while taken24.len() < nets24 {
        let top = random_top16(&mut rng);
        if taken16.contains(&top) {
            continue;
        }
        let net = (top << 8) | rng.random_range(0..256u32);
        if taken24.insert(net) {
            list.push(Ipv4Net::new(Ipv4Addr::from(net << 8), 24)?);
        }
    }
    let mut taken32 = HashSet::with_capacity(hosts);
    while taken32.len() < hosts {
        let top = random_top16(&mut rng);
        if taken16.contains(&top) {
            continue;
        }
        let addr = (top << 16) | rng.random_range(0..65_536u32);
        if taken24.contains(&(addr >> 8)) {
            continue;
        }
        if taken32.insert(addr) {
            list.push(Ipv4Net::new(Ipv4Addr::from(addr), 32)?);
        }
    }
    list.shuffle(&mut rng);
    Ok(list)
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The list in the three input formats.
struct ListFiles {
    /// One CIDR per line, for `apifw block import --format plain`.
    plain: PathBuf,
    /// `create` + one `add` line per CIDR, for `ipset restore`.
    ipset: PathBuf,
    /// One table with one interval set holding every CIDR, for `nft -f`.
    nft: PathBuf,
    /// Size of the plain file in bytes.
    plain_bytes: u64,
}

fn write_lines(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("create {}", path.display()))?);
    write(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("write {}", path.display()))
}

fn write_files(dir: &Path, list: &[Ipv4Net]) -> anyhow::Result<ListFiles> {
    let files = ListFiles {
        plain: dir.join("list.txt"),
        ipset: dir.join("list.ipset"),
        nft: dir.join("list.nft"),
        plain_bytes: 0,
    };
    write_lines(&files.plain, |out| {
        list.iter().try_for_each(|net| writeln!(out, "{net}"))
    })?;
    // A hash size of the next power of two above the list (ipset's default is 1024 and grows by
    // rehashing), so ipset is measured at its best.
    let hashsize = list.len().next_power_of_two().max(1024);
    write_lines(&files.ipset, |out| {
        writeln!(
            out,
            "create {SET_NAME} hash:net family inet hashsize {hashsize} maxelem {}",
            (list.len() * 2).max(65_536)
        )?;
        list.iter()
            .try_for_each(|net| writeln!(out, "add {SET_NAME} {net}"))
    })?;
    write_lines(&files.nft, |out| {
        writeln!(
            out,
            "table ip {SET_NAME} {{\n\tset block {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{"
        )?;
        for (i, net) in list.iter().enumerate() {
            let sep = if i + 1 == list.len() { "" } else { "," };
            writeln!(out, "\t\t\t{net}{sep}")?;
        }
        writeln!(out, "\t\t}}\n\t}}\n}}")
    })?;
    let plain_bytes = std::fs::metadata(&files.plain)?.len();
    Ok(ListFiles {
        plain_bytes,
        ..files
    })
}

/// How a loading command ended.
struct Timed {
    seconds: f64,
    /// Peak RSS of the command (and the processes it waited for), KiB.
    max_rss_kib: u64,
    stdout: String,
}

/// Runs `command` with `stdin` (or nothing) and times it from spawn to exit. Output goes to
/// files (a chatty failure cannot fill a pipe and stall the child); a failure is an error
/// carrying what it printed.
fn timed(mut command: Command, stdin: Option<&Path>, scratch: &Path) -> anyhow::Result<Timed> {
    let out_path = scratch.join("cmd.stdout");
    let err_path = scratch.join("cmd.stderr");
    command
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .stdin(match stdin {
            Some(path) => {
                Stdio::from(File::open(path).with_context(|| format!("open {}", path.display()))?)
            }
            None => Stdio::null(),
        });
    let shown = format!("{command:?}");
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let (status, rusage) = wait_with_rusage(&child)?;
    let seconds = started.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let stderr: String = stderr.chars().take(4000).collect();
        bail!("{shown} failed (wait status {status:#x}):\n{stdout}{stderr}");
    }
    Ok(Timed {
        seconds,
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
        stdout,
    })
}

/// `wait4` on `child`: its wait status and resource usage (std's `wait` gives no rusage).
fn wait_with_rusage(child: &Child) -> anyhow::Result<(i32, libc::rusage)> {
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 only writes into the two locals.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: see above; `pid` is our own unwaited child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok((status, rusage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
}

/// `ip netns exec NS ARGS…` as a command.
fn in_netns(netns: &Netns, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns.name()]).args(args);
    command
}

/// The `apifw` binary: `$APIFW_BIN`, else `apifw` next to this executable (`target/release`).
pub fn apifw_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("APIFW_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("apifw");
    ensure!(
        bin.exists(),
        "{} is missing: build it (`cargo build --release -p firewall-userspace`) or set APIFW_BIN",
        bin.display()
    );
    Ok(bin)
}

/// `VmRSS` and `VmHWM` of a process in KiB.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Kernel memory (`bytes_memlock`) of the daemon's maps, from `bpftool`.
#[derive(Clone, Copy, Debug)]
pub struct MapMemory {
    /// All APIFW maps pinned by the daemon, bytes.
    pub total: u64,
    /// `APIFW_V4_PREFIXES` alone, bytes.
    pub v4_prefixes: u64,
}

/// [`MapMemory`] of the APIFW maps pinned in `maps_dir`; `None` when bpftool is missing or says
/// nothing useful.
fn maps_memlock(maps_dir: &Path) -> Option<MapMemory> {
    let entries = std::fs::read_dir(maps_dir).ok()?;
    let mut memory = MapMemory {
        total: 0,
        v4_prefixes: 0,
    };
    for entry in entries.flatten() {
        let output = Command::new("bpftool")
            .args(["map", "show", "pinned"])
            .arg(entry.path())
            .arg("-j")
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        // The kernel keeps 15 characters of a map's name; the pin has all of it.
        if info["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("APIFW"))
        {
            let bytes = info["bytes_memlock"].as_u64()?;
            memory.total += bytes;
            if entry.file_name() == firewall_common::map_names::V4_PREFIXES {
                memory.v4_prefixes += bytes;
            }
        }
    }
    (memory.total > 0).then_some(memory)
}

/// The daemon of one measurement, stopped with SIGTERM on drop (killed if it hangs).
pub(crate) struct BenchDaemon {
    child: Child,
    log: PathBuf,
}

impl BenchDaemon {
    /// Starts `apifw run` in `netns` and waits until it answers on its control socket (attached
    /// to `interface` by then).
    pub(crate) fn start(
        netns: &Netns,
        dirs: &Dirs,
        interface: &str,
        log_level: &str,
    ) -> anyhow::Result<Self> {
        let log = dirs.run_dir.join("daemon.log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg(apifw_binary()?)
            .args(["run", "--config"])
            .arg(&dirs.policy)
            .env("APIFW_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("spawn nsenter apifw run")?;
        let mut daemon = Self { child, log };
        // Ready when it answers on its control socket: it has then attached to every interface.
        let control = firewall_userspace::control::Client::new(
            firewall_userspace::control::socket_path(&dirs.run_dir),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while control
            .get::<firewall_userspace::control::Status>("/status")
            .is_err()
        {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "apifw run exited with {status} before attaching: {}",
                    daemon.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "apifw run did not attach to {interface} within 60 s: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        // nsenter without --fork execs the daemon in place: same pid.
        self.child.id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One apifw measurement.
#[derive(Clone, Debug)]
pub struct ApifwSample {
    /// `apifw block import` wall time.
    pub seconds: f64,
    /// Peak RSS of the CLI process, KiB.
    pub cli_max_rss_kib: u64,
    /// Daemon RSS once attached, before the import, KiB.
    pub idle_rss_kib: u64,
    /// Daemon RSS right after the import, KiB.
    pub after_rss_kib: u64,
    /// Daemon peak RSS (`VmHWM`) after the import, KiB.
    pub peak_rss_kib: u64,
    /// Kernel memory of the daemon's maps (`bytes_memlock`), when bpftool could tell.
    pub maps_memlock: Option<MapMemory>,
}

/// One ipset or nft measurement.
#[derive(Clone, Debug)]
pub struct PeerSample {
    /// Wall time of the loading command.
    pub seconds: f64,
    /// Its peak RSS, KiB.
    pub max_rss_kib: u64,
}

/// Everything measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The options the run used.
    pub options: Options,
    /// Entries per prefix length: /32, /24, /16.
    pub mix: [usize; 3],
    /// Size of the plain list file.
    pub file_bytes: u64,
    /// apifw, one per round.
    pub apifw: Vec<ApifwSample>,
    /// `ipset restore`, one per round.
    pub ipset: Vec<PeerSample>,
    /// `nft -f`, one per round.
    pub nft: Vec<PeerSample>,
    /// `Size in memory` that `ipset list -t` reports for the loaded set, bytes.
    pub ipset_memory: Option<u64>,
    /// `ipset --version` and `nft --version`.
    pub versions: (String, String),
}

fn version_of(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The added count in `apifw block import`'s answer (`added N, updated …`).
fn added_count(stdout: &str) -> Option<usize> {
    stdout
        .trim()
        .strip_prefix("added ")?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Lets the kernel finish tearing down the previous measurement (namespace cleanup and map
/// freeing run in workqueues) before the next one starts.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

fn measure_apifw(
    round: usize,
    files: &ListFiles,
    options: &Options,
    scratch: &Path,
) -> anyhow::Result<ApifwSample> {
    // Field order of the guards: the daemon stops before its directories and namespace go.
    let netns = Netns::new(&format!("ldbench-apifw{round}"));
    let dirs = Dirs::new(&format!("ldbench{round}"));
    let (veth, peer) = ("ldbench0", "ldbench1");
    netns.ip(&["link", "add", veth, "type", "veth", "peer", "name", peer]);
    netns.ip(&["link", "set", veth, "up"]);
    netns.ip(&["link", "set", peer, "up"]);
    let capacity = files_capacity(options.entries);
    dirs.write_policy(&format!(
        "interfaces = [\"{veth}\"]\nxdp_mode = \"skb\"\n\n[limits]\nmax_v4_prefixes = {capacity}\n\n\
         [daemon]\npin_dir = \"{}\"\nrun_dir = \"{}\"\naudit_log = \"{}\"\nstate_file = \"{}\"\n",
        dirs.pin_dir.display(),
        dirs.run_dir.display(),
        dirs.run_dir.join("audit.log").display(),
        dirs.run_dir.join("state.json").display(),
    ));
    let daemon = BenchDaemon::start(&netns, &dirs, veth, &options.daemon_log)?;
    std::thread::sleep(Duration::from_millis(500));
    let (idle_rss_kib, _) = memory_kib(daemon.pid())?;
    let log_before = daemon.log_text().len();

    let mut import = Command::new(apifw_binary()?);
    import
        .args(["block", "import"])
        .arg(&files.plain)
        .args(["--format", "plain", "--run-dir"])
        .arg(&dirs.run_dir);
    let timed = timed(import, None, scratch)
        .map_err(|err| anyhow::anyhow!("{err:#}\ndaemon log:\n{}", daemon.log_text()))?;
    let (after_rss_kib, peak_rss_kib) = memory_kib(daemon.pid())?;
    let added = added_count(&timed.stdout);
    ensure!(
        added == Some(options.entries),
        "apifw block import added {added:?} entries, expected {}: {}",
        options.entries,
        timed.stdout
    );
    let maps_memlock = maps_memlock(&dirs.layout().maps_dir());
    if options.daemon_log != "info" {
        let log = daemon.log_text();
        eprintln!(
            "bench: daemon log of the import:\n{}",
            log.get(log_before..).unwrap_or("")
        );
    }
    drop(daemon);
    drop(dirs);
    drop(netns);
    Ok(ApifwSample {
        seconds: timed.seconds,
        cli_max_rss_kib: timed.max_rss_kib,
        idle_rss_kib,
        after_rss_kib,
        peak_rss_kib,
        maps_memlock,
    })
}

/// `limits.max_v4_prefixes` for a list of `entries`: its /32s and /24s plus a fifth of margin.
fn files_capacity(entries: usize) -> usize {
    (entries * 95 / 100 + entries / 5).max(1024)
}

/// `Size in memory` and `Number of entries` from `ipset list -t`.
fn ipset_header(text: &str) -> (Option<u64>, Option<usize>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    (
        field("Size in memory:").and_then(|v| v.parse().ok()),
        field("Number of entries:").and_then(|v| v.parse().ok()),
    )
}

fn measure_ipset(
    round: usize,
    files: &ListFiles,
    options: &Options,
    scratch: &Path,
) -> anyhow::Result<(PeerSample, Option<u64>)> {
    let netns = Netns::new(&format!("ldbench-ipset{round}"));
    let timed = timed(
        in_netns(&netns, &["ipset", "restore"]),
        Some(&files.ipset),
        scratch,
    )?;
    let header = netns.exec(&["ipset", "list", "-t", SET_NAME]);
    let (memory, count) = ipset_header(&String::from_utf8_lossy(&header.stdout));
    ensure!(
        count == Some(options.entries),
        "ipset holds {count:?} entries, expected {}",
        options.entries
    );
    // Freed here, synchronously, rather than by the namespace cleanup during the next
    // measurement.
    netns.exec(&["ipset", "destroy", SET_NAME]);
    drop(netns);
    Ok((
        PeerSample {
            seconds: timed.seconds,
            max_rss_kib: timed.max_rss_kib,
        },
        memory,
    ))
}

fn measure_nft(
    round: usize,
    files: &ListFiles,
    list: &[Ipv4Net],
    scratch: &Path,
) -> anyhow::Result<PeerSample> {
    let netns = Netns::new(&format!("ldbench-nft{round}"));
    let path = files.nft.to_str().context("nft file path is not UTF-8")?;
    let timed = timed(in_netns(&netns, &["nft", "-f", path]), None, scratch)?;
    // Spot checks: a full listing of a million elements takes longer than the load.
    for net in [list.first(), list.last()].into_iter().flatten() {
        netns.exec(&[
            "nft",
            "get",
            "element",
            "ip",
            SET_NAME,
            "block",
            // nft 1.0.6 finds a single address only without `/32`.
            &if net.prefix_len() == 32 {
                format!("{{ {} }}", net.addr())
            } else {
                format!("{{ {net} }}")
            },
        ]);
    }
    netns.exec(&["nft", "delete", "table", "ip", SET_NAME]);
    drop(netns);
    Ok(PeerSample {
        seconds: timed.seconds,
        max_rss_kib: timed.max_rss_kib,
    })
}

/// Generates the list, writes the three files and measures the three loaders `options.runs`
/// times each, interleaved.
pub fn run(options: &Options) -> anyhow::Result<LoadReport> {
    ensure!(
        options.runs > 0 && options.entries > 0,
        "runs and entries must be at least 1"
    );
    for program in ["ip", "nsenter", "ipset", "nft"] {
        ensure!(
            which(program),
            "`{program}` is not installed (`cargo xtask bench` installs ipset and nftables)"
        );
    }
    // Every CPU: the daemon and the peers inherit this process's affinity, and the per-packet
    // benchmark pins it to one CPU.
    let mut all = nix::sched::CpuSet::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for cpu in 0..cpus.min(nix::sched::CpuSet::count()) {
        all.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all)?;
    let scratch = TempDir::new("apifw-loadbench")?;
    let started = Instant::now();
    let list = cidr_list(options.entries, 0x10AD)?;
    let mut mix = [0; 3];
    for net in &list {
        match net.prefix_len() {
            32 => mix[0] += 1,
            24 => mix[1] += 1,
            _ => mix[2] += 1,
        }
    }
    let files = write_files(&scratch.0, &list)?;
    eprintln!(
        "bench: {} CIDRs generated and written in {:.2} s ({} /32, {} /24, {} /16)",
        list.len(),
        started.elapsed().as_secs_f64(),
        mix[0],
        mix[1],
        mix[2]
    );
    let mut report = LoadReport {
        options: options.clone(),
        mix,
        file_bytes: files.plain_bytes,
        apifw: Vec::new(),
        ipset: Vec::new(),
        nft: Vec::new(),
        ipset_memory: None,
        versions: (version_of("ipset"), version_of("nft")),
    };
    for round in 0..options.runs {
        settle();
        let apifw = measure_apifw(round, &files, options, &scratch.0)?;
        eprintln!(
            "bench: round {round}: apifw block import {:.3} s (daemon RSS {} -> {} KiB, peak {} KiB)",
            apifw.seconds, apifw.idle_rss_kib, apifw.after_rss_kib, apifw.peak_rss_kib
        );
        report.apifw.push(apifw);
        settle();
        let (ipset, memory) = measure_ipset(round, &files, options, &scratch.0)?;
        eprintln!("bench: round {round}: ipset restore {:.3} s", ipset.seconds);
        report.ipset.push(ipset);
        report.ipset_memory = report.ipset_memory.or(memory);
        settle();
        let nft = measure_nft(round, &files, &list, &scratch.0)?;
        eprintln!("bench: round {round}: nft -f {:.3} s", nft.seconds);
        report.nft.push(nft);
    }
    Ok(report)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Median, min and max.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    (
        crate::report::median(&mut values.to_vec()),
        values.iter().copied().fold(f64::MAX, f64::min),
        values.iter().copied().fold(f64::MIN, f64::max),
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl LoadReport {
    /// Median seconds of apifw, ipset and nft.
    pub fn medians(&self) -> (f64, f64, f64) {
        let seconds = |samples: &[PeerSample]| {
            summary(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>()).0
        };
        (
            summary(&self.apifw.iter().map(|s| s.seconds).collect::<Vec<_>>()).0,
            seconds(&self.ipset),
            seconds(&self.nft),
        )
    }

    /// The report's section, Markdown, starting with its `##` heading.
    pub fn markdown(&self) -> Result<String, std::fmt::Error> {
        let mut md = String::new();
        let entries = self.options.entries;
        let (apifw, ipset, nft) = self.medians();
        writeln!(
            md,
            "## Control plane: loading {} CIDRs\n",
            millions(entries)
        )?;
        writeln!(
            md,
            "Goal: loading a list of 1M CIDRs from a file into the running firewall takes ≤ 1 s \
             and is faster than both `ipset restore` and `nft -f` of the same list.\n"
        )?;
        writeln!(
            md,
            "Method: one seeded list of {entries} distinct, pairwise disjoint IPv4 prefixes \
             ({} /32, {} /24, {} /16, in random order, spread over 1.0.0.0–223.255.255.255 \
             without 127/8; no prefix contains another, so the /24s and /32s lie in the /16s \
             the list does not hold), \
             written in each tool's input format (the plain file is {:.1} MiB). Every round \
             measures the three loaders one after the other, each from scratch in a fresh network \
             namespace, and the wall time of the loading command from start to exit is reported \
             (median of {} rounds, spread min..max):\n",
            self.mix[0],
            self.mix[1],
            self.mix[2],
            self.file_bytes as f64 / (1024.0 * 1024.0),
            self.options.runs,
        )?;
        writeln!(
            md,
            "- **apifw**: a fresh daemon (`apifw run`, XDP in skb mode on a veth, \
             `limits.max_v4_prefixes = {}`) is attached and idle; timed is `apifw block import \
             FILE --format plain`: the CLI sends the file over the control socket, the daemon \
             parses it, compiles the prefix tables, and, in parallel, saves its state file and \
             writes the inactive policy generation into the kernel maps (the prefix hash from one thread per CPU, up to 4, since the kernel's inserts are most of the time), then flips to it behind \
             the RCU barrier before it answers.",
            files_capacity(entries)
        )?;
        writeln!(
            md,
            "- **ipset** ({}): `ipset restore` of `create {SET_NAME} hash:net hashsize {} …` \
             and one `add` line per CIDR.",
            self.versions.0,
            entries.next_power_of_two().max(1024)
        )?;
        writeln!(
            md,
            "- **nft** ({}): `nft -f` of one table with one `type ipv4_addr; flags interval` set \
             holding every CIDR in one `elements = {{ … }}` block (the list has no overlaps, so \
             no `auto-merge` is needed and the set stores exactly the list).\n",
            self.versions.1
        )?;
        writeln!(
            md,
            "| loader | seconds (median) | spread | apifw ÷ loader | peak RSS of the loading process |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|")?;
        let apifw_seconds: Vec<f64> = self.apifw.iter().map(|s| s.seconds).collect();
        let rows: [(&str, Vec<f64>, Vec<u64>, f64); 3] = [
            (
                "apifw block import",
                apifw_seconds,
                self.apifw.iter().map(|s| s.cli_max_rss_kib).collect(),
                apifw,
            ),
            (
                "ipset restore",
                self.ipset.iter().map(|s| s.seconds).collect(),
                self.ipset.iter().map(|s| s.max_rss_kib).collect(),
                ipset,
            ),
            (
                "nft -f",
                self.nft.iter().map(|s| s.seconds).collect(),
                self.nft.iter().map(|s| s.max_rss_kib).collect(),
                nft,
            ),
        ];
        for (name, seconds, rss, med) in &rows {
            let (_, min, max) = summary(seconds);
            let rss = rss.iter().copied().max().unwrap_or(0);
            writeln!(
                md,
                "| {name} | {med:.3} | {min:.3}..{max:.3} | {:.2} | {:.0} MiB |",
                apifw / med.max(1e-9),
                mib(rss)
            )?;
        }
        let met = apifw <= 1.0 && apifw < ipset && apifw < nft;
        writeln!(
            md,
            "\n- Goal (≤ 1 s and faster than both): **{}** — apifw {apifw:.3} s, {:.2}× ipset's \
             time and {:.2}× nft's.",
            if met { "met" } else { "not met" },
            apifw / ipset.max(1e-9),
            apifw / nft.max(1e-9)
        )?;
        let max = |f: fn(&ApifwSample) -> u64| self.apifw.iter().map(f).max().unwrap_or(0);
        writeln!(
            md,
            "- apifw daemon memory (`VmRSS`, worst round): {:.0} MiB idle, {:.0} MiB after the \
             import, {:.0} MiB peak during it (`VmHWM`). The daemon keeps the runtime entries \
             (with their metadata) and the compiled tables of the installed policy, so that the \
             next change writes only a diff.",
            mib(max(|s| s.idle_rss_kib)),
            mib(max(|s| s.after_rss_kib)),
            mib(max(|s| s.peak_rss_kib))
        )?;
        match self.apifw.iter().find_map(|s| s.maps_memlock) {
            Some(memory) => writeln!(
                md,
                "- apifw kernel maps (`bpftool map show`, `bytes_memlock`): {:.0} MiB for all \
                 APIFW maps, of which {:.0} MiB for `APIFW_V4_PREFIXES`. Maps are preallocated \
                 (the prefix hash for two policy generations of `max_v4_prefixes` entries each; \
                 the rate-limit state maps with their default limits), so this is fixed by the \
                 limits, not by the list.",
                memory.total as f64 / (1024.0 * 1024.0),
                memory.v4_prefixes as f64 / (1024.0 * 1024.0)
            )?,
            None => writeln!(
                md,
                "- apifw kernel maps: bpftool not available, not measured."
            )?,
        }
        if let Some(bytes) = self.ipset_memory {
            writeln!(
                md,
                "- ipset's set (`ipset list -t`, `Size in memory`): {:.0} MiB.",
                bytes as f64 / (1024.0 * 1024.0)
            )?;
        }
        Ok(md)
    }
}

/// `1M`, `100k` or the plain number.
fn millions(entries: usize) -> String {
    if entries.is_multiple_of(1_000_000) {
        format!("{}M", entries / 1_000_000)
    } else if entries.is_multiple_of(1_000) {
        format!("{}k", entries / 1_000)
    } else {
        entries.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_the_mix_and_no_overlaps() {
        let list = cidr_list(20_000, 7).expect("list");
        assert_eq!(list.len(), 20_000);
        let count = |len| list.iter().filter(|net| net.prefix_len() == len).count();
        assert_eq!((count(32), count(24), count(16)), (14_000, 5_000, 1_000));
        let set: HashSet<Ipv4Net> = list.iter().copied().collect();
        assert_eq!(set.len(), list.len(), "duplicates");
        for net in &list {
            for len in [16, 24] {
                if net.prefix_len() > len {
                    let wider = Ipv4Net::new(net.network(), len).expect("len").trunc();
                    assert!(!set.contains(&wider), "{net} inside {wider}");
                }
            }
            let first = net.network().octets()[0];
            assert!((1..=223).contains(&first) && first != 127, "{net}");
        }
        assert_eq!(cidr_list(20_000, 7).expect("list"), list, "deterministic");
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(
            added_count("added 1000000, updated 0, removed 0; policy version 2\n"),
            Some(1_000_000)
        );
        assert_eq!(added_count("nonsense"), None);
        let header = "Name: x\nType: hash:net\nSize in memory: 12345\nReferences: 0\nNumber of entries: 42\n";
        assert_eq!(ipset_header(header), (Some(12_345), Some(42)));
        assert_eq!(millions(1_000_000), "1M");
        assert_eq!(millions(20_000), "20k");
    }
}
