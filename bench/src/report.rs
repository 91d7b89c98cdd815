//! Assembly of `docs/BENCHMARKS.md` from independently measured sections.
//!
//! Every benchmark of `cargo xtask bench` writes one section, kept in the report between
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. A run that measures only some sections
//! (`--only flood,attack`) replaces just those blocks and keeps the others as they were, so a
//! long benchmark need not be repeated to refresh a short one. The header (machine, kernel,
//! tool versions, date of each section) is written anew every time.

use std::{fmt::Write as _, process::Command};

/// What every benchmark section is told about the run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Runs per measured case; the report gives their median and spread.
    pub runs: usize,
    /// `repeat` of one `BPF_PROG_TEST_RUN` call.
    pub repeat: u32,
    /// A short smoke run (smaller sizes, fewer seconds) to check that a section works; its
    /// numbers are not for the report.
    pub quick: bool,
}

/// Median, min and max of a set of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Summarises `values` (at least one).
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        Self {
            median: median(&mut sorted),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn begin_marker(name: &str) -> String {
    format!("<!-- bench:{name} -->")
}

fn end_marker(name: &str) -> String {
    format!("<!-- /bench:{name} -->")
}

/// The block of section `name` in an existing report, markers excluded, if it has one.
pub fn existing_section<'a>(report: &'a str, name: &str) -> Option<&'a str> {
    let begin = begin_marker(name);
    let start = report.find(&begin)? + begin.len();
    let end = report[start..].find(&end_marker(name))? + start;
    Some(report[start..end].trim_matches('\n'))
}

/// The report: `header`, then every section in the given order, each either newly measured
/// (`Some`) or kept from `existing` (`None`); a section never measured says so.
pub fn assemble(existing: &str, header: &str, sections: &[(&str, Option<String>)]) -> String {
    let mut md = header.trim_end().to_owned();
    md.push_str("\n\n");
    for (name, fresh) in sections {
        let body = match fresh {
            Some(body) => body.trim_matches('\n').to_owned(),
            None => existing_section(existing, name)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!(
                        "## {name}\n\nNot measured yet: run `cargo xtask bench -- --only {name}`."
                    )
                }),
        };
        md.push_str(&begin_marker(name));
        md.push('\n');
        md.push_str(&body);
        md.push('\n');
        md.push_str(&end_marker(name));
        md.push_str("\n\n");
    }
    md.truncate(md.trim_end().len());
    md.push('\n');
    md
}

/// First line of `program --version` (or `args`), or "not installed".
pub fn tool_version(program: &str, args: &[&str]) -> String {
    let args = if args.is_empty() {
        &["--version"][..]
    } else {
        args
    };
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|line| !line.trim().is_empty())
                .map(|line| line.trim().to_owned())
        })
        .unwrap_or_else(|| "not installed".into())
}

/// The machine the numbers come from: CPU model and count, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = online_cpus();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cpus} CPUs, {memory_gib:.0} GiB, kernel {}",
        kernel.trim()
    )
}

/// The machine's online CPUs. Not `available_parallelism`: that counts the CPUs this thread may
/// use, and some sections pin it to one.
pub fn online_cpus() -> usize {
    aya::util::online_cpus().map_or(0, |cpus| cpus.len())
}

/// The report's header: what produced it and on what.
pub fn header(sections: &[(&str, &str)]) -> Result<String, std::fmt::Error> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Generated by `cargo xtask bench` (do not edit by hand; `cargo xtask bench -- --only \
         NAME[,NAME]` refreshes single sections). Every figure is a ratio or a side-by-side \
         measured in the same run, because this machine is noisy.\n"
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(
        md,
        "- apifw {} (eBPF built with {}), {}",
        env!("CARGO_PKG_VERSION"),
        tool_version("rustc", &["+nightly", "--version"]),
        tool_version("rustc", &[])
    )?;
    writeln!(
        md,
        "- Peers: xdp-filter (xdp-tools {}), {}, {}, {}",
        // xdp-filter has no version flag; the Debian package says which release it is.
        tool_version("dpkg-query", &["-W", "-f=${Version}", "xdp-tools"]),
        tool_version("nft", &[]),
        tool_version("ipset", &[]),
        tool_version("iptables", &[])
    )?;
    writeln!(
        md,
        "- CrowdSec (Debian packages): crowdsec {}, crowdsec-firewall-bouncer {}",
        tool_version("dpkg-query", &["-W", "-f=${Version}", "crowdsec"]),
        tool_version(
            "dpkg-query",
            &["-W", "-f=${Version}", "crowdsec-firewall-bouncer"]
        )
    )?;
    for (name, date) in sections {
        writeln!(md, "- Section `{name}` measured {date}")?;
    }
    Ok(md)
}

/// Today's date and time in UTC, as `date -u` prints it (no date crate for one line).
pub fn now() -> String {
    tool_version("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// The date lines a header keeps for sections this run did not measure.
pub fn existing_date(report: &str, name: &str) -> Option<String> {
    let prefix = format!("- Section `{name}` measured ");
    report
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// The median of `values` (sorted in place); the benchmarks' one definition of it.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sections_not_measured_and_replaces_the_others() {
        let first = assemble(
            "",
            "# Benchmarks",
            &[
                ("a", Some("## A\n\nold a".into())),
                ("b", Some("## B\n\nold b".into())),
            ],
        );
        let second = assemble(
            &first,
            "# Benchmarks",
            &[
                ("a", None),
                ("b", Some("## B\n\nnew b".into())),
                ("c", None),
            ],
        );
        assert_eq!(existing_section(&second, "a"), Some("## A\n\nold a"));
        assert_eq!(existing_section(&second, "b"), Some("## B\n\nnew b"));
        assert!(
            existing_section(&second, "c").is_some_and(|c| c.contains("Not measured yet")),
            "{second}"
        );
    }

    #[test]
    fn spread_of_runs() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
    }
}
