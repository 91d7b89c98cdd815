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

pub use crate::paths::DEFAULT_AUDIT_LOG;

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

/// How long [`ends_torn`] watches a tail without its newline before calling it torn.
const TORN_SETTLE: Duration = Duration::from_millis(20);

/// Whether the file ends in a line without its newline that nobody is still writing.
///
/// Another process (the daemon while the CLI opens, or the other way round) may be appending
/// right now, and a filesystem makes a write visible page by page: the size read here can stop
/// inside its record. Terminating that would leave a stray empty line after it. A tail torn by a
/// crash stays as it is, so the tail is believed torn only when the size has not moved for
/// [`TORN_SETTLE`] (a write in progress takes microseconds); a moving size is read again.
fn ends_torn(file: &File) -> std::io::Result<bool> {
    let mut len = file.metadata()?.len();
    for _ in 0..50 {
        let Some(last) = len.checked_sub(1) else {
            return Ok(false);
        };
        let mut byte = [0];
        file.read_exact_at(&mut byte, last)?;
        if byte == *b"\n" {
            return Ok(false);
        }
        std::thread::sleep(TORN_SETTLE);
        let now = file.metadata()?.len();
        if now == len {
            return Ok(true);
        }
        len = now;
    }
    // Written to without pause for a second: whoever writes ends its own lines.
    Ok(false)
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

        if ends_torn(&file).map_err(io)? {
            tracing::warn!(
                path = %path.display(),
                "audit log ends in a partial record (torn by a crash?); terminating it"
            );
            (&file).write_all(b"\n").map_err(io)?;
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
#[path = "audit_tests.rs"]
mod tests;
