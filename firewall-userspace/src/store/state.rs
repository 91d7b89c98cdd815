//! The daemon's runtime state: the block and allow entries and the manual bans made through the
//! CLI while the daemon runs. They are kept in a state file next to the policy (`apifw.toml` →
//! `apifw.state.json`, see [`state_path`]) so that they survive a daemon restart and a reboot;
//! the policy file itself is never rewritten.
//!
//! The file is pretty-printed JSON with every list sorted by CIDR, so that operators can read it
//! and its diffs stay small. It is replaced atomically ([`RuntimeState::save`]): a crash, a full
//! disk or a power cut leaves either the previous version or the new one, never a torn file.
//!
//! In memory each list is a map keyed by CIDR, so that adding, replacing and removing one of
//! 100k entries costs a tree lookup rather than a scan or a shift of the whole list.
//!
//! This file is over 600 lines (its tests are in `state_tests.rs`): the state file's format, its
//! versioned migration and the atomic write are one unit that must change together.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    fs::{File, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Version of the state file format. Bump it whenever a change would make an older apifw
/// misread a newer file.
pub const STATE_VERSION: u32 = 1;

/// Mode of the state file: it tells who is blocked and allowed, which is nobody else's business.
const FILE_MODE: u32 = 0o600;

/// Why the state file could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("cannot read state file {}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON, or not a state of this format.
    #[error(
        "state file {} is corrupt at line {line}, column {column}: {}; the daemon keeps its last \
         good state; fix or remove the file",
        path.display(),
        detail(.source)
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1 (0 for an empty file).
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written in a format version this apifw does not read.
    #[error(
        "state file {} has format version {found}, but this apifw reads only version \
         {supported}; the daemon keeps its last good state; upgrade apifw or remove the file",
        path.display()
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this apifw reads ([`STATE_VERSION`]).
        supported: u32,
    },
    /// The new state could not be saved. Up to and including `rename`, the previous file is
    /// left as it was and the temporary file is removed; a failed `fsync directory` comes after
    /// the new file took the previous one's place, and only means the rename may not survive a
    /// power cut.
    #[error("cannot save state file {} ({step} failed)", path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// What failed: `encode`, `create`, `write`, `fsync`, `rename` or `fsync directory`.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The parser's message without its trailing " at line L column C", which the
/// [`StateError::Corrupt`] message already gives in its own words.
fn detail(err: &serde_json::Error) -> String {
    let mut text = err.to_string();
    let location = format!(" at line {} column {}", err.line(), err.column());
    if let Some(len) = text.strip_suffix(&location).map(str::len) {
        text.truncate(len);
    }
    text
}

/// Which runtime list an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Sources whose packets are dropped.
    Block,
    /// Sources exempt from blocking, rate limits and bans.
    Allow,
}

impl ListKind {
    /// The list's name as the CLI and the state file spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One runtime block or allow entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    /// The prefix. [`RuntimeState`] clears its host bits when the entry is added or loaded.
    #[serde(deserialize_with = "deserialize_cidr")]
    pub cidr: IpNet,
    /// When the entry lapses, in unix seconds; `None` keeps it until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Why it was added, as the operator put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was added (or last replaced), in unix seconds.
    pub added_at: u64,
    /// Who added it, e.g. `uid 0`.
    pub added_by: String,
}

/// One manual ban: like a block entry, but always temporary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRecord {
    /// The banned host or subnet. [`RuntimeState`] clears its host bits when the ban is added
    /// or loaded.
    #[serde(deserialize_with = "deserialize_cidr")]
    pub cidr: IpNet,
    /// When the ban lapses, in unix seconds.
    pub expires_at: u64,
    /// Why it was made, as the operator put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was made (or last replaced), in unix seconds.
    pub added_at: u64,
    /// Who made it, e.g. `uid 0`.
    pub added_by: String,
}

/// A list file imported at run time (`apifw block import`): its entries share one origin,
/// expiry, comment and author, so a million of them cost a million CIDRs, not a million records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// Number of the import, unique within the state.
    pub id: u64,
    /// The list the entries belong to.
    pub list: ListKind,
    /// The file it came from.
    pub origin: String,
    /// The CIDRs, host bits cleared, sorted, without duplicates.
    #[serde(serialize_with = "serialize_cidrs")]
    pub cidrs: Vec<IpNet>,
    /// When the import lapses, in unix seconds; `None` keeps it until it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Why it was imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When it was imported, in unix seconds.
    pub added_at: u64,
    /// Who imported it.
    pub added_by: String,
}

impl ImportRecord {
    fn expired(&self, now_unix: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_unix)
    }

    /// Clears host bits, sorts and removes duplicates.
    fn normalize(&mut self) {
        for cidr in &mut self.cidrs {
            *cidr = cidr.trunc();
        }
        self.cidrs.sort_unstable();
        self.cidrs.dedup();
    }
}

/// Writes imported CIDRs as `IpNet`'s own serialisation does (`"ADDR/LEN"` strings), IPv4 ones
/// without the formatting machinery: a million-entry import's state file is written while the
/// kernel maps are, on the same CPUs, and `Display` of each address was most of its cost.
fn serialize_cidrs<S: Serializer>(cidrs: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(cidrs.iter().map(FastCidr))
}

/// One CIDR of [`serialize_cidrs`].
struct FastCidr<'a>(&'a IpNet);

impl Serialize for FastCidr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            IpNet::V4(net) => {
                let mut text = [0u8; 18];
                let len = format_v4_cidr(net.network().octets(), net.prefix_len(), &mut text);
                let text = std::str::from_utf8(&text[..len]).map_err(serde::ser::Error::custom)?;
                serializer.serialize_str(text)
            }
            IpNet::V6(_) => self.0.serialize(serializer),
        }
    }
}

/// Writes `a.b.c.d/len` into `out` (18 bytes hold the longest) and returns its length.
fn format_v4_cidr(octets: [u8; 4], len: u8, out: &mut [u8; 18]) -> usize {
    /// Writes `number` in decimal at `out[at..]`; returns the index after it.
    fn decimal(number: u8, out: &mut [u8; 18], mut at: usize) -> usize {
        if number >= 100 {
            out[at] = b'0' + number / 100;
            at += 1;
        }
        if number >= 10 {
            out[at] = b'0' + number / 10 % 10;
            at += 1;
        }
        out[at] = b'0' + number % 10;
        at + 1
    }
    let mut at = 0;
    for (index, octet) in octets.into_iter().enumerate() {
        at = decimal(octet, out, at);
        out[at] = if index < 3 { b'.' } else { b'/' };
        at += 1;
    }
    decimal(len, out, at)
}

/// A CIDR as the policy takes it: `ADDR/LEN`, or a bare address for its host prefix, which an
/// operator editing the file by hand may well write.
fn deserialize_cidr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::policy::parse_cidr(&text).map_err(serde::de::Error::custom)
}

/// What the lists and the ban list have in common, so that one set of map helpers serves both.
trait Record {
    fn cidr_mut(&mut self) -> &mut IpNet;
    fn expired(&self, now_unix: u64) -> bool;
}

impl Record for ListEntry {
    fn cidr_mut(&mut self) -> &mut IpNet {
        &mut self.cidr
    }

    fn expired(&self, now_unix: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now_unix)
    }
}

impl Record for BanRecord {
    fn cidr_mut(&mut self) -> &mut IpNet {
        &mut self.cidr
    }

    fn expired(&self, now_unix: u64) -> bool {
        self.expires_at <= now_unix
    }
}

/// Records by their (host-bits-cleared) CIDR; the key always equals the record's own `cidr`.
type Records<R> = BTreeMap<IpNet, R>;

/// Inserts `record` under its normalized CIDR; true if no record had that CIDR.
fn upsert_record<R: Record>(records: &mut Records<R>, mut record: R) -> bool {
    // 10.1.2.3/24 and 10.1.2.0/24 match the same packets, so they must be one entry.
    let cidr = record.cidr_mut().trunc();
    *record.cidr_mut() = cidr;
    records.insert(cidr, record).is_none()
}

fn expire_records<R: Record>(records: &mut Records<R>, now_unix: u64) -> Vec<R> {
    records
        .extract_if(.., |_, record| record.expired(now_unix))
        .map(|(_, record)| record)
        .collect()
}

fn serialize_values<S: Serializer, R: Serialize>(
    records: &Records<R>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // A list of objects rather than a map keyed by CIDR: the CIDR stays inside its entry, and
    // the map's order makes the list sorted.
    serializer.collect_seq(records.values())
}

/// The state file as written; [`RuntimeState`] is built from it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    version: u32,
    // Optional so that a hand-written file may leave out the lists it does not use.
    #[serde(default)]
    block: Vec<ListEntry>,
    #[serde(default)]
    allow: Vec<ListEntry>,
    #[serde(default)]
    bans: Vec<BanRecord>,
    #[serde(default)]
    imports: Vec<ImportRecord>,
}

/// Only the version, read first: a newer format may differ in every other field, and its
/// operator should hear "unsupported version", not "unknown field".
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

/// The runtime changes: block and allow entries and manual bans, each list kept sorted by CIDR
/// with host bits cleared and at most one entry per CIDR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawState")]
pub struct RuntimeState {
    version: u32,
    #[serde(serialize_with = "serialize_values")]
    block: Records<ListEntry>,
    #[serde(serialize_with = "serialize_values")]
    allow: Records<ListEntry>,
    #[serde(serialize_with = "serialize_values")]
    bans: Records<BanRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    imports: Vec<ImportRecord>,
}

impl Default for RuntimeState {
    fn default() -> Self {
        // Not derived: a derived default would say version 0, which no apifw could load back.
        Self {
            version: STATE_VERSION,
            block: Records::new(),
            allow: Records::new(),
            bans: Records::new(),
            imports: Vec::new(),
        }
    }
}

impl TryFrom<RawState> for RuntimeState {
    type Error = String;

    fn try_from(raw: RawState) -> Result<Self, Self::Error> {
        if raw.version != STATE_VERSION {
            return Err(format!(
                "unsupported state version {}, expected {STATE_VERSION}",
                raw.version
            ));
        }
        // A hand-edited file may be unsorted, have host bits set or name a CIDR twice; the
        // later entry wins, as if the entries had been added in file order.
        let mut state = Self::default();
        for entry in raw.block {
            upsert_record(&mut state.block, entry);
        }
        for entry in raw.allow {
            upsert_record(&mut state.allow, entry);
        }
        for ban in raw.bans {
            upsert_record(&mut state.bans, ban);
        }
        for mut import in raw.imports {
            import.normalize();
            state.imports.push(import);
        }
        Ok(state)
    }
}

/// What [`RuntimeState::expire`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Lapsed block entries, sorted by CIDR.
    pub block: Vec<ListEntry>,
    /// Lapsed allow entries, sorted by CIDR.
    pub allow: Vec<ListEntry>,
    /// Lapsed bans, sorted by CIDR.
    pub bans: Vec<BanRecord>,
    /// Lapsed imports.
    pub imports: Vec<ImportRecord>,
}

impl Expired {
    /// Whether nothing lapsed.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
            && self.allow.is_empty()
            && self.bans.is_empty()
            && self.imports.is_empty()
    }

    /// The lapsed entries of one list.
    pub fn list(&self, kind: ListKind) -> &[ListEntry] {
        match kind {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        }
    }
}

impl RuntimeState {
    /// Reads the state file at `path`. A missing file is an empty state: the daemon has not
    /// saved one yet.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::from_slice(path, &bytes)
    }

    /// Parses the contents of a state file; `path` is only used in errors.
    fn from_slice(path: &Path, bytes: &[u8]) -> Result<Self, StateError> {
        let corrupt = |source: serde_json::Error| StateError::Corrupt {
            path: path.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        };
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
        if probe.version != STATE_VERSION {
            return Err(StateError::Version {
                path: path.to_owned(),
                found: probe.version,
                supported: STATE_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }

    /// Writes the state to `path` atomically, with mode 0600: it goes to a temporary file in
    /// the same directory, which is flushed to disk and renamed over `path`, and then the
    /// directory is flushed so that the rename itself survives a power cut. On an error before
    /// the rename, the temporary file is removed and `path` is left as it was.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        save_json(path, self)
    }

    /// The entries of one list, sorted by CIDR.
    pub fn list(&self, kind: ListKind) -> impl ExactSizeIterator<Item = &ListEntry> + '_ {
        self.records(kind).values()
    }

    /// The entry of a list for `cidr` (host bits ignored).
    pub fn get(&self, kind: ListKind, cidr: &IpNet) -> Option<&ListEntry> {
        self.records(kind).get(&cidr.trunc())
    }

    /// Adds `entry` to a list, clearing the host bits of its CIDR. Returns true if the CIDR was
    /// new, false if the entry replaced one with the same CIDR (refreshing its expiry, comment,
    /// `added_at` and `added_by`).
    pub fn upsert(&mut self, kind: ListKind, entry: ListEntry) -> bool {
        upsert_record(self.records_mut(kind), entry)
    }

    /// Removes the entry for `cidr` (host bits ignored) from a list, returning it.
    pub fn remove(&mut self, kind: ListKind, cidr: &IpNet) -> Option<ListEntry> {
        self.records_mut(kind).remove(&cidr.trunc())
    }

    /// Removes `cidr` (host bits ignored) from every import of a list; returns how many imports
    /// held it. An import left empty is dropped.
    pub fn remove_imported(&mut self, kind: ListKind, cidr: &IpNet) -> usize {
        let cidr = cidr.trunc();
        let mut removed = 0;
        for import in self.imports.iter_mut().filter(|import| import.list == kind) {
            if let Ok(at) = import.cidrs.binary_search(&cidr) {
                import.cidrs.remove(at);
                removed += 1;
            }
        }
        self.imports.retain(|import| !import.cidrs.is_empty());
        removed
    }

    /// Adds an import (its CIDRs are normalized); returns its id.
    pub fn add_import(&mut self, mut import: ImportRecord) -> u64 {
        import.normalize();
        import.id = self.imports.iter().map(|i| i.id + 1).max().unwrap_or(1);
        let id = import.id;
        self.imports.push(import);
        id
    }

    /// The imports, oldest first.
    pub fn imports(&self) -> &[ImportRecord] {
        &self.imports
    }

    /// The CIDRs of one list: its entries, then those of its imports (which may repeat them).
    pub fn cidrs(&self, kind: ListKind) -> impl Iterator<Item = IpNet> + '_ {
        self.records(kind).keys().copied().chain(
            self.imports
                .iter()
                .filter(move |import| import.list == kind)
                .flat_map(|import| import.cidrs.iter().copied()),
        )
    }

    /// How many CIDRs a list holds, counting imported ones (an imported CIDR also listed
    /// elsewhere counts twice).
    pub fn len(&self, kind: ListKind) -> usize {
        self.records(kind).len()
            + self
                .imports
                .iter()
                .filter(|import| import.list == kind)
                .map(|import| import.cidrs.len())
                .sum::<usize>()
    }

    /// The earliest expiry of any entry, import or ban, in unix seconds.
    pub fn next_expiry(&self) -> Option<u64> {
        self.block
            .values()
            .chain(self.allow.values())
            .filter_map(|entry| entry.expires_at)
            .chain(self.bans.values().map(|ban| ban.expires_at))
            .chain(self.imports.iter().filter_map(|import| import.expires_at))
            .min()
    }

    /// The manual bans, sorted by CIDR.
    pub fn bans(&self) -> impl ExactSizeIterator<Item = &BanRecord> + '_ {
        self.bans.values()
    }

    /// The manual ban of `cidr` (host bits ignored).
    pub fn get_ban(&self, cidr: &IpNet) -> Option<&BanRecord> {
        self.bans.get(&cidr.trunc())
    }

    /// Adds a manual ban, clearing the host bits of its CIDR. Returns true if the CIDR was new,
    /// false if the ban replaced one with the same CIDR.
    pub fn upsert_ban(&mut self, ban: BanRecord) -> bool {
        upsert_record(&mut self.bans, ban)
    }

    /// Removes the manual ban of `cidr` (host bits ignored), returning it.
    pub fn remove_ban(&mut self, cidr: &IpNet) -> Option<BanRecord> {
        self.bans.remove(&cidr.trunc())
    }

    /// Removes and returns every entry and ban whose `expires_at` is at or before `now_unix`.
    pub fn expire(&mut self, now_unix: u64) -> Expired {
        let imports = self
            .imports
            .extract_if(.., |import| import.expired(now_unix))
            .collect();
        Expired {
            block: expire_records(&mut self.block, now_unix),
            allow: expire_records(&mut self.allow, now_unix),
            bans: expire_records(&mut self.bans, now_unix),
            imports,
        }
    }

    /// Whether there are no entries, imports and bans.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
            && self.allow.is_empty()
            && self.bans.is_empty()
            && self.imports.is_empty()
    }

    fn records(&self, kind: ListKind) -> &Records<ListEntry> {
        match kind {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        }
    }

    fn records_mut(&mut self, kind: ListKind) -> &mut Records<ListEntry> {
        match kind {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }
}

/// Temporary file for replacing `path`: hidden, in the same directory (a rename only replaces
/// atomically within one filesystem), and unique per process and per save so that concurrent
/// saves never write into each other's file.
fn temp_path(path: &Path) -> PathBuf {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or("state".as_ref()));
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// The directory holding `path`.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Replaces `path` with a file whose contents `write` produces, through the temporary file
/// `temp`, atomically (see [`RuntimeState::save`]). `temp` and `write` are parameters so that
/// tests can pick the one and make the other fail.
fn replace_file(
    path: &Path,
    temp: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), StateError> {
    let failed = |step: &'static str| {
        move |source| StateError::Write {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        // A file of this name can only be left over by a crashed save of an earlier process
        // with the same pid (pids repeat across reboots), so it is ours to overwrite.
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)
        .map_err(failed("create"))?;

    let filled = file
        // `mode` only applies to a new file; a leftover one keeps its mode unless told.
        .set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(failed("create"))
        .and_then(|()| write(&mut file).map_err(failed("write")))
        .and_then(|()| file.sync_all().map_err(failed("fsync")));
    drop(file);
    let renamed = filled.and_then(|()| std::fs::rename(temp, path).map_err(failed("rename")));
    if let Err(err) = renamed {
        // The previous file is untouched; the half-made one would only litter the directory.
        // Failing to remove it changes nothing for the caller, whose error is the one above.
        let _ = std::fs::remove_file(temp);
        return Err(err);
    }

    File::open(parent_dir(path))
        .and_then(|dir| dir.sync_all())
        .map_err(failed("fsync directory"))
}

/// Writes `value` as pretty JSON to `path` atomically, mode 0600 (see [`RuntimeState::save`]):
/// the state file and the jails' state beside it.
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|err| StateError::Write {
        path: path.to_owned(),
        step: "encode",
        source: io::Error::other(err),
    })?;
    text.push(b'\n');
    replace_file(path, &temp_path(path), |file| file.write_all(&text))
}

/// Where the state of the daemon run with `policy` lives: the policy's directory, the policy
/// file's stem and `.state.json` (`/etc/apifw/apifw.toml` → `/etc/apifw/apifw.state.json`).
pub fn state_path(policy: &Path) -> PathBuf {
    let mut name = policy
        .file_stem()
        .map_or_else(|| OsString::from("apifw"), ToOwned::to_owned);
    name.push(".state.json");
    match policy.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    // A clock before 1970 is broken; reading it as 1970 merely keeps every expiry in the future
    // until it is fixed.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
