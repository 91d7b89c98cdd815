//! Following an access log across rotation, polled once a second by the daemon's tick.
//!
//! The follower remembers which file it reads (device and inode), how far (the offset after the
//! last complete line) and a fingerprint of the file's first line, and persists that, so that a
//! restarted daemon neither re-reads nor skips lines. Each poll:
//!
//! 1. reads the open file from the offset to its end, complete lines only (a line being written
//!    is left for the next poll);
//! 2. notices **copytruncate** — the file is shorter than the offset, or its first line or the
//!    bytes before the offset are not the ones fingerprinted — and reads it again from 0. The
//!    one case it cannot see: a file truncated and refilled past the old offset, within one
//!    poll, with bytes identical to the old ones up to the offset. Lines written between the
//!    copy and the truncation are lost to every reader (that is copytruncate's own race), so
//!    rename rotation (logrotate's `create`, the default) is the one to prefer;
//! 3. notices **rename + new file** — the path names another inode — and switches to the new
//!    file from 0. The renamed file stays open and is drained on every poll until one finds
//!    nothing new, because a web server keeps writing to it until it reopens its logs.
//!
//! A log that does not exist yet is opened once it appears, from its start; a log that exists
//! when a jail starts for the first time is read from its end (its history is not evidence of
//! anything happening now).

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Most bytes one poll reads from one file, so that a huge backlog is spread over several ticks
/// instead of stalling the daemon.
pub const MAX_READ_PER_POLL: u64 = 16 << 20;

/// Bytes of a line the first-line fingerprint covers.
const HEAD_BYTES: usize = 256;

/// Where a follower is in its file; persisted in the jail state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub inode: u64,
    /// Offset after the last complete line read.
    pub offset: u64,
    /// FNV-1a of the file's first line (its first [`HEAD_BYTES`] bytes), 0 before it has one.
    pub head: u64,
    /// FNV-1a of the (up to [`HEAD_BYTES`]) bytes before `offset`, 0 at offset 0.
    #[serde(default)]
    pub tail: u64,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// Opening, stat-ing or reading failed (other than the file not existing yet).
    #[error("cannot read access log {}", path.display())]
    Read {
        /// The log.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// FNV-1a, 64 bits: stable across builds and platforms, which a persisted fingerprint needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The fingerprint of the first line of `file`, 0 while it has no complete first line.
fn head_of(file: &mut File) -> io::Result<u64> {
    let mut buf = [0u8; HEAD_BYTES];
    file.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &buf[..filled];
    Ok(match head.iter().position(|b| *b == b'\n') {
        Some(end) => fnv1a(&head[..end]),
        None if filled == HEAD_BYTES => fnv1a(head),
        None => 0,
    })
}

/// The fingerprint of the bytes before `offset` (0 at offset 0).
fn tail_of(file: &mut File, offset: u64) -> io::Result<u64> {
    if offset == 0 {
        return Ok(0);
    }
    let start = offset.saturating_sub(HEAD_BYTES as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(HEAD_BYTES);
    file.take(offset - start).read_to_end(&mut buf)?;
    Ok(fnv1a(&buf))
}

/// An open file with its position.
#[derive(Debug)]
struct Open {
    file: File,
    position: Position,
}

impl Open {
    /// Reads complete lines from the offset, at most [`MAX_READ_PER_POLL`] bytes.
    /// `path` is the log's name when this is the file it names: a truncation then looks for
    /// the copy ([`read_copy`]).
    fn drain(&mut self, path: Option<&Path>, lines: &mut Vec<String>) -> io::Result<bool> {
        let size = self.file.metadata()?.len();
        let mut restart = size < self.position.offset;
        if !restart && self.position.head != 0 {
            restart = head_of(&mut self.file)? != self.position.head;
        }
        // Truncated and refilled past the offset before this poll: the first line may repeat
        // (an attack writes near-identical lines), the line before the offset rarely does too.
        if !restart && self.position.tail != 0 {
            restart = tail_of(&mut self.file, self.position.offset)? != self.position.tail;
        }
        if restart {
            // copytruncate: the content before the offset is gone (or replaced).
            tracing::info!(
                inode = self.position.inode,
                offset = self.position.offset,
                size,
                "access log truncated: reading it from its start"
            );
            if let Some(path) = path {
                read_copy(path, &self.position, lines);
            }
            self.position.offset = 0;
            self.position.head = 0;
            self.position.tail = 0;
        }
        if self.position.head == 0 {
            self.position.head = head_of(&mut self.file)?;
        }
        if size <= self.position.offset {
            return Ok(false);
        }
        self.file.seek(SeekFrom::Start(self.position.offset))?;
        let mut buf = Vec::new();
        (&mut self.file)
            .take(MAX_READ_PER_POLL)
            .read_to_end(&mut buf)?;
        let Some(last_newline) = buf.iter().rposition(|b| *b == b'\n') else {
            return Ok(false);
        };
        let complete = &buf[..=last_newline];
        for line in complete.split(|b| *b == b'\n') {
            if !line.is_empty() {
                lines.push(
                    String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_owned(),
                );
            }
        }
        self.position.offset += complete.len() as u64;
        self.position.tail = tail_of(&mut self.file, self.position.offset)?;
        Ok(true)
    }
}

/// Follows one access log.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    current: Option<Open>,
    /// The file the path named before a rename, drained until it is quiet.
    retired: Option<Open>,
    /// Where to resume when the file is (re)opened: from a previous daemon, or none.
    resume: Option<Position>,
}

fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

impl Follower {
    /// A follower of `path`, resuming at `saved` (from the state file) when that is still the
    /// same file; without `saved`, an existing file is read from its end.
    pub fn new(path: &Path, saved: Option<Position>) -> Self {
        let mut follower = Self {
            path: path.to_owned(),
            current: None,
            retired: None,
            resume: saved,
        };
        if saved.is_none()
            && let Ok(mut file) = File::open(path)
            && let Ok(metadata) = file.metadata()
        {
            let (dev, inode) = identity(&metadata);
            let head = head_of(&mut file).unwrap_or(0);
            follower.current = Some(Open {
                file,
                position: Position {
                    dev,
                    inode,
                    offset: metadata.len(),
                    head,
                    tail: 0,
                },
            });
            // Back to the last complete line: a line being written is read whole later.
            if let Some(open) = &mut follower.current {
                open.position.offset = last_line_end(&mut open.file, metadata.len()).unwrap_or(0);
                open.position.tail = tail_of(&mut open.file, open.position.offset).unwrap_or(0);
            }
        }
        follower
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the follower is, for the state file.
    pub fn position(&self) -> Option<Position> {
        self.current
            .as_ref()
            .map(|open| open.position)
            .or(self.resume)
    }

    /// New complete lines since the last poll, oldest first.
    pub fn poll(&mut self) -> Result<Vec<String>, FollowError> {
        let failed = |source| FollowError::Read {
            path: self.path.clone(),
            source,
        };
        let mut lines = Vec::new();
        if let Some(retired) = &mut self.retired {
            // Quiet (or gone bad): the writer has moved on to the new file.
            if !retired.drain(None, &mut lines).unwrap_or(false) {
                self.retired = None;
            }
        }
        if let Some(current) = &mut self.current {
            current
                .drain(Some(&self.path), &mut lines)
                .map_err(failed)?;
        }
        let named = match std::fs::metadata(&self.path) {
            Ok(metadata) => Some(identity(&metadata)),
            // Renamed away and not re-created yet: keep reading the open file.
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(failed(err)),
        };
        let Some((dev, inode)) = named else {
            return Ok(lines);
        };
        let same = self
            .current
            .as_ref()
            .is_some_and(|open| (open.position.dev, open.position.inode) == (dev, inode));
        if same {
            return Ok(lines);
        }
        // A new file under the path (or the first open).
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(lines),
            Err(err) => return Err(failed(err)),
        };
        let metadata = file.metadata().map_err(failed)?;
        let (dev, inode) = identity(&metadata);
        let position = match self.resume.take() {
            // The file a previous daemon read: on from where it stopped (drain notices a
            // truncation meanwhile).
            Some(saved) if (saved.dev, saved.inode) == (dev, inode) => saved,
            _ => Position {
                dev,
                inode,
                offset: 0,
                head: head_of(&mut file).map_err(failed)?,
                tail: 0,
            },
        };
        if let Some(previous) = self.current.take() {
            tracing::info!(path = %self.path.display(), old_inode = previous.position.inode, inode, "access log rotated: reading the new file from its start");
            self.retired = Some(previous);
        }
        let mut open = Open { file, position };
        open.drain(Some(&self.path), &mut lines).map_err(failed)?;
        self.current = Some(open);
        Ok(lines)
    }
}

/// After a copytruncate: the lines written between the last poll and the copy are only in the
/// copy. It is the sibling named after the log (`access.log.1`, `access.log-20250101`, not
/// compressed: use `delaycompress`) whose first line and bytes before the offset are the ones
/// fingerprinted; its lines after the offset are appended to `lines`.
fn read_copy(path: &Path, position: &Position, lines: &mut Vec<String>) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let sibling = entry.file_name().to_string_lossy().into_owned();
        if sibling == name
            || !sibling.starts_with(name.as_ref())
            || [".gz", ".xz", ".bz2", ".zst"]
                .iter()
                .any(|suffix| sibling.ends_with(suffix))
        {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let mut copy = Open {
            file,
            position: Position {
                tail: 0,
                ..*position
            },
        };
        let same = copy
            .file
            .metadata()
            .is_ok_and(|m| m.len() >= position.offset)
            && head_of(&mut copy.file).is_ok_and(|head| head == position.head)
            && tail_of(&mut copy.file, position.offset).is_ok_and(|tail| tail == position.tail);
        if same {
            // Fingerprints already checked: read on from the offset.
            copy.position.head = position.head;
            copy.position.tail = 0;
            let _ = copy.drain(None, lines);
            tracing::info!(copy = %entry.path().display(), "read the end of the truncated log from its copy");
            return;
        }
    }
}

/// The offset after the last newline at or before `size`.
fn last_line_end(file: &mut File, size: u64) -> io::Result<u64> {
    let window = size.min(64 << 10);
    file.seek(SeekFrom::Start(size - window))?;
    let mut buf = Vec::new();
    file.take(window).read_to_end(&mut buf)?;
    Ok(match buf.iter().rposition(|b| *b == b'\n') {
        Some(at) => size - window + at as u64 + 1,
        None if window < size => size,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("apifw-logfile-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open for append");
        file.write_all(text.as_bytes()).expect("append");
    }

    #[test]
    fn an_existing_log_is_read_from_its_end_and_partial_lines_wait() {
        let dir = TempDir::new("end");
        let log = dir.0.join("access.log");
        append(&log, "old 1\nold 2\nhalf");
        let mut follower = Follower::new(&log, None);
        assert!(follower.poll().expect("poll").is_empty());
        append(&log, " line\nnew\n");
        assert_eq!(follower.poll().expect("poll"), ["half line", "new"]);
        append(&log, "pending");
        assert!(follower.poll().expect("poll").is_empty());
        append(&log, "\n");
        assert_eq!(follower.poll().expect("poll"), ["pending"]);
    }

    #[test]
    fn a_missing_log_is_read_from_its_start_once_it_appears() {
        let dir = TempDir::new("late");
        let log = dir.0.join("access.log");
        let mut follower = Follower::new(&log, None);
        assert!(follower.poll().expect("poll").is_empty());
        append(&log, "a\nb\n");
        assert_eq!(follower.poll().expect("poll"), ["a", "b"]);
    }

    #[test]
    fn rename_rotation_loses_and_repeats_nothing() {
        let dir = TempDir::new("rename");
        let log = dir.0.join("access.log");
        let rotated = dir.0.join("access.log.1");
        let mut follower = Follower::new(&log, None);
        append(&log, "1\n2\n");
        assert_eq!(follower.poll().expect("poll"), ["1", "2"]);
        // The server writes on into the renamed file until it reopens its log…
        append(&log, "3\n");
        std::fs::rename(&log, &rotated).expect("rename");
        append(&rotated, "4\n");
        assert_eq!(follower.poll().expect("poll"), ["3", "4"]);
        // … and even a little after the new file appeared.
        append(&log, "6\n");
        append(&rotated, "5\n");
        assert_eq!(follower.poll().expect("poll"), ["5", "6"]);
        append(&rotated, "7\n");
        append(&log, "8\n");
        assert_eq!(follower.poll().expect("poll"), ["7", "8"]);
        assert_eq!(follower.poll().expect("poll"), Vec::<String>::new());
        append(&log, "9\n");
        assert_eq!(follower.poll().expect("poll"), ["9"]);
    }

    /// Truncates `path` in place, as `logrotate`'s copytruncate does.
    fn truncate(path: &Path) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
    }

    #[test]
    fn copytruncate_is_noticed_even_when_the_file_regrew() {
        let dir = TempDir::new("trunc");
        let log = dir.0.join("access.log");
        let mut follower = Follower::new(&log, None);
        append(&log, "first line\nsecond\n");
        assert_eq!(follower.poll().expect("poll"), ["first line", "second"]);
        // Truncated, then written past the old offset before the next poll.
        truncate(&log);
        append(&log, "after truncation, a longer line\n");
        assert_eq!(
            follower.poll().expect("poll"),
            ["after truncation, a longer line"]
        );
        // Truncated and refilled with the same first line but different later lines.
        truncate(&log);
        append(&log, "same first\nold second\n");
        assert_eq!(follower.poll().expect("poll"), ["same first", "old second"]);
        truncate(&log);
        append(&log, "same first\nnew second\nnew third\n");
        assert_eq!(
            follower.poll().expect("poll"),
            ["same first", "new second", "new third"]
        );
        // copytruncate with lines written after the last poll: they are read from the copy.
        append(&log, "unread 1\nunread 2\n");
        std::fs::copy(&log, dir.0.join("access.log.1")).expect("copy");
        truncate(&log);
        append(&log, "fresh\n");
        assert_eq!(
            follower.poll().expect("poll"),
            ["unread 1", "unread 2", "fresh"]
        );
        // Truncated and smaller.
        truncate(&log);
        append(&log, "x\n");
        assert_eq!(follower.poll().expect("poll"), ["x"]);
    }

    #[test]
    fn a_saved_position_resumes_exactly_and_a_new_file_is_read_whole() {
        let dir = TempDir::new("resume");
        let log = dir.0.join("access.log");
        let mut follower = Follower::new(&log, None);
        append(&log, "a\nb\n");
        assert_eq!(follower.poll().expect("poll"), ["a", "b"]);
        let saved = follower.position().expect("position");
        drop(follower);
        // Written while no daemon ran.
        append(&log, "c\n");
        let mut follower = Follower::new(&log, Some(saved));
        assert_eq!(follower.poll().expect("poll"), ["c"]);
        let saved = follower.position().expect("position");
        drop(follower);
        // Rotated while no daemon ran: the new file is read from its start.
        std::fs::rename(&log, dir.0.join("access.log.1")).expect("rename");
        append(&log, "d\n");
        let mut follower = Follower::new(&log, Some(saved));
        assert_eq!(follower.poll().expect("poll"), ["d"]);
    }
}
