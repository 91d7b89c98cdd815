//! `apifw-bench`, run by `cargo xtask bench`: measures apifw against its baselines and peers and
//! writes `docs/BENCHMARKS.md`, one module per section ([`SECTIONS`]): per-packet cost with
//! `BPF_PROG_TEST_RUN` as ratios to baselines measured in the same run ([`packet`]), what each
//! stage of the program costs ([`ablation`]), loading 1M CIDRs next to `ipset restore` and
//! `nft -f` ([`loadbench`]), floods over veth ([`flood`]), many distinct sources ([`sources`]),
//! an HTTP API under attack ([`attack`]), several CPUs ([`multicore`]) and 100k CrowdSec
//! decisions next to `crowdsec-firewall-bouncer` ([`fleet`]).
//!
//! Every case is measured `--runs` times (default 7), interleaved with its baselines so that
//! machine noise hits both alike; the median and the spread (min..max) are reported.
//! `--only`/`--skip` choose sections; the others keep their part of an existing report.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};
// The test library's helpers, under the names the sections use (`crate::netns`, ...).
use apifw_tests::{daemon, generator, lapi, netns, packets, programs, support};

mod ablation;
mod attack;
mod fleet;
mod flood;
mod loadbench;
mod multicore;
mod packet;
mod plot;
mod report;
mod sources;
mod syncookie;
mod xdpfilter;

/// Measures apifw against its baselines and peers and writes the report (run through
/// `cargo xtask bench -- ARGS`, which builds it and installs the peers first).
#[derive(Debug, clap::Parser)]
#[command(name = "apifw-bench")]
struct Args {
    /// The report to update.
    #[arg(long, value_name = "FILE", default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// `BPF_PROG_TEST_RUN` repetitions per measurement.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Runs per figure (the report gives their median and spread).
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = at_least_one)]
    runs: usize,
    /// Sections to measure, comma-separated (default: all).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Vec<String>,
    /// Sections not to measure, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    skip: Vec<String>,
    /// Smoke run: small sizes, the report printed instead of written.
    #[arg(long)]
    quick: bool,
    /// Measure nothing: redraw the plots of the existing report (no root needed).
    #[arg(long, conflicts_with_all = ["only", "skip", "quick"])]
    plots_only: bool,
    /// Entries the control-plane (`load`) section loads.
    #[arg(long = "load-entries", value_name = "N", default_value_t = loadbench::Options::default().entries)]
    load_entries: usize,
    /// Rounds of the `load` section.
    #[arg(long = "load-runs", value_name = "N", default_value_t = loadbench::Options::default().runs, value_parser = at_least_one)]
    load_runs: usize,
    /// `APIFW_LOG` of the daemon in the `load` section.
    #[arg(long = "load-log", value_name = "LEVEL", default_value = "info")]
    load_log: String,
    /// Rounds of the `fleet` section (each starts both CrowdSec bouncers fresh; the firewall
    /// bouncer takes minutes to apply 100k decisions).
    #[arg(long = "fleet-runs", value_name = "N", default_value_t = 3, value_parser = at_least_one)]
    fleet_runs: usize,
    /// Older spelling of `--skip load`.
    #[arg(long = "skip-load", hide = true)]
    skip_load: bool,
    /// Older spelling of `--only load`.
    #[arg(long = "only-load", hide = true)]
    only_load: bool,
}

/// A count that must be at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

impl Args {
    /// What every section module is told.
    fn common(&self) -> report::BenchOptions {
        report::BenchOptions {
            runs: self.runs,
            repeat: self.repeat,
            quick: self.quick,
        }
    }

    /// The `load` section's options.
    fn load(&self) -> loadbench::Options {
        loadbench::Options {
            entries: self.load_entries,
            runs: self.load_runs,
            daemon_log: self.load_log.clone(),
        }
    }
}

/// The command line, with the older `--skip-load`/`--only-load` folded into the lists.
fn parse_args() -> Args {
    let mut args = <Args as clap::Parser>::parse();
    if args.skip_load {
        args.skip.push("load".into());
    }
    if args.only_load {
        args.only.push("load".into());
    }
    args
}

/// The report's sections in order: name, and what measures it. Adding a benchmark is one line
/// here plus its module in this crate.
type Measure = fn(&Args) -> anyhow::Result<String>;
const SECTIONS: &[(&str, Measure)] = &[
    ("packet", |args| packet::run(&args.common())),
    ("ablation", |args| ablation::run(&args.common())),
    ("load", |args| Ok(loadbench::run(&args.load())?.markdown()?)),
    ("flood", |args| flood::run(&args.common())),
    ("sources", |args| sources::run(&args.common())),
    ("syncookie", |args| syncookie::run(&args.common())),
    ("synflood", |args| attack::cookies::run(&args.common())),
    ("attack", |args| attack::run(&args.common())),
    ("multicore", |args| multicore::run(&args.common())),
    ("fleet", |args| fleet::run(&args.common(), args.fleet_runs)),
];

fn main() -> anyhow::Result<()> {
    let args = parse_args();
    if args.plots_only {
        let report = std::fs::read_to_string(&args.out)
            .with_context(|| format!("read {}", args.out.display()))?;
        let md = plot::render(&report, &plots_dir(&args.out), "bench/")?;
        std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
        eprintln!("bench: plots of {} redrawn", args.out.display());
        return Ok(());
    }
    for name in args.only.iter().chain(&args.skip) {
        if !SECTIONS.iter().any(|(known, _)| known == name) {
            let known: Vec<&str> = SECTIONS.iter().map(|(known, _)| *known).collect();
            bail!("unknown section {name} (known: {})", known.join(", "));
        }
    }
    // The sections this run does not measure are kept from the existing report.
    let existing = std::fs::read_to_string(&args.out).unwrap_or_default();
    let mut sections = Vec::new();
    let mut dates = Vec::new();
    for (name, measure) in SECTIONS {
        let wanted = (args.only.is_empty() || args.only.iter().any(|only| only == name))
            && !args.skip.iter().any(|skip| skip == name);
        if wanted {
            eprintln!("bench: measuring section {name}");
            let started = Instant::now();
            let body = measure(&args).with_context(|| format!("benchmark section {name}"))?;
            eprintln!(
                "bench: section {name} took {:.0} s",
                started.elapsed().as_secs_f64()
            );
            dates.push((*name, report::now()));
            sections.push((*name, Some(body)));
            // Written after every section: a later section that fails loses only itself.
            if !args.quick {
                write_report(&args, &existing, &dates, &sections)?;
                eprintln!("bench: wrote {}", args.out.display());
            }
        } else {
            if let Some(date) = report::existing_date(&existing, name) {
                dates.push((*name, date));
            }
            sections.push((*name, None));
        }
    }
    if args.quick {
        let date_refs: Vec<(&str, &str)> = dates.iter().map(|(n, d)| (*n, d.as_str())).collect();
        let md = report::assemble(&existing, &report::header(&date_refs)?, &sections);
        eprintln!("bench: --quick run, report not written:\n{md}");
    }
    Ok(())
}

/// Writes the report: the sections measured so far (`Some` in `sections`), every other section
/// (`None`, or not reached yet) kept from `existing` with its date, and the plots.
fn write_report(
    args: &Args,
    existing: &str,
    dates: &[(&str, String)],
    sections: &[(&str, Option<String>)],
) -> anyhow::Result<()> {
    let mut all_dates: Vec<(&str, String)> = Vec::new();
    let mut all_sections: Vec<(&str, Option<String>)> = Vec::new();
    for (name, _) in SECTIONS {
        let reached = sections.iter().find(|(reached, _)| reached == name);
        all_sections.push((name, reached.and_then(|(_, body)| body.clone())));
        match dates.iter().find(|(dated, _)| dated == name) {
            Some((_, date)) => all_dates.push((name, date.clone())),
            None => {
                if let Some(date) = report::existing_date(existing, name) {
                    all_dates.push((name, date));
                }
            }
        }
    }
    let date_refs: Vec<(&str, &str)> = all_dates.iter().map(|(n, d)| (*n, d.as_str())).collect();
    let md = report::assemble(existing, &report::header(&date_refs)?, &all_sections);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Plots are drawn from the finished tables, so they always match the numbers.
    let md = plot::render(&md, &plots_dir(&args.out), "bench/")?;
    std::fs::write(&args.out, md).with_context(|| format!("write {}", args.out.display()))?;
    Ok(())
}

/// Where the plots of the report `out` go: `bench/` next to it.
fn plots_dir(out: &std::path::Path) -> PathBuf {
    out.parent()
        .unwrap_or(std::path::Path::new("."))
        .join("bench")
}
