//! The audit log: an append-only record of every change to the firewall (who, when, what), one
//! JSON object per line so that it can be tailed, grepped and parsed line by line.
//!
//! Several handles (the daemon, a CLI verb) may append to one file at once: the file is opened
//! with `O_APPEND` and every record is a single `write(2)` of a complete line, so records never
//! interleave. A crash can still tear the last line; [`read`] ignores such a tail and
//! [`AuditLog::open`] terminates it so the records that follow stay readable.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Where the audit log is kept unless the policy says otherwise.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/apifw/audit.log";

/// The last millisecond [`humantime`] can format (9999-12-31T23:59:59.999Z); later clocks are
/// clamped to it rather than failing to record.
const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// Why the audit log could not be opened, written, read or queried.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log (or its directory) could not be created or opened for appending.
    #[error("cannot open audit log {}", path.display())]
    Open {
        /// The audit log.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be serialized.
    #[error("cannot encode an audit record")]
    Encode {
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be written.
    #[error("cannot write to audit log {}", path.display())]
    Write {
        /// The audit log.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log could not be read.
    #[error("cannot read audit log {}", path.display())]
    Read {
        /// The audit log.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A complete line of the log is not an audit record.
    #[error("{}:{line}: not an audit record", path.display())]
    Corrupt {
        /// The audit log.
        path: PathBuf,
        /// The line, counting from 1.
        line: u64,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A `since` that looks like a timestamp but is not a valid one.
    #[error(
        "invalid time `{text}`: expected an RFC 3339 UTC time like 2025-01-31T12:00:00Z \
         or a duration like 90s, 1h or 2days"
    )]
    SinceTime {
        /// What was given.
        text: String,
        /// Why it does not parse.
        #[source]
        source: humantime::TimestampError,
    },
    /// A `since` that is neither a duration nor a timestamp.
    #[error(
        "invalid time `{text}`: expected a duration like 90s, 1h or 2days \
         or an RFC 3339 UTC time like 2025-01-31T12:00:00Z"
    )]
    SinceDuration {
        /// What was given.
        text: String,
        /// Why it does not parse as a duration.
        #[source]
        source: humantime::DurationError,
    },
    /// A `since` duration reaching back before the clock can represent.
    #[error("`{text}` ago is before the earliest time this system can represent")]
    SinceTooFar {
        /// What was given.
        text: String,
    },
}

impl AuditError {
    /// Whether this is a failed read of a log that does not exist (yet), i.e. nothing has been
    /// audited there rather than something being wrong.
    pub fn is_missing_log(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// One change to the firewall. Serialized as one JSON line, fields in this order.
// Unknown fields are accepted on read (no `deny_unknown_fields`) so that an older `apifw audit`
// can still read a log that a newer daemon has added fields to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, as RFC 3339 UTC with milliseconds, for humans and log tools.
    pub time: String,
    /// When, as milliseconds since the Unix epoch, for filtering; the same instant as `time`.
    pub unix_ms: u64,
    /// Who: `uid N` for a CLI caller (from the socket's peer credentials), `daemon` for its own
    /// decisions (auto-bans, expiries), `signal` for a SIGHUP reload, `startup`.
    pub actor: String,
    /// What kind of change: `block.add`, `block.del`, `allow.add`, `ban.add`, `ban.del`,
    /// `ban.auto`, `ban.expire`, `block.expire`, `import`, `reload`, `reload.failed`, `start`…
    pub action: String,
    /// What was changed: prefixes, TTL, comment, counts, file, error text…
    pub object: serde_json::Value,
}

impl AuditRecord {
    /// A record of a change made now.
    pub fn now(
        actor: impl Into<String>,
        action: impl Into<String>,
        object: serde_json::Value,
    ) -> Self {
        Self::at(SystemTime::now(), actor, action, object)
    }

    /// A record of a change made at `time`, truncated to the millisecond (and clamped to
    /// 1970..=9999, the range RFC 3339 timestamps can express).
    pub fn at(
        time: SystemTime,
        actor: impl Into<String>,
        action: impl Into<String>,
        object: serde_json::Value,
    ) -> Self {
        let unix_ms = unix_ms(time).min(MAX_UNIX_MS);
        // Format the truncated instant, not `time`, so that both fields name the same instant
        // whatever rounding the formatter would do.
        let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
        Self {
            time: humantime::format_rfc3339_millis(time).to_string(),
            unix_ms,
            actor: actor.into(),
            action: action.into(),
            object,
        }
    }
}

/// Milliseconds since the Unix epoch; 0 for earlier times (a clock that wrong has bigger
/// problems than the audit log's order).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// An audit log opened for appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens the log at `path` for appending, creating it (mode 0600) and its missing parent
    /// directories (mode 0700): it names who changed the firewall and may quote their input.
    ///
    /// If the file ends in a line torn by a crash, that line is terminated so that the next
    /// record starts on a line of its own instead of being glued to, and lost with, the debris.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;

        let len = file.metadata().map_err(io)?.len();
        if let Some(last) = len.checked_sub(1) {
            let mut byte = [0];
            file.read_exact_at(&mut byte, last).map_err(io)?;
            if byte != *b"\n" {
                tracing::warn!(
                    path = %path.display(),
                    "audit log ends in a partial record (torn by a crash?); terminating it"
                );
                (&file).write_all(b"\n").map_err(io)?;
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line.
    pub fn append(&mut self, record: &AuditRecord) -> Result<(), AuditError> {
        // serde_json escapes newlines inside strings, so the encoding is exactly one line.
        let mut line =
            serde_json::to_vec(record).map_err(|source| AuditError::Encode { source })?;
        line.push(b'\n');
        let io = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        // One write_all of the whole line: with O_APPEND the kernel moves to the end and writes
        // under the inode lock in one step, so concurrent appenders (daemon and CLI, or two
        // handles in one process) never interleave partial lines. (write_all only loops after a
        // short write, which a regular file gives only when the disk is full.)
        self.file.write_all(&line).map_err(io)?;
        // A File has no userspace buffer: flush is a no-op kept so that the record is handed to
        // the kernel even if the file type ever changes. No sync_data: once write(2) returns the
        // record survives any crash of this process, and only a power loss or kernel panic could
        // lose the last few seconds of records. An fsync per record would cost milliseconds on
        // every change — including every auto-ban during an attack, when the daemon has better
        // things to wait for.
        self.file.flush().map_err(io)
    }
}

/// Reads the records of the log at `path`, in file order, skipping those older than `since`.
///
/// Blank lines are skipped. A final line without its newline is a write torn by a crash: it is
/// kept if it parses and otherwise ignored. Any other line that is not a record is an error
/// naming the file and line.
pub fn read(path: &Path, since: Option<SystemTime>) -> Result<Vec<AuditRecord>, AuditError> {
    let io = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let since_ms = since.map_or(0, unix_ms);
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        // Bytes, not a String: a torn multi-byte character must not make the whole file
        // unreadable, only its (last) line.
        if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        number += 1;
        // read_until stops at a newline or at the end of the file: no newline means last line.
        let torn = buf.last() != Some(&b'\n');
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<AuditRecord>(line) {
            Ok(record) if record.unix_ms >= since_ms => records.push(record),
            Ok(_) => {}
            Err(_) if torn => {}
            Err(source) => {
                return Err(AuditError::Corrupt {
                    path: path.to_owned(),
                    line: number,
                    source,
                });
            }
        }
    }
    Ok(records)
}

/// Parses a `since`: a duration (`90s`, `1h`, `2days`: that long before `now`) or an RFC 3339
/// UTC time (`2025-01-31T12:00:00Z`; fractional seconds, a space for the `T` and no `Z` are
/// accepted too).
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, AuditError> {
    let text = text.trim();
    let not_duration = match humantime::parse_duration(text) {
        Ok(ago) => {
            return now
                .checked_sub(ago)
                .ok_or_else(|| AuditError::SinceTooFar { text: text.into() });
        }
        Err(err) => err,
    };
    humantime::parse_rfc3339_weak(text).map_err(|not_time| {
        // Report the error of the form the user most likely meant: a date starts with a year.
        if looks_like_date(text) {
            AuditError::SinceTime {
                text: text.into(),
                source: not_time,
            }
        } else {
            AuditError::SinceDuration {
                text: text.into(),
                source: not_duration,
            }
        }
    })
}

/// Whether `text` starts like a date: four digits and a dash.
fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() > 4 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "apifw-audit-{}-{name}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn at_ms(ms: u64, action: &str) -> AuditRecord {
        AuditRecord::at(
            UNIX_EPOCH + Duration::from_millis(ms),
            "uid 0",
            action,
            json!({ "cidrs": ["192.0.2.0/24"] }),
        )
    }

    #[test]
    fn record_fields() {
        let record = AuditRecord::at(
            UNIX_EPOCH + Duration::from_micros(1_738_324_800_123_456),
            "daemon",
            "ban.auto",
            json!({ "prefix": "198.51.100.7/32", "ttl_secs": 600 }),
        );
        assert_eq!(record.time, "2025-01-31T12:00:00.123Z");
        assert_eq!(record.unix_ms, 1_738_324_800_123);
        let line = serde_json::to_string(&record).expect("encode");
        assert!(
            line.starts_with(r#"{"time":"2025-01-31T12:00:00.123Z","unix_ms":1738324800123,"#),
            "{line}"
        );
        let now = AuditRecord::now("startup", "start", json!(null));
        assert!(now.unix_ms > 1_700_000_000_000);
        assert_eq!(now.time.len(), "2025-01-31T12:00:00.123Z".len());
    }

    #[test]
    fn append_read_round_trip() {
        let dir = TempDir::new("round-trip");
        // Missing parents are created.
        let path = dir.join("nested/deeper/audit.log");
        let records = vec![
            at_ms(1_000, "block.add"),
            AuditRecord::at(
                UNIX_EPOCH + Duration::from_millis(2_000),
                "signal",
                "reload.failed",
                json!({ "file": "/etc/apifw.toml", "error": "line 3:\nbad\u{1b}[31m \"quote\"" }),
            ),
            at_ms(3_000, "ban.del"),
        ];
        let mut log = AuditLog::open(&path).expect("open");
        assert_eq!(log.path(), path);
        for record in &records {
            log.append(record).expect("append");
        }
        drop(log);
        // Reopening appends rather than truncating.
        let mut log = AuditLog::open(&path).expect("reopen");
        log.append(&at_ms(4_000, "import")).expect("append");

        let read_back = read(&path, None).expect("read");
        assert_eq!(read_back.len(), 4);
        assert_eq!(read_back[..3], records[..]);
        assert_eq!(read_back[3].action, "import");

        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(text.lines().count(), 4, "one record per line: {text}");

        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn since_filters_older_records() {
        let dir = TempDir::new("since");
        let path = dir.join("audit.log");
        let mut log = AuditLog::open(&path).expect("open");
        // Out of order on purpose: a clock step back must not hide later lines.
        for ms in [1_000, 5_000, 2_000, 9_000] {
            log.append(&at_ms(ms, "block.add")).expect("append");
        }
        let since = |ms| Some(UNIX_EPOCH + Duration::from_millis(ms));
        let kept = |ms| {
            read(&path, since(ms))
                .expect("read")
                .iter()
                .map(|record| record.unix_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(0), [1_000, 5_000, 2_000, 9_000]);
        assert_eq!(kept(2_000), [5_000, 2_000, 9_000], "`since` itself is kept");
        assert_eq!(kept(2_001), [5_000, 9_000]);
        assert_eq!(kept(10_000), [0_u64; 0]);
    }

    #[test]
    fn parse_since_durations_and_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_738_324_800);
        let ago = |secs| now - Duration::from_secs(secs);
        assert_eq!(parse_since("90s", now).expect("90s"), ago(90));
        assert_eq!(parse_since("1h", now).expect("1h"), ago(3_600));
        assert_eq!(parse_since(" 30m ", now).expect("30m"), ago(1_800));
        assert_eq!(parse_since("2days", now).expect("2days"), ago(172_800));
        assert_eq!(parse_since("1h 30m", now).expect("1h 30m"), ago(5_400));

        let time = UNIX_EPOCH + Duration::from_secs(1_738_000_000);
        assert_eq!(
            parse_since("2025-01-27T17:46:40Z", now).expect("rfc3339"),
            time
        );
        assert_eq!(
            parse_since("2025-01-27T17:46:40.250Z", now).expect("rfc3339 millis"),
            time + Duration::from_millis(250)
        );
        assert_eq!(parse_since("2025-01-27 17:46:40", now).expect("weak"), time);
    }

    #[test]
    fn parse_since_rejects_garbage_clearly() {
        let now = SystemTime::now();
        for text in ["yesterday", "", "1 fortnight", "-5m"] {
            let err = parse_since(text, now).expect_err(text);
            assert!(matches!(err, AuditError::SinceDuration { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("`{}`", text.trim())), "{message}");
            assert!(message.contains("duration like 90s"), "{message}");
            assert!(message.contains("RFC 3339"), "{message}");
        }
        for text in ["2025-13-01T00:00:00Z", "2025-01-31T25:00Z", "2025-01-31"] {
            let err = parse_since(text, now).expect_err(text);
            assert!(matches!(err, AuditError::SinceTime { .. }), "{err:?}");
            assert!(err.to_string().starts_with("invalid time `2025-"), "{err}");
        }
        // SystemTime reaches back far beyond the epoch, but not 500 billion years.
        let err = parse_since("500000000000years", now).expect_err("too far back");
        assert!(matches!(err, AuditError::SinceTooFar { .. }), "{err:?}");
    }

    #[test]
    fn torn_last_line_is_ignored_and_terminated_on_open() {
        let dir = TempDir::new("torn");
        let path = dir.join("audit.log");
        let mut log = AuditLog::open(&path).expect("open");
        log.append(&at_ms(1_000, "block.add")).expect("append");
        log.append(&at_ms(2_000, "block.del")).expect("append");
        drop(log);
        // Simulate a crash halfway through a third write.
        let full = serde_json::to_string(&at_ms(3_000, "ban.add")).expect("encode");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open raw");
        file.write_all(&full.as_bytes()[..full.len() / 2])
            .expect("write torn");
        drop(file);

        let records = read(&path, None).expect("torn tail is not an error");
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].action, "block.del");

        // A complete record that only lost its newline is kept.
        let whole = dir.join("whole.log");
        std::fs::write(&whole, &full).expect("write");
        assert_eq!(read(&whole, None).expect("read").len(), 1);

        // Reopening terminates the debris: the next record gets a line of its own, and the
        // debris becomes a corrupt line that is reported rather than silently eating it.
        let mut log = AuditLog::open(&path).expect("reopen");
        log.append(&at_ms(4_000, "ban.del")).expect("append");
        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(text.lines().count(), 4);
        assert!(text.lines().nth(3).expect("line 4").contains("ban.del"));
        let err = read(&path, None).expect_err("debris is now a middle line");
        assert!(
            matches!(err, AuditError::Corrupt { line: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn corrupt_middle_line_names_file_and_line() {
        let dir = TempDir::new("corrupt");
        let path = dir.join("audit.log");
        let good = serde_json::to_string(&at_ms(1_000, "block.add")).expect("encode");
        std::fs::write(
            &path,
            format!("{good}\n\n{good}\n{{\"time\": \"nope\"}}\n{good}\n"),
        )
        .expect("write");
        let err = read(&path, None).expect_err("corrupt");
        assert!(
            matches!(err, AuditError::Corrupt { line: 4, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert_eq!(
            message,
            format!("{}:4: not an audit record", path.display())
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn missing_log_is_recognisable() {
        let dir = TempDir::new("missing");
        let err = read(&dir.join("nope.log"), None).expect_err("missing");
        assert!(err.is_missing_log(), "{err:?}");
        let err = read(&dir.0, None).expect_err("a directory");
        assert!(!err.is_missing_log(), "{err:?}");
    }

    #[test]
    fn concurrent_appenders_never_interleave() {
        const PER_THREAD: u64 = 1_000;
        let dir = TempDir::new("concurrent");
        let path = dir.join("audit.log");
        let threads = ["daemon", "uid 0"].map(|actor| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut log = AuditLog::open(&path).expect("open");
                for seq in 0..PER_THREAD {
                    // Long enough that a torn or interleaved write would show.
                    let object = json!({ "seq": seq, "pad": "x".repeat(300) });
                    log.append(&AuditRecord::now(actor, "block.add", object))
                        .expect("append");
                }
            })
        });
        for thread in threads {
            thread.join().expect("thread");
        }

        let text = std::fs::read_to_string(&path).expect("read text");
        assert_eq!(text.lines().count(), 2_000);
        let records = read(&path, None).expect("every line is a record");
        assert_eq!(records.len(), 2_000);
        for actor in ["daemon", "uid 0"] {
            let seqs: Vec<u64> = records
                .iter()
                .filter(|record| record.actor == actor)
                .map(|record| record.object["seq"].as_u64().expect("seq"))
                .collect();
            assert_eq!(seqs, (0..PER_THREAD).collect::<Vec<_>>(), "{actor}");
        }
    }
}
