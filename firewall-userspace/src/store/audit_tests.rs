//! Unit tests of the parent module, in a file of their own to keep the module readable.

use serde_json::json;

use super::*;

use crate::test_dir::TempDir;

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
    let err = read(dir.path(), None).expect_err("a directory");
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

/// Opening the log while another handle appends must not take the record being written for a
/// line torn by a crash: a filesystem shows a write page by page, and terminating such a "tail"
/// left a stray empty line (seen as a flaky line count above).
#[test]
fn opening_during_an_append_adds_no_line() {
    let dir = TempDir::new("open-during-append");
    let path = dir.join("audit.log");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut log = AuditLog::open(&path).expect("open");
            let mut written = 0u64;
            // Records of several pages, so that each write crosses page boundaries.
            while !done.load(std::sync::atomic::Ordering::Relaxed) || written < 200 {
                let object = json!({ "seq": written, "pad": "x".repeat(9_000) });
                log.append(&AuditRecord::now("daemon", "block.add", object))
                    .expect("append");
                written += 1;
            }
            written
        })
    };
    for _ in 0..300 {
        AuditLog::open(&path).expect("open beside the writer");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().filter(|line| line.is_empty()).count(), 0);
    assert_eq!(text.lines().count() as u64, written);
}
