//! `apifw audit [--since WHEN] [--json]`: who changed the firewall, when and how, read from the
//! audit log. Works without a running daemon: it only reads the file.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use crate::cli::ControlArgs;
use firewall_userspace::{
    control::Status,
    store::audit::{self, AuditRecord},
};

/// Arguments of `apifw audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only records newer than this: a duration ("1h", "30m") or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The audit log (default: the policy's `daemon.audit_log` when --config is given, else the
    /// log of the daemon running at --run-dir, else /var/log/apifw/audit.log).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The policy file, to find its audit log.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The running daemon's run directory, to ask it where its audit log is (as the other verbs
    /// find the daemon).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["file", "config"])]
    pub run_dir: Option<PathBuf>,
    /// The running daemon's control socket (default: `apifw.sock` in the run directory).
    #[arg(long, value_name = "PATH", env = "APIFW_SOCKET", conflicts_with_all = ["file", "config"])]
    pub socket: Option<PathBuf>,
}

/// Prints the audit records.
pub fn execute(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let path = match (args.file, args.config.as_deref()) {
        (None, None) => daemon_log_path(args.socket, args.run_dir)?,
        (file, config) => log_path(file, config)?,
    };
    // Parsed before reading so that a bad --since is reported even while the log is missing.
    let since = args
        .since
        .as_deref()
        .map(|text| audit::parse_since(text, SystemTime::now()))
        .transpose()?;

    let records = match audit::read(&path, since) {
        Ok(records) => records,
        Err(err) if err.is_missing_log() => {
            let note = format!("no audit records ({} does not exist yet)", path.display());
            // Keep stdout parseable as JSON lines (here: none) for scripts.
            if args.json {
                eprintln!("{note}");
            } else {
                println!("{note}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(err) => return Err(err.into()),
    };

    if args.json {
        for record in &records {
            println!("{}", serde_json::to_string(record)?);
        }
    } else if records.is_empty() {
        match since {
            Some(since) => println!(
                "no audit records in {} since {}",
                path.display(),
                humantime::format_rfc3339_seconds(since)
            ),
            None => println!("no audit records in {}", path.display()),
        }
    } else {
        print!("{}", render_table(&records));
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit log of the daemon at `socket` (or in `run_dir`, default /run/apifw), asked over
/// its control socket. With no daemon there, the default log, said on stderr; a daemon that was
/// named explicitly (`--run-dir`, `--socket`) but does not answer is an error.
fn daemon_log_path(socket: Option<PathBuf>, run_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let explicit = socket.is_some() || run_dir.is_some();
    let control = ControlArgs {
        socket,
        run_dir,
        config: None,
        json: false,
    };
    match control.client()?.get::<Status>("/status") {
        Ok(status) if !status.audit_log.as_os_str().is_empty() => Ok(status.audit_log),
        Ok(_) => Ok(PathBuf::from(audit::DEFAULT_AUDIT_LOG)),
        Err(err) if explicit => Err(anyhow::Error::new(err).context(
            "cannot ask the daemon where its audit log is (pass --file or --config to read a \
             log without a daemon)",
        )),
        Err(_) => {
            eprintln!(
                "apifw: no daemon answers at {}; reading the default audit log",
                firewall_userspace::paths::DEFAULT_RUN_DIR
            );
            Ok(PathBuf::from(audit::DEFAULT_AUDIT_LOG))
        }
    }
}

/// The log to read: `--file`, else the policy's when `--config` is given, else the default.
fn log_path(file: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(file) = file {
        return Ok(file);
    }
    Ok(match config {
        Some(config) => {
            // Loaded (and so validated) even for one field: reading the audit log of a policy
            // that does not load would name a log the daemon may never have used.
            firewall_userspace::policy::Loaded::from_file(config)?
                .policy
                .daemon
                .audit_log
        }
        None => PathBuf::from(audit::DEFAULT_AUDIT_LOG),
    })
}

/// One line per record: time, actor and action in aligned columns, then the object as compact
/// JSON.
fn render_table(records: &[AuditRecord]) -> String {
    let actors: Vec<_> = records.iter().map(|r| printable(&r.actor)).collect();
    let actions: Vec<_> = records.iter().map(|r| printable(&r.action)).collect();
    let width = |column: &[Cow<'_, str>], header: &str| {
        column
            .iter()
            .map(|text| text.chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or_default()
    };
    let actor_width = width(&actors, "ACTOR");
    let action_width = width(&actions, "ACTION");
    // Every `time` we write has this width; a hand-edited one just pushes its line out.
    let time_width = "2025-01-31T12:00:00.000Z".len();

    let mut out = format!(
        "{:<time_width$}  {:<actor_width$}  {:<action_width$}  OBJECT\n",
        "TIME", "ACTOR", "ACTION"
    );
    for ((record, actor), action) in records.iter().zip(&actors).zip(&actions) {
        let line = format!(
            "{:<time_width$}  {actor:<actor_width$}  {action:<action_width$}  {}",
            printable(&record.time),
            printable(&record.object.to_string()),
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` with control characters escaped: records quote what callers sent (comments, file
/// names, error text), and printing that raw would let it drive the reader's terminal. JSON
/// encoding already escapes C0 controls but not DEL or the C1 range (U+0080..U+009F).
fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    format!("\\u{:04x}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    fn record(secs: u64, actor: &str, action: &str, object: serde_json::Value) -> AuditRecord {
        AuditRecord::at(
            UNIX_EPOCH + Duration::from_secs(secs),
            actor,
            action,
            object,
        )
    }

    #[test]
    fn table_aligns_columns() {
        let table = render_table(&[
            record(
                1_738_324_800,
                "uid 1000",
                "block.add",
                json!({ "cidrs": ["192.0.2.0/24"], "ttl_secs": 60 }),
            ),
            record(1_738_324_801, "daemon", "ban.expire", json!(null)),
        ]);
        assert_eq!(
            table,
            "TIME                      ACTOR     ACTION      OBJECT\n\
             2025-01-31T12:00:00.000Z  uid 1000  block.add   {\"cidrs\":[\"192.0.2.0/24\"],\"ttl_secs\":60}\n\
             2025-01-31T12:00:01.000Z  daemon    ban.expire  null\n"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let table = render_table(&[record(
            0,
            "uid\u{1b}[31m 0",
            "import",
            json!({ "comment": "csi\u{9b}31m del\u{7f} esc\u{1b}" }),
        )]);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(table.contains(r"uid\u001b[31m 0"), "{table}");
        assert!(
            table.contains(r"csi\u009b31m del\u007f esc\u001b"),
            "{table}"
        );
    }

    #[test]
    fn file_flag_wins() {
        let file = PathBuf::from("/tmp/elsewhere.log");
        assert_eq!(
            log_path(Some(file.clone()), Some(Path::new("/nonexistent.toml"))).expect("path"),
            file
        );
        assert_eq!(
            log_path(None, None).expect("path"),
            PathBuf::from(audit::DEFAULT_AUDIT_LOG)
        );
    }
}
