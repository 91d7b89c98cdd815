//! `cargo xtask package`: a Debian package of apifw, `target/package/apifw_<version>_<arch>.deb`.
//!
//! Built with `dpkg-deb` from a staging tree rather than with cargo-deb: dpkg-deb is on every
//! Debian machine, while cargo-deb would be one more tool to compile (minutes on a small CI
//! machine) for what is a handful of files and a control file. The package has no maintainer
//! scripts on purpose: installing a firewall must not start it with an example policy, so the
//! operator edits `/etc/apifw/apifw.toml` and then runs `systemctl enable --now apifw`.
//!
//! The man pages and shell completions come from the release binary itself (`apifw man`,
//! `apifw completions`), which renders them from its one clap definition. xtask cannot link
//! `firewall-userspace` to do it in-process: building that crate needs the nightly toolchain and
//! bpf-linker, which `cargo xtask setup` installs, so xtask must build without them.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cmd, setup, target_dir, workspace_root};

/// The package's name, also the binary's and the unit's.
const NAME: &str = "apifw";

/// The workspace version (xtask shares it), which is the binary's `--version`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where each shell looks for vendor completions, and what `apifw completions` calls the shell.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions/apifw"),
    ("zsh", "usr/share/zsh/vendor-completions/_apifw"),
    ("fish", "usr/share/fish/vendor_completions.d/apifw.fish"),
];

/// Files of the source tree installed as they are: (source, destination in the package, mode).
const FILES: [(&str, &str, u32); 3] = [
    (
        "deploy/systemd/apifw.service",
        "usr/lib/systemd/system/apifw.service",
        0o644,
    ),
    ("examples/apifw.toml", "etc/apifw/apifw.toml", 0o644),
    ("README.md", "usr/share/doc/apifw/README.md", 0o644),
];

/// Directories of documentation copied whole under `/usr/share/doc/apifw/`, keeping the
/// README's relative links (`docs/DESIGN.md`, `deploy/`, `examples/apifw.toml`) working.
const DOC_DIRS: [&str; 3] = ["docs", "deploy", "examples"];

/// The policy, kept across upgrades when the operator changed it.
const CONFFILES: [&str; 1] = ["/etc/apifw/apifw.toml"];

pub fn run() -> Result<()> {
    // The release build embeds the XDP program, which needs nightly and bpf-linker.
    setup::run()?;
    let deb = build()?;
    verify(&deb)?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Builds the package and returns its path (setup must have run).
pub fn build() -> Result<PathBuf> {
    if which::which("dpkg-deb").is_err() {
        bail!("dpkg-deb is missing: `cargo xtask package` builds Debian packages on Debian");
    }
    cmd::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "firewall-userspace",
        "--bin",
        NAME,
    ]))?;
    let binary = target_dir().join("release").join(NAME);
    ensure!(binary.exists(), "{} was not built", binary.display());
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();

    let out_dir = target_dir().join("package");
    let stage = out_dir.join(format!("{NAME}_{VERSION}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    stage_files(&stage, &binary)?;

    let glibc = min_glibc(&fs::read(&binary)?)
        .context("the binary names no GLIBC_2.x symbol version: is it a glibc build?")?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    write(
        &debian.join("control"),
        &control(&arch, &glibc, installed_size_kib(&stage)?),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        &(CONFFILES.join("\n") + "\n"),
        0o644,
    )?;
    write(&debian.join("md5sums"), &md5sums(&stage)?, 0o644)?;
    fix_dir_modes(&stage)?;

    let deb = out_dir.join(format!("{NAME}_{VERSION}_{arch}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// What a built package must hold, as `dpkg-deb --contents` lists it.
const EXPECTED: [&str; 9] = [
    "./usr/bin/apifw",
    "./usr/lib/systemd/system/apifw.service",
    "./etc/apifw/apifw.toml",
    "./usr/share/doc/apifw/README.md",
    "./usr/share/doc/apifw/docs/DESIGN.md",
    "./usr/share/man/man1/apifw.1.gz",
    "./usr/share/bash-completion/completions/apifw",
    "./usr/share/zsh/vendor-completions/_apifw",
    "./usr/share/fish/vendor_completions.d/apifw.fish",
];

/// Checks a built package from the outside: its file list, its conffiles, and that the binary
/// it installs runs (unpacked into a throwaway directory, not installed on this machine).
pub fn verify(deb: &Path) -> Result<()> {
    let contents = cmd::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let listed: Vec<&str> = contents
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .collect();
    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|path| !listed.contains(path))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} lacks {missing:?}; it holds:\n{contents}",
        deb.display()
    );
    let conffiles = cmd::output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"),
    )?;
    ensure!(
        conffiles.lines().any(|line| line.trim() == CONFFILES[0]),
        "{} does not mark {} as a conffile: {conffiles}",
        deb.display(),
        CONFFILES[0]
    );
    let unpacked = target_dir().join("package").join("verify");
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)?;
    }
    cmd::run(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&unpacked),
    )?;
    let version = cmd::output(Command::new(unpacked.join("usr/bin/apifw")).arg("--version"))?;
    ensure!(
        version.contains(VERSION),
        "the packaged binary says {version:?}, not version {VERSION}"
    );
    ensure!(
        !version.contains("test hooks"),
        "the packaged binary was built with the `test-hooks` feature ({version:?}): cargo unified \
         the tests crate's features into it; build `-p firewall-userspace` on its own"
    );
    fs::remove_dir_all(&unpacked)?;
    install_cycle(deb)?;
    println!(
        "package: {} holds what it should, its binary runs, and dpkg installs, removes and \
         purges it",
        deb.display()
    );
    Ok(())
}

/// Installs, removes and purges the package with dpkg in a throwaway root (`dpkg --root`), so
/// the machine's own package database and files are never touched: after the install the
/// binary runs from there and the policy is a registered conffile, `--remove` keeps the policy
/// and takes everything else, `--purge` takes the policy too. The root's package database is
/// empty, so the dependencies (libc6, libgcc-s1) are not installed there: `--force-depends`.
fn install_cycle(deb: &Path) -> Result<()> {
    let root = target_dir().join("package").join("dpkg-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::write(admin.join("status"), "")?;
    fs::write(admin.join("available"), "")?;
    let dpkg = |args: &[&str]| {
        let mut command = Command::new("dpkg");
        command
            .arg(format!("--root={}", root.display()))
            .arg("--log=/dev/null")
            .arg("--force-depends")
            .args(args);
        cmd::output(&mut command)
    };
    dpkg(&["--install", &deb.display().to_string()])?;
    let binary = root.join("usr/bin").join(NAME);
    let version = cmd::output(Command::new(&binary).arg("--version"))?;
    ensure!(
        version.contains(VERSION),
        "the installed binary says {version:?}, not version {VERSION}"
    );
    let status = dpkg(&["--status", NAME])?;
    ensure!(
        status.contains("Status: install ok installed") && status.contains(CONFFILES[0]),
        "dpkg does not list {NAME} as installed with the conffile {}: {status}",
        CONFFILES[0]
    );
    let policy = root.join(CONFFILES[0].trim_start_matches('/'));
    for path in [
        binary.clone(),
        policy.clone(),
        root.join(FILES[0].1),
        root.join("usr/share/doc").join(NAME).join("README.md"),
    ] {
        ensure!(path.is_file(), "dpkg did not install {}", path.display());
    }
    dpkg(&["--remove", NAME])?;
    ensure!(!binary.exists(), "--remove left {}", binary.display());
    ensure!(
        policy.is_file(),
        "--remove took the operator's policy {}",
        policy.display()
    );
    dpkg(&["--purge", NAME])?;
    ensure!(!policy.exists(), "--purge left {}", policy.display());
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// Fills the staging tree with everything but `DEBIAN/`.
fn stage_files(stage: &Path, binary: &Path) -> Result<()> {
    let root = workspace_root();
    install(binary, &stage.join("usr/bin").join(NAME), 0o755)?;
    for (source, dest, mode) in FILES {
        install(&root.join(source), &stage.join(dest), mode)?;
    }
    let doc = stage.join("usr/share/doc").join(NAME);
    for dir in DOC_DIRS {
        copy_tree(&root.join(dir), &doc.join(dir))?;
    }
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;

    let man = stage.join("usr/share/man/man1");
    cmd::run(Command::new(binary).arg("man").arg("--out-dir").arg(&man))?;
    for page in sorted_entries(&man)? {
        set_mode(&page, 0o644)?;
        // Debian's man pages are compressed; -n keeps the name and time out for reproducibility.
        cmd::run(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    for (shell, dest) in COMPLETIONS {
        let script = cmd::output(Command::new(binary).args(["completions", shell]))?;
        write(&stage.join(dest), &script, 0o644)?;
    }
    Ok(())
}

/// The Debian copyright file (machine-readable format).
const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: apifw

Files: *
Copyright: the apifw contributors
License: MIT or Apache-2.0
 apifw is dual-licensed under the MIT license and the Apache License, version 2.0, at your
 option. On Debian systems the Apache License can be found in
 /usr/share/common-licenses/Apache-2.0.
";

/// The `DEBIAN/control` file.
fn control(arch: &str, glibc: &str, installed_kib: u64) -> String {
    format!(
        "Package: {NAME}
Version: {VERSION}
Architecture: {arch}
Maintainer: apifw maintainers <maintainers@apifw.invalid>
Installed-Size: {installed_kib}
Depends: libc6 (>= {glibc}), libgcc-s1
Recommends: iproute2
Section: net
Priority: optional
Description: XDP firewall for API hosts
 apifw drops or passes each incoming packet in the kernel's XDP hook by its source address
 (allowlists and blocklists of IPv4/IPv6 prefixes, feeds such as Spamhaus DROP or FireHOL),
 rate-limits sources and subnets per protocol and port with token buckets, and bans sources
 that keep exceeding their limits.
 .
 The daemon (apifw run, the apifw.service unit) needs only CAP_BPF, CAP_NET_ADMIN and
 CAP_PERFMON. The CLI changes lists and bans at run time over a control socket, shows
 statistics, and the daemon serves Prometheus metrics. Edit /etc/apifw/apifw.toml, then
 enable the service.
"
    )
}

/// The highest `GLIBC_2.N` symbol version the binary asks for, as `2.N`: the libc6 it needs.
fn min_glibc(binary: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut rest = binary;
    while let Some(at) = rest.windows(TAG.len()).position(|window| window == TAG) {
        let digits = &rest[at + TAG.len()..];
        let minor_len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        let minor = std::str::from_utf8(&digits[..minor_len])
            .ok()
            .and_then(|text| text.parse::<u32>().ok());
        // Versions such as GLIBC_2.2.5 have a patch level.
        let patch = match digits.get(minor_len) {
            Some(b'.') => {
                let patch = &digits[minor_len + 1..];
                let len = patch.iter().take_while(|b| b.is_ascii_digit()).count();
                std::str::from_utf8(&patch[..len])
                    .ok()
                    .and_then(|text| text.parse::<u32>().ok())
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if let Some(minor) = minor {
            best = best.max(Some((minor, patch)));
        }
        rest = &rest[at + TAG.len()..];
    }
    best.map(|(minor, patch)| match patch {
        0 => format!("2.{minor}"),
        patch => format!("2.{minor}.{patch}"),
    })
}

/// Size of the installed files in KiB, as `Installed-Size` wants it.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    let bytes: u64 = files(stage)?
        .iter()
        .map(|path| fs::metadata(path).map(|meta| meta.len()))
        .sum::<std::io::Result<u64>>()?;
    Ok(bytes.div_ceil(1024))
}

/// `DEBIAN/md5sums`: one `<md5>  <path>` line per file, as dpkg --verify reads it.
fn md5sums(stage: &Path) -> Result<String> {
    let paths: Vec<PathBuf> = files(stage)?
        .into_iter()
        .filter(|path| !path.starts_with(stage.join("DEBIAN")))
        .collect();
    let mut md5sum = Command::new("md5sum");
    md5sum.current_dir(stage);
    for path in &paths {
        md5sum.arg(path.strip_prefix(stage)?);
    }
    cmd::output(&mut md5sum)
}

/// Every regular file under `dir`, sorted.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| Ok(entry?.path()))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// Copies the regular files under `from` to `to`, with mode 0644 (directories 0755).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for path in files(from)? {
        install(&path, &to.join(path.strip_prefix(from)?), 0o644)?;
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    create_parent(to)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    create_parent(path)?;
    fs::File::create(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().context("a path with no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

/// Gives every directory of the tree mode 0755, whatever the umask: dpkg-deb refuses a group-
/// or world-writable `DEBIAN/`, and installed directories should not be writable by others.
fn fix_dir_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            fix_dir_modes(&path)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_glibc_takes_the_highest_version_asked_for() {
        let binary = b"\0GLIBC_2.2.5\0GLIBC_2.34\0junk GLIBC_2.3.4\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(min_glibc(binary).as_deref(), Some("2.34"));
        assert_eq!(
            min_glibc(b"GLIBC_2.2.5\0GLIBC_2.2\0").as_deref(),
            Some("2.2.5")
        );
        assert_eq!(min_glibc(b"no versions here"), None);
    }

    #[test]
    fn the_control_file_has_the_fields_dpkg_needs() {
        let control = control("amd64", "2.34", 12_345);
        for field in [
            "Package: apifw\n",
            &format!("Version: {VERSION}\n"),
            "Architecture: amd64\n",
            "Installed-Size: 12345\n",
            "Depends: libc6 (>= 2.34), libgcc-s1\n",
            "Description: XDP firewall for API hosts\n",
        ] {
            assert!(
                control.contains(field),
                "{field:?} missing from:\n{control}"
            );
        }
        // Every continuation line of the description starts with a space; none is empty.
        let description = control.split_once("Description:").expect("description").1;
        for line in description.lines().skip(1) {
            assert!(line.starts_with(' ') && line.len() > 1, "bad line {line:?}");
        }
    }

    #[test]
    fn the_shipped_sources_exist() {
        let root = workspace_root();
        for (source, _, _) in FILES {
            assert!(root.join(source).is_file(), "{source} is missing");
        }
        for dir in DOC_DIRS {
            assert!(root.join(dir).is_dir(), "{dir}/ is missing");
        }
    }
}
