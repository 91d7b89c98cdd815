//! `apifw completions SHELL`: print a shell completion script, so that operators who did not
//! install the package (whose scripts `cargo xtask package` generates the same way) can have
//! them too.

use std::process::ExitCode;

use clap_complete::Shell;

/// Arguments of `apifw completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Install the output as, e.g.,
    /// /usr/share/bash-completion/completions/apifw (bash),
    /// /usr/share/zsh/vendor-completions/_apifw (zsh) or
    /// /usr/share/fish/vendor_completions.d/apifw.fish (fish).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script of `shell` to `out`.
pub fn write(shell: Shell, out: &mut dyn std::io::Write) {
    let mut command = crate::cli::command();
    clap_complete::generate(shell, &mut command, crate::cli::BIN_NAME, out);
}

/// Runs `apifw completions`.
pub fn execute(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    write(args.shell, &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        write(shell, &mut out);
        String::from_utf8(out).expect("completion scripts are UTF-8")
    }

    #[test]
    fn every_shell_completes_the_verbs_and_their_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = script(shell);
            // Fish spells long flags `-l run-dir`, so the flags are searched without dashes.
            for word in ["run", "block", "import", "completions", "config", "run-dir"] {
                assert!(script.contains(word), "{shell} script lacks {word}");
            }
        }
    }
}
