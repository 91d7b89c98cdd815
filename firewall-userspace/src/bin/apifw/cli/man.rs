//! `apifw man --out-dir DIR`: write the man pages, `apifw.1` and one page per verb
//! (`apifw-run.1`, `apifw-block-add.1`, ...), rendered from the same clap definition as
//! `--help`, for hosts that did not install the package. `cargo xtask package` runs it on the
//! release binary: xtask cannot link this crate itself, because building it needs the nightly
//! toolchain and bpf-linker that `cargo xtask setup` installs, and setup is part of xtask.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;

/// Arguments of `apifw man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Where to write the pages (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Writes every page into `out_dir`.
pub fn write_pages(out_dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    clap_mangen::generate_to(crate::cli::command(), out_dir)
}

/// Runs `apifw man`.
pub fn execute(args: ManArgs) -> anyhow::Result<ExitCode> {
    write_pages(&args.out_dir)
        .with_context(|| format!("cannot write man pages to {}", args.out_dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_main_page_and_one_per_verb() {
        let dir = std::env::temp_dir().join(format!("apifw-man-test-{}", std::process::id()));
        write_pages(&dir).expect("write pages");
        let page = |name: &str| std::fs::read_to_string(dir.join(name));
        let main = page("apifw.1").expect("apifw.1");
        assert!(main.contains(".TH apifw 1"), "{main}");
        assert!(
            main.contains("apifw\\-run(1)"),
            "the main page lists the verbs: {main}"
        );
        let run = page("apifw-run.1").expect("apifw-run.1");
        assert!(run.contains("\\-\\-config"), "{run}");
        assert!(page("apifw-block-add.1").is_ok(), "nested verbs get pages");
        assert!(
            page("apifw-completions.1").is_ok(),
            "every verb gets a page"
        );
        assert!(
            page("apifw-help.1").is_err(),
            "clap's `help` verb gets none"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
