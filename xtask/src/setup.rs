//! `cargo xtask setup`: make this machine able to build and test apifw.
//!
//! Every step checks before it acts, so running setup again is cheap and changes nothing;
//! `test` and `demo` run it first so that a fresh machine needs no separate set-up step.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, root};

/// The bpf-linker release we build; pinned so a new release cannot break a fresh machine.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the integration tests and the demo run, and the Debian package providing each.
const REQUIRED_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    // The privilege tests run the daemon and the CLI with reduced capabilities and uids.
    ("setpriv", "util-linux"),
    ("bpftool", "bpftool"),
    ("curl", "curl"),
    ("python3", "python3"),
    // `promtool` checks the example configuration in `deploy/` and a live scrape of the daemon's
    // metrics; `prometheus` is the real server the tests scrape it with.
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    // The jail tests: a real nginx guarding a path with HTTP basic auth (its htpasswd line
    // made with openssl), and fail2ban banning through deploy/fail2ban/action.d/apifw.conf.
    // Both run with private configurations; their system services are stopped after install.
    ("nginx", "nginx"),
    ("openssl", "openssl"),
    ("fail2ban-server", "fail2ban"),
    // The generator test switches GRO on (so a veth takes XDP frames) and reads veth counters.
    ("ethtool", "ethtool"),
    // The fleet tests: a real CrowdSec Local API (LAPI only, private configuration per test)
    // that two apifw hosts follow; `cscli` makes the decisions. Installed offline
    // ([`prepare_offline_crowdsec`]); its system service is stopped after install.
    ("crowdsec", "crowdsec"),
    ("cscli", "crowdsec"),
    // The SYN cookie tests: wrk's connections to nginx through XDP's cookie SYN-ACKs.
    ("wrk", "wrk"),
];

/// Debian's `crowdsec` package registers with CrowdSec's Central API in its post-install step,
/// which fails (and fails the install) on a machine without Internet access, unless the online
/// credentials file exists already; a file holding only a comment is enough and keeps the
/// Central API off (deploy/crowdsec/LAB-NOTES.md). An existing file is left alone.
const CROWDSEC_ONLINE_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";

/// The Debian package whose service setup stops right after installing it
/// ([`stop_prometheus_service`]).
const PROMETHEUS_PACKAGE: &str = "prometheus";

/// Commands only the benchmark runs (the peers of the control-plane benchmark, and xdp-filter,
/// the per-packet peer), and their Debian packages; `cargo xtask bench` installs them, the tests
/// do not need them.
pub const BENCH_COMMANDS: &[(&str, &str)] = &[
    ("ipset", "ipset"),
    ("nft", "nftables"),
    ("xdp-filter", "xdp-tools"),
    // The flood benchmark: its iptables peers, and GRO on the receiving veth.
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
    // The attack benchmark: the HTTP API under attack (its client, wrk, the tests need too).
    ("nginx", "nginx"),
    // The fleet benchmark: Debian's CrowdSec firewall bouncer (nftables mode), next to apifw on
    // the same LAPI's decisions. Its package registers it with the machine's LAPI (`crowdsec`,
    // which `run` installs first) and enables its service; the benchmark runs its own, with a
    // private configuration, in a namespace.
    ("crowdsec-firewall-bouncer", "crowdsec-firewall-bouncer"),
];

/// The Debian package of [`BENCH_COMMANDS`] whose service setup stops right after installing it:
/// the attack benchmark runs its own nginx, with a private configuration, in a namespace.
const NGINX_PACKAGE: &str = "nginx";

/// Likewise: a system-wide firewall bouncer would put its nftables table into the host's
/// ruleset.
const FIREWALL_BOUNCER_PACKAGE: &str = "crowdsec-firewall-bouncer";

/// Where the programs pin their maps and links.
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()?;
    prepare_offline_crowdsec()?;
    let installed = ensure_debian_packages(REQUIRED_COMMANDS)?;
    if installed.contains(&PROMETHEUS_PACKAGE) {
        stop_prometheus_service();
    }
    // The jail tests run their own nginx and fail2ban, in a namespace lab.
    for service in ["nginx", "fail2ban"] {
        if installed.contains(&service) {
            stop_service(service, "the jail tests run their own");
        }
    }
    if installed.contains(&"crowdsec") {
        stop_service("crowdsec", "the fleet tests run their own LAPIs");
    }
    ensure_bpffs()?;
    Ok(())
}

/// Installs what only `cargo xtask bench` needs ([`BENCH_COMMANDS`]), on top of [`run`].
pub fn ensure_bench_packages() -> Result<()> {
    let installed = ensure_debian_packages(BENCH_COMMANDS)?;
    if installed.contains(&NGINX_PACKAGE) {
        // Like Prometheus' (see [`stop_prometheus_service`]), Debian's nginx package starts a
        // system-wide server on :80 that nobody asked for.
        stop_service("nginx", "the attack benchmark runs its own");
    }
    if installed.contains(&FIREWALL_BOUNCER_PACKAGE) {
        stop_service(
            FIREWALL_BOUNCER_PACKAGE,
            "the fleet benchmark runs its own, in a namespace",
        );
    }
    Ok(())
}

/// Before `crowdsec` is installed, writes [`CROWDSEC_ONLINE_CREDENTIALS`] holding a comment, so
/// that the package installs offline without a Central API.
fn prepare_offline_crowdsec() -> Result<()> {
    let path = Path::new(CROWDSEC_ONLINE_CREDENTIALS);
    if which::which("crowdsec").is_ok() || path.exists() || !root::is_root() {
        return Ok(());
    }
    let dir = path.parent().expect("an absolute path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::write(
        path,
        "# Written by apifw's `cargo xtask setup`: no CrowdSec Central API (offline lab).\n",
    )
    .with_context(|| format!("write {}", path.display()))?;
    println!(
        "setup: wrote {} (CrowdSec without its Central API)",
        path.display()
    );
    Ok(())
}

/// The eBPF crate needs nightly (`-Z build-std` for `bpfel-unknown-none`) and so rust-src.
fn ensure_nightly() -> Result<()> {
    if which::which("rustup").is_err() {
        bail!("rustup is not on PATH: install it from https://rustup.rs and retry");
    }
    if cmd::succeeds(rustup().args(["run", "nightly", "rustc", "-V"])) {
        println!("setup: nightly ok");
    } else {
        println!("setup: nightly missing, installing it (about a minute, once)");
        cmd::run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
        println!("setup: nightly installed");
    }

    let installed =
        cmd::output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if has_component(&installed, "rust-src") {
        println!("setup: rust-src ok");
    } else {
        println!("setup: rust-src missing, installing it (about 30 s, once)");
        cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        println!("setup: rust-src installed");
    }
    Ok(())
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// Whether `rustup component list --installed` output names `component`.
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .any(|line| line.split_whitespace().next() == Some(component))
}

/// bpf-linker links the eBPF object. A binary that is on PATH but does not run (its libLLVM was
/// removed, e.g. by a nightly update) is rebuilt rather than trusted.
fn ensure_bpf_linker() -> Result<()> {
    match which::which("bpf-linker") {
        Ok(path) if cmd::succeeds(Command::new(&path).arg("--version")) => {
            println!("setup: bpf-linker ok ({})", path.display());
            return Ok(());
        }
        Ok(path) => println!(
            "setup: {} does not run (its libLLVM is probably gone), rebuilding it",
            path.display()
        ),
        Err(_) => println!(
            "setup: bpf-linker missing, building it from source against nightly's libLLVM \
             (about 4 minutes on 2 CPUs, once)"
        ),
    }
    let started = std::time::Instant::now();
    install_bpf_linker()?;
    match which::which("bpf-linker") {
        Ok(path) => {
            println!(
                "setup: bpf-linker installed ({}) in {} s",
                path.display(),
                started.elapsed().as_secs()
            );
            Ok(())
        }
        Err(_) => bail!(
            "bpf-linker was installed into {} but that directory is not on PATH; add it",
            cargo_home()?.join("bin").display()
        ),
    }
}

/// Builds bpf-linker against the libLLVM that ships with nightly, so that no system LLVM of a
/// matching version is needed and the linker's LLVM always matches the bitcode rustc emits.
fn install_bpf_linker() -> Result<()> {
    let version = cmd::output(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let major = llvm_major(&version).with_context(|| {
        format!("no `LLVM version: N.x` line in `rustc +nightly -vV` output:\n{version}")
    })?;
    let sysroot = cmd::output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let names = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    let libllvm = libllvm_file_name(&names)
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;

    // bpf-linker's build script links `-lLLVM` from `$LLVM_PREFIX/lib` and records that
    // directory as the binary's rpath, so the prefix must outlive the build: it lives under
    // CARGO_HOME, one per libLLVM file so that a newer nightly never breaks an older build.
    let prefix = cargo_home()?.join("apifw-llvm-prefix").join(libllvm);
    let prefix_lib = prefix.join("lib");
    if prefix.exists() {
        fs::remove_dir_all(&prefix).with_context(|| format!("removing {}", prefix.display()))?;
    }
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let target = lib_dir.join(libllvm);
    for link in ["libLLVM.so", libllvm] {
        let link = prefix_lib.join(link);
        symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }

    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            // Replaces a broken binary; harmless when there is none.
            .arg("--force")
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `$CARGO_HOME`, defaulting like cargo to `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The LLVM major version from `rustc -vV` output (the `LLVM version: 22.1.4` line).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.trim().strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Picks the versioned libLLVM (`libLLVM.so.22.1-rust-…`) among a sysroot's `lib` entries;
/// that name is the soname bpf-linker will be linked against.
fn libllvm_file_name(names: &[String]) -> Option<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with("libLLVM.so."))
        .min()
}

/// Installs the Debian packages of the `commands` (command, package) that are missing; only
/// root can, so others get told what. Returns the packages it installed.
fn ensure_debian_packages(commands: &[(&str, &'static str)]) -> Result<Vec<&'static str>> {
    let present = |command: &str| which::which(command).is_ok();
    let packages = missing_packages(commands, present);
    if packages.is_empty() {
        let names: Vec<_> = commands.iter().map(|(c, _)| *c).collect();
        println!("setup: tools ok ({})", names.join(", "));
        return Ok(Vec::new());
    }
    let packages: Vec<_> = packages.into_iter().collect();
    if !root::is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root to install them, or \
             install them yourself",
            packages.join(" ")
        );
    }
    println!(
        "setup: installing Debian packages {} with apt-get (1-3 minutes, once)",
        packages.join(" ")
    );
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still_missing = missing_packages(commands, present);
    if !still_missing.is_empty() {
        bail!(
            "installed {} but still missing commands from {}",
            packages.join(" "),
            still_missing.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    println!("setup: tools installed ({})", packages.join(" "));
    Ok(packages)
}

/// Debian's `prometheus` package is installed for its binaries only: the tests run `promtool`
/// and start their own short-lived server on a port of their choosing. Its maintainer scripts,
/// though, enable `prometheus.service` and start it under systemd, or start it through its
/// init script otherwise (unless a `policy-rc.d` forbids it, as in most containers): a
/// system-wide server holding :9090 and scraping localhost for good, which nobody asked for.
/// (`--no-install-recommends` already keeps out `prometheus-node-exporter`, which would hold
/// :9100.) So right after setup installed the package — never on later runs, which leaves a
/// Prometheus that someone enabled on purpose alone — stop the service and keep it from
/// starting at boot. Best effort: a step that fails is reported, not fatal.
fn stop_prometheus_service() {
    stop_service("prometheus", "the tests run their own");
}

/// Stops the system service `name` that a package just installed and keeps it from starting at
/// boot; best effort.
fn stop_service(name: &str, why: &str) {
    let unit = format!("{name}.service");
    let mut steps = Vec::new();
    // systemd runs as PID 1 exactly when this directory exists (sd_booted(3)).
    if Path::new("/run/systemd/system").exists() {
        steps.push(command("systemctl", &["disable", "--now", &unit]));
    } else {
        let init_script = format!("/etc/init.d/{name}");
        if Path::new(&init_script).exists() {
            steps.push(command(&init_script, &["stop"]));
            steps.push(command("update-rc.d", &[name, "disable"]));
        }
        // Without a running systemd, systemctl still removes the unit's boot-time symlinks,
        // which the package created in case the machine later boots with systemd.
        if which::which("systemctl").is_ok() {
            steps.push(command("systemctl", &["disable", &unit]));
        }
    }
    for mut step in steps {
        match cmd::output(&mut step) {
            Ok(_) => println!("setup: ran `{}`", cmd::display(&step)),
            Err(err) => println!("setup: warning: {err:#}"),
        }
    }
    println!("setup: the {name} service is stopped and disabled ({why})");
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// The Debian packages of the `commands` that `present` does not find, each named once.
fn missing_packages(
    commands: &[(&str, &'static str)],
    present: impl Fn(&str) -> bool,
) -> BTreeSet<&'static str> {
    commands
        .iter()
        .filter(|(command, _)| !present(command))
        .map(|(_, package)| *package)
        .collect()
}

/// The daemon pins its maps and links in bpffs, which not every container mounts.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        println!("setup: bpffs ok ({BPFFS})");
        return Ok(());
    }
    if !root::is_root() {
        bail!("bpffs is not mounted at {BPFFS}: run `cargo xtask setup` as root to mount it");
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    println!("setup: bpffs mounted ({BPFFS})");
    Ok(())
}

/// Whether `/proc/mounts` content has bpffs mounted at [`BPFFS`].
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn llvm_major_reads_the_llvm_line() {
        assert_eq!(llvm_major(NIGHTLY_VV), Some(22));
        assert_eq!(llvm_major("LLVM version: 19.1.7"), Some(19));
        assert_eq!(llvm_major("LLVM version: 23"), Some(23));
    }

    #[test]
    fn llvm_major_rejects_missing_or_garbled_lines() {
        assert_eq!(
            llvm_major("rustc 1.97.0\nhost: x86_64-unknown-linux-gnu\n"),
            None
        );
        assert_eq!(llvm_major("LLVM version: unknown"), None);
        assert_eq!(llvm_major(""), None);
    }

    #[test]
    fn libllvm_file_name_picks_the_versioned_shared_object() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ]
        .map(String::from);
        assert_eq!(
            libllvm_file_name(&names),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(libllvm_file_name(&names[2..]), None);
    }

    #[test]
    fn has_component_matches_whole_names() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(list, "rust"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }

    #[test]
    fn missing_packages_maps_commands_to_packages() {
        assert!(missing_packages(REQUIRED_COMMANDS, |_| true).is_empty());
        let missing = missing_packages(REQUIRED_COMMANDS, |command| {
            command != "ip" && command != "bpftool"
        });
        assert_eq!(
            missing.into_iter().collect::<Vec<_>>(),
            ["bpftool", "iproute2"]
        );
        let bench = missing_packages(BENCH_COMMANDS, |command| command != "nft");
        assert_eq!(bench.into_iter().collect::<Vec<_>>(), ["nftables"]);
    }

    #[test]
    fn bpffs_mounted_needs_bpf_at_the_right_place() {
        let mounted = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid,nodev 0 0\n";
        assert!(bpffs_mounted(mounted));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
        assert!(!bpffs_mounted("bpf /sys/fs/bpf/x bpf rw 0 0\n"));
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    }
}
