//! Plots of the benchmark report, rendered to SVG from the report's own tables.
//!
//! The plots are a view of `docs/BENCHMARKS.md`: every table with a column worth plotting
//! (a ratio to the empty program, a rate, a share of the no-flood goodput) becomes one
//! horizontal bar chart, the bar at the median and a whisker over the spread when the table has
//! one. Drawing from the tables rather than from each benchmark's data means a section kept from
//! an earlier run is plotted the same way as a fresh one, and a plot can never disagree with the
//! numbers next to it.
//!
//! apifw's bars have a colour of their own and the baselines and peers (the empty program,
//! xdp-filter, nftables, the kernel alone, ...) another, so apifw stands out. A section marks a
//! goal for the plotted column with `<!-- plot-goal: VALUE -->` right after its table; the chart
//! draws it as a line. Titles say what is measured, without the issue numbers of the headings.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use plotters::prelude::*;

/// Columns a chart is drawn for, in order of preference: the first header of a table that
/// contains one of these (case-insensitive) is plotted.
const PLOTTED: &[&str] = &[
    "× one lookup (median)",
    "÷ 1 cpu",
    "× empty (median)",
    "% of no flood",
    "cpu ms per mpkt (median)",
    "goodput (median",
    "mpps",
    "packets/s",
    "ns/packet",
    "seconds (median)",
];

/// One Markdown table: its header cells and rows of cells.
#[derive(Debug, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// The tables of a Markdown text, in order.
pub fn tables(md: &str) -> Vec<Table> {
    let lines: Vec<&str> = md.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let is_rule = |line: &str| {
            let line = line.trim();
            line.starts_with('|') && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
        };
        if lines[i].trim().starts_with('|') && is_rule(lines[i + 1]) {
            let header = cells(lines[i]);
            let mut rows = Vec::new();
            i += 2;
            while i < lines.len() && lines[i].trim().starts_with('|') {
                rows.push(cells(lines[i]));
                i += 1;
            }
            found.push(Table { header, rows });
        } else {
            i += 1;
        }
    }
    found
}

/// A number at the start of a cell ("6.81", "1.935", "12 345", "93.1%"); `None` otherwise.
fn number(cell: &str) -> Option<f64> {
    let cleaned: String = cell
        .trim_matches('*')
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ' ' | '-'))
        .filter(|c| *c != ' ')
        .collect();
    cleaned.parse().ok()
}

/// "a..b" spread cells.
fn range(cell: &str) -> Option<(f64, f64)> {
    let (low, high) = cell.split_once("..")?;
    Some((number(low)?, number(high)?))
}

/// One bar: its label, value and optional spread (min, max).
pub type Bar = (String, f64, Option<(f64, f64)>);

/// What one chart shows: a label per bar, its value and optional spread.
#[derive(Debug, PartialEq)]
pub struct Bars {
    pub title: String,
    pub axis: String,
    pub bars: Vec<Bar>,
    /// Where the goal line goes, in the plotted column's unit.
    pub goal: Option<f64>,
}

/// Words in a bar's label that make it a baseline or a peer rather than apifw.
const NOT_APIFW: &[&str] = &[
    "empty",
    "one lookup",
    "one-lookup",
    "xdp-filter",
    "nftables",
    "nft ",
    "`nft",
    "iptables",
    "ipset",
    "no firewall",
    "no flood",
    "no protection",
    "kernel",
    "stack",
    "floor",
    "sink",
    "synproxy",
];

/// Whether the bar labelled `label` measures apifw (else a baseline or a peer).
pub fn is_apifw(label: &str) -> bool {
    let lower = label.to_lowercase();
    lower.contains("apifw") || !NOT_APIFW.iter().any(|word| lower.contains(word))
}

/// apifw's colour, and the baselines' and peers'.
const APIFW: RGBColor = RGBColor(222, 110, 20);
const OTHERS: RGBColor = RGBColor(140, 155, 180);
/// The goal line's colour.
const GOAL: RGBColor = RGBColor(200, 30, 30);

/// A heading as a chart title: what is measured, without "(issue #N)".
pub fn title_of(heading: &str) -> String {
    let mut title = heading.to_owned();
    while let Some(start) = title.find("(issue #") {
        let end = title[start..]
            .find(')')
            .map_or(title.len(), |end| start + end + 1);
        title.replace_range(start..end, "");
    }
    title.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The chart for `table`, if it has a column to plot: the bar labels are the cells left of the
/// first numeric column that is not a size, the spread is the column right after the plotted one
/// when that holds "a..b" ranges.
pub fn bars(title: &str, table: &Table) -> Option<Bars> {
    let lower: Vec<String> = table.header.iter().map(|h| h.to_lowercase()).collect();
    let column = PLOTTED.iter().find_map(|wanted| {
        lower
            .iter()
            .position(|header| header.contains(&wanted.to_lowercase()))
    })?;
    // Label cells: the first column, and every other column left of the plotted one whose cells
    // are not numbers (the measurements next to the plotted one would only clutter the labels).
    let numeric = |i: usize| {
        table
            .rows
            .iter()
            .all(|row| row.get(i).is_some_and(|cell| number(cell).is_some()))
    };
    let label_columns: Vec<usize> = (0..column)
        .filter(|&i| i == 0 || !(numeric(i) || lower[i].contains("spread")))
        .collect();
    let spread_column = (column + 1 < table.header.len() && lower[column + 1].contains("spread"))
        .then_some(column + 1);
    let mut bars = Vec::new();
    for row in &table.rows {
        let Some(value) = row.get(column).and_then(|cell| number(cell)) else {
            continue;
        };
        let label = label_columns
            .iter()
            .filter_map(|&i| row.get(i))
            .filter(|cell| !cell.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" · ");
        let spread = spread_column
            .and_then(|i| row.get(i))
            .and_then(|c| range(c));
        bars.push((label, value, spread));
    }
    (!bars.is_empty()).then(|| Bars {
        title: title_of(title),
        axis: table.header[column].clone(),
        bars,
        goal: None,
    })
}

/// Renders `chart` as an SVG document.
pub fn svg(chart: &Bars) -> anyhow::Result<String> {
    let mut out = String::new();
    let rows = chart.bars.len();
    let height = 90 + 26 * rows as u32;
    let longest = chart
        .bars
        .iter()
        .map(|(label, _, _)| label.chars().count())
        .max()
        .unwrap_or(10);
    let label_width = (longest as u32 * 7 + 20).clamp(120, 560);
    let top = chart
        .bars
        .iter()
        .map(|(_, value, spread)| spread.map_or(*value, |(_, high)| high.max(*value)))
        .fold(chart.goal.unwrap_or(0.0), f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.08;
    {
        let root =
            SVGBackend::with_string(&mut out, (label_width + 520, height)).into_drawing_area();
        root.fill(&WHITE)?;
        // Bar i fills the band [2i, 2i + 2] of the y axis, its tick and label at the band's
        // centre 2i + 1: exactly one tick per bar. (A segmented axis over `0..rows` has
        // `rows + 1` segments, since an integer range holds both ends: it drew an empty tick
        // above the first bar.)
        let band = |i: usize| u32::try_from(2 * i).unwrap_or(u32::MAX);
        let centres: Vec<u32> = (0..rows).map(|i| band(i) + 1).collect();
        let mut plot = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0.0..top, (0..band(rows)).with_key_points(centres.clone()))?;
        // The first row of the table is drawn on top, as it is read.
        let labels: Vec<String> = chart.bars.iter().rev().map(|(l, _, _)| l.clone()).collect();
        let at = |i: usize| rows - 1 - i;
        plot.configure_mesh()
            .disable_y_mesh()
            .x_desc(chart.axis.as_str())
            .y_label_formatter(&|y| {
                centres
                    .iter()
                    .position(|centre| centre == y)
                    .and_then(|i| labels.get(i).cloned())
                    .unwrap_or_default()
            })
            .draw()?;
        plot.draw_series(chart.bars.iter().enumerate().map(|(i, (label, value, _))| {
            let colour = if is_apifw(label) { APIFW } else { OTHERS };
            let mut bar = Rectangle::new(
                [(0.0, band(at(i))), (*value, band(at(i) + 1))],
                colour.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))?;
        if let Some(goal) = chart.goal {
            plot.draw_series(std::iter::once(PathElement::new(
                vec![(goal, 0), (goal, band(rows))],
                GOAL.stroke_width(2),
            )))?
            .label(format!("goal: {goal}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GOAL.stroke_width(2)));
            plot.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        plot.draw_series(
            chart
                .bars
                .iter()
                .enumerate()
                .filter_map(|(i, (_, _, spread))| spread.map(|s| (i, s)))
                .map(|(i, (low, high))| {
                    PathElement::new(
                        vec![(low, centres[at(i)]), (high, centres[at(i)])],
                        BLACK.stroke_width(2),
                    )
                }),
        )?;
        root.present()?;
    }
    Ok(out)
}

/// Marks the plot lines this module adds, so a later run replaces rather than repeats them.
const PLOT_PREFIX: &str = "![plot: ";

/// Marks the goal of the table above it, in the plotted column's unit (see the module docs).
pub const GOAL_PREFIX: &str = "<!-- plot-goal:";

/// The goal marker for a section to put after a table.
pub fn goal_marker(value: f64) -> String {
    format!("{GOAL_PREFIX} {value} -->")
}

/// Writes one SVG per plottable table of each bench section of `report` into `dir` (named
/// `<section>-<n>.svg`), and returns the report with a link to each plot under its table. Stale
/// plot links and files from earlier runs are dropped.
pub fn render(report: &str, dir: &Path, link_prefix: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "svg") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut out = String::new();
    let mut section = String::from("report");
    let mut heading = String::new();
    let mut counter = 0;
    let mut table_lines: Vec<&str> = Vec::new();
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| !line.starts_with(PLOT_PREFIX))
        .collect();
    let mut i = 0;
    while i <= lines.len() {
        let line = lines.get(i).copied();
        let in_table = line.is_some_and(|l| l.trim_start().starts_with('|'));
        if in_table {
            table_lines.push(line.unwrap_or_default());
        } else if !table_lines.is_empty() {
            // The table just ended: plot it, then carry on with the line after it.
            let text = table_lines.join("\n");
            for line in &table_lines {
                out.push_str(line);
                out.push('\n');
            }
            table_lines.clear();
            let goal = lines[i..]
                .iter()
                .take_while(|line| !line.trim_start().starts_with('|'))
                .take(6)
                .find_map(|line| {
                    line.trim()
                        .strip_prefix(GOAL_PREFIX)
                        .and_then(|rest| rest.strip_suffix("-->"))
                        .and_then(|value| value.trim().parse::<f64>().ok())
                });
            if let Some(mut chart) = tables(&text).first().and_then(|t| bars(&heading, t)) {
                chart.goal = goal;
                counter += 1;
                let name = format!("{section}-{counter}.svg");
                let path = dir.join(&name);
                std::fs::write(&path, svg(&chart)?)
                    .with_context(|| format!("write {}", path.display()))?;
                // A blank line on both sides, whatever follows the table (the tidying below
                // collapses doubles): a table that ends its section gets the same text on
                // every run.
                writeln!(
                    out,
                    "\n{PLOT_PREFIX}{}]({link_prefix}{name})\n",
                    chart.title
                )?;
            }
        }
        if let Some(line) = line
            && !in_table
        {
            if let Some(name) = line
                .strip_prefix("<!-- bench:")
                .and_then(|rest| rest.strip_suffix(" -->"))
            {
                section = name.to_owned();
                counter = 0;
            }
            if line.starts_with("##") {
                heading = line.trim_start_matches('#').trim().to_owned();
            }
            out.push_str(line);
            out.push('\n');
        }
        i += 1;
    }
    // A plot link is followed by one blank line in `out` already when the table was followed by
    // one; collapse the runs of blank lines that removing old links may leave.
    let mut tidy = String::new();
    let mut blank = false;
    for line in out.lines() {
        if line.trim().is_empty() {
            if !blank {
                tidy.push('\n');
            }
            blank = true;
        } else {
            tidy.push_str(line);
            tidy.push('\n');
            blank = false;
        }
    }
    Ok(tidy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "<!-- bench:packet -->\n## Per-packet\n\nText.\n\n\
        | prefixes | case | ns/packet (median) | spread | × empty (median) | × empty spread |\n\
        |---:|---|---:|---:|---:|---:|\n\
        | 1 | blocked | 135.0 | 76.0..175.0 | 6.33 | 4.76..16.80 |\n\
        | 1000000 | passed | 60.0 | 46.0..88.0 | 3.62 | 2.95..6.45 |\n\
        \nAfter.\n<!-- /bench:packet -->\n";

    #[test]
    fn a_table_becomes_bars_with_spread() {
        let table = &tables(REPORT)[0];
        let chart = bars("Per-packet", table).expect("plottable");
        assert_eq!(chart.axis, "× empty (median)");
        assert_eq!(chart.title, "Per-packet");
        assert_eq!(
            chart.bars,
            vec![
                ("1 · blocked".to_owned(), 6.33, Some((4.76, 16.80))),
                ("1000000 · passed".to_owned(), 3.62, Some((2.95, 6.45))),
            ]
        );
    }

    #[test]
    fn apifw_stands_out_and_titles_drop_issue_numbers() {
        assert!(is_apifw("IPv4 blocked source (/32 entry)"));
        assert!(is_apifw("apifw, native, blocklist"));
        assert!(!is_apifw("empty XDP program"));
        assert!(!is_apifw("xdp-filter · IPv4 blocked"));
        assert!(!is_apifw("no protection (the kernel's own SYN cookies)"));
        assert_eq!(title_of("Blocklist lookup (issue #2)"), "Blocklist lookup");
        assert_eq!(
            title_of("Peers: xdp-filter (issue #6) (issue #7)"),
            "Peers: xdp-filter"
        );
    }

    #[test]
    fn a_goal_marker_draws_a_goal_line() {
        let report = REPORT.replace("\nAfter.", &format!("\n{}\nAfter.", goal_marker(1.5)));
        let dir = std::env::temp_dir().join(format!("apifw-plot-goal-{}", std::process::id()));
        render(&report, &dir, "bench/").unwrap();
        let svg = std::fs::read_to_string(dir.join("packet-1.svg")).unwrap();
        assert!(svg.contains("goal: 1.5"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The y-axis labels of a chart (right-aligned texts), in the SVG's order.
    fn y_labels(svg: &str) -> Vec<String> {
        svg.split("<text ")
            .skip(1)
            .filter(|text| text.contains("text-anchor=\"end\""))
            .map(|text| {
                text.split_once('>')
                    .map_or("", |(_, rest)| rest.split("</text>").next().unwrap_or(""))
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    /// One tick per bar, each labelled: no empty tick above the first bar (a segmented axis
    /// over `0..rows` has `rows + 1` segments).
    #[test]
    fn every_tick_has_its_bar() {
        for rows in [1usize, 2, 5] {
            let chart = Bars {
                title: "t".into(),
                axis: "ns/packet".into(),
                bars: (0..rows)
                    .map(|i| {
                        (
                            format!("bar {i}"),
                            1.0 + i as f64,
                            Some((0.5, 2.0 + i as f64)),
                        )
                    })
                    .collect(),
                goal: Some(1.5),
            };
            let svg = svg(&chart).unwrap();
            let mut labels = y_labels(&svg);
            labels.sort();
            let expected: Vec<String> = (0..rows).map(|i| format!("bar {i}")).collect();
            assert_eq!(labels, expected, "{rows} bars:\n{svg}");
            // Every bar has a height: its top is not its bottom.
            let heights: Vec<&str> = svg
                .split("<rect ")
                .filter(|rect| rect.contains("fill=\"#DE6E14\""))
                .filter_map(|rect| rect.split("height=\"").nth(1)?.split('"').next())
                .collect();
            assert_eq!(heights.len(), rows, "{svg}");
            assert!(
                heights
                    .iter()
                    .all(|h| h.parse::<i32>().is_ok_and(|h| h > 0)),
                "{heights:?}"
            );
        }
    }

    #[test]
    fn a_table_that_ends_its_section_renders_the_same_twice() {
        let report = REPORT.replace("\nAfter.\n", "");
        let dir = std::env::temp_dir().join(format!("apifw-plot-end-{}", std::process::id()));
        let first = render(&report, &dir, "bench/").unwrap();
        let second = render(&first, &dir, "bench/").unwrap();
        assert_eq!(first, second);
        assert!(
            first.contains("(bench/packet-1.svg)\n\n<!-- /bench:packet -->"),
            "{first}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn render_links_each_plot_once_across_runs() {
        let dir = std::env::temp_dir().join(format!("apifw-plot-test-{}", std::process::id()));
        let first = render(REPORT, &dir, "bench/").unwrap();
        let second = render(&first, &dir, "bench/").unwrap();
        assert_eq!(first, second);
        assert_eq!(second.matches(PLOT_PREFIX).count(), 1, "{second}");
        assert!(second.contains("](bench/packet-1.svg)"), "{second}");
        let svg = std::fs::read_to_string(dir.join("packet-1.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("blocked"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
