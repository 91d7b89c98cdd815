//! Re-renders the plots of an existing report: `cargo run -p apifw-tests --example plot_report
//! -- docs/BENCHMARKS.md` (no measurement, no root).
fn main() -> anyhow::Result<()> {
    let path = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/BENCHMARKS.md".into()),
    );
    let report = std::fs::read_to_string(&path)?;
    let dir = path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("bench");
    let rendered = apifw_tests::plot::render(&report, &dir, "bench/")?;
    std::fs::write(&path, rendered)?;
    eprintln!("plots written to {}", dir.display());
    Ok(())
}
