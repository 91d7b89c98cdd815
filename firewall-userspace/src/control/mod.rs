//! The control API: HTTP/1.1 over the daemon's Unix socket with JSON bodies, under a versioned
//! path prefix. The protocol is documented in `docs/CONTROL-API.md`; this module holds the
//! message types (shared by the daemon and the CLI) and the CLI's client.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{dataplane::bans::BanRow, policy::feeds::FeedFormat};

/// Path prefix of this version of the API.
pub const API_PREFIX: &str = "/v1";

/// The control socket in `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("apifw.sock")
}

/// `POST /v1/lists/{block,allow}/add`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListAdd {
    /// Addresses or CIDRs.
    pub cidrs: Vec<String>,
    /// Remove the entries again after this many seconds (none: until deleted).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Free text kept with the entries.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/lists/{block,allow}/del` and `POST /v1/bans/del`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Addresses or CIDRs.
    pub cidrs: Vec<String>,
}

/// `POST /v1/lists/block/import`: a list file's content, added as runtime block entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// Where the content came from (for messages and the audit log).
    pub origin: String,
    /// Its format.
    pub format: FeedFormat,
    /// The file's text.
    pub content: String,
    /// Skip bad lines instead of refusing the import.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// TTL of the imported entries.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Comment kept with the entries.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/bans/add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanAdd {
    /// Addresses or CIDRs.
    pub cidrs: Vec<String>,
    /// Ban duration.
    pub ttl_secs: u64,
    /// Free text kept with the bans.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `POST /v1/reports`: a local service reports abuse by a source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The offending client's address (not a CIDR).
    pub source: String,
    /// What it did, in words (logged).
    pub reason: String,
    /// How many jail matches the report counts as (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The jail to count it in (default: the first jail that takes reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// The answer to `POST /v1/reports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportOutcome {
    /// The jail the report was counted in.
    pub jail: String,
    /// The source.
    pub source: std::net::IpAddr,
    /// The source's weight within the jail's window after this report (0 when it was not
    /// counted).
    pub count: u64,
    /// The jail's `max_retry`.
    pub max_retry: u32,
    /// The source is banned (by this report, or already).
    pub banned: bool,
    /// The ban this report made, in seconds.
    pub ban_ttl_secs: Option<u64>,
    /// The source is allowlisted: counted, never banned.
    pub allowlisted: bool,
}

/// One ban a jail made that is still in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailBan {
    /// The banned source.
    pub source: std::net::IpAddr,
    /// Seconds until it lapses.
    pub remaining_secs: u64,
    /// The source's ban number within the jail's memory (the increment's exponent + 1).
    pub ban_count: u32,
}

/// The last request (or report) a jail counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastMatch {
    /// Its source.
    pub source: std::net::IpAddr,
    /// When, in unix seconds.
    pub at_unix: u64,
    /// `METHOD PATH STATUS`, or the report's reason.
    pub detail: String,
}

/// `GET /v1/jails`: one jail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailView {
    /// Name.
    pub name: String,
    /// The access log it follows.
    pub log: Option<PathBuf>,
    /// `combined` or `json`.
    pub format: String,
    /// Whether reports naming no jail are counted here.
    pub reports: bool,
    /// Matches within `find_time` that ban.
    pub max_retry: u32,
    /// The window.
    pub find_time_secs: u64,
    /// The first ban's duration.
    pub ban_time_secs: u64,
    /// Log lines read since the daemon started.
    pub lines: u64,
    /// Lines not understood.
    pub unparsed: u64,
    /// Lines that matched.
    pub matches: u64,
    /// Abuse reports counted.
    pub reports_counted: u64,
    /// Bans made.
    pub bans: u64,
    /// Bans not made because the source is allowlisted.
    pub allowlisted: u64,
    /// Sources with matches within the window.
    pub tracked: usize,
    /// Bans in force.
    pub current_bans: Vec<JailBan>,
    /// The last match.
    pub last_match: Option<LastMatch>,
}

/// What a change did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// Entries that were new.
    pub added: usize,
    /// Entries that existed and were refreshed (TTL, comment).
    pub updated: usize,
    /// Entries removed.
    pub removed: usize,
    /// Targets of a delete that were not present.
    pub not_found: Vec<String>,
    /// Bad lines skipped by an import (`file:line: reason`).
    pub skipped: Vec<String>,
    /// The policy version now enforced (bumped by every change that reached the kernel).
    pub policy_version: u64,
}

/// One list entry as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    /// The prefix.
    pub cidr: IpNet,
    /// `policy`, `runtime` or `feed:<file>`.
    pub origin: String,
    /// Seconds until a runtime entry expires.
    pub expires_in_secs: Option<u64>,
    /// Comment of a runtime entry.
    pub comment: Option<String>,
    /// Who added a runtime entry.
    pub added_by: Option<String>,
}

/// One protected interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// Name.
    pub name: String,
    /// `native`, `skb`, or `adopted` (taken over from a previous daemon).
    pub mode: String,
}

/// Fill of one kernel map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    /// Map name.
    pub map: String,
    /// Entries in use.
    pub entries: u64,
    /// Capacity.
    pub capacity: u64,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// apifw version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// The policy file.
    pub policy_file: PathBuf,
    /// Policy version: 1 at start, bumped by every change that reached the kernel.
    pub policy_version: u64,
    /// The kernel generation being read.
    pub active_generation: u32,
    /// Whether the daemon adopted maps from a previous daemon at start.
    pub adopted: bool,
    /// Interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Map fill.
    pub maps: Vec<MapFill>,
    /// Entries from the policy file, feeds and runtime changes.
    pub block_entries: usize,
    /// Allowlist entries.
    pub allow_entries: usize,
    /// Runtime (CLI) block entries.
    pub runtime_block: usize,
    /// Runtime allow entries.
    pub runtime_allow: usize,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads.
    pub failed_reloads: u64,
    /// Why the last reload failed, if it did.
    pub last_reload_error: Option<String>,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The audit log the daemon writes (`apifw audit` reads it from here); empty from a daemon
    /// that predates the field.
    #[serde(default)]
    pub audit_log: PathBuf,
    /// The state file holding runtime changes; empty from a daemon that predates the field.
    #[serde(default)]
    pub state_file: PathBuf,
    /// The root of its pins (`apifw stats` and `apifw bans` read the pinned maps there); empty
    /// from a daemon that predates the field.
    #[serde(default)]
    pub pin_dir: PathBuf,
    /// The program's own cost, from the kernel's BPF statistics; None from a daemon that
    /// predates the field or cannot read its program.
    #[serde(default)]
    pub program: Option<crate::dataplane::stats::ProgramRuns>,
    /// Kernel memory of each map: in use now, and when full at the policy's limits; empty from
    /// a daemon that predates the field.
    #[serde(default)]
    pub memory: Vec<MapMemory>,
    /// The CrowdSec LAPI the daemon follows, if the policy names one; None also from a daemon
    /// that predates the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<CrowdsecStatus>,
    /// SYN cookies of each port that has them; empty from a daemon that predates the field.
    #[serde(default)]
    pub syn_cookies: Vec<CookieStatus>,
}

/// One port's SYN cookies (`firewall_common::syncookie`), in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieStatus {
    /// The rule.
    pub rule: String,
    /// The TCP port; None for a rule without ports (every TCP port it takes, metered each on
    /// its own).
    pub port: Option<u16>,
    /// `auto` or `always`.
    pub setting: String,
    /// CPUs whose detector has the port in cookie mode now (`auto`; `always` is always on).
    pub cpus_in_cookie_mode: u32,
    /// Times a CPU switched the port's cookie mode on or off.
    pub switches: u64,
}

impl CookieStatus {
    /// Whether SYNs to the port are answered with cookies now (on at least one CPU).
    pub fn on(&self) -> bool {
        self.setting == "always" || self.cpus_in_cookie_mode > 0
    }
}

/// The daemon's link to a CrowdSec Local API, in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdsecStatus {
    /// The LAPI.
    pub lapi_url: String,
    /// Hosts and ranges banned by its decisions.
    pub decisions: u64,
    /// Syncs applied since the daemon started.
    pub syncs: u64,
    /// Seconds since the last applied sync; None before the first.
    pub last_sync_secs_ago: Option<u64>,
    /// Failed syncs since the daemon started.
    pub errors: u64,
    /// Why the last sync failed, when it did (cleared by the next good one).
    pub last_error: Option<String>,
    /// The push side (this host's bans sent to the LAPI as alerts), when the policy has
    /// machine credentials; None also from a daemon that predates the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<CrowdsecPushStatus>,
}

/// The push side of the CrowdSec link, in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdsecPushStatus {
    /// The machine the daemon logs in as.
    pub machine_id: String,
    /// Whether jail bans are pushed.
    pub jail_bans: bool,
    /// Whether the rate limiter's bans are pushed.
    pub rate_limit_bans: bool,
    /// Bans the LAPI took since the daemon started.
    pub pushed: u64,
    /// Bans waiting to be pushed.
    pub queued: u64,
    /// Seconds since the LAPI last took some; None before the first.
    pub last_push_secs_ago: Option<u64>,
    /// Failed pushes since the daemon started.
    pub errors: u64,
    /// Bans not pushed (queue full, expired while queued, refused as invalid).
    pub dropped: u64,
    /// Why the last push failed, until one succeeds.
    pub last_error: Option<String>,
}

/// Kernel memory of one map (`dataplane::memory`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    /// Map name.
    pub map: String,
    /// The `[limits]` setting that sizes it, if any.
    pub limit: Option<String>,
    /// Bytes in use now (the kernel's `memlock`).
    pub bytes: u64,
    /// Bytes when the map is full at the policy's limits.
    pub full_bytes: u64,
}

/// Drop events counted by the kernel (defined with the events, in the dataplane).
pub use crate::dataplane::events::EventCounts;

/// `GET /v1/stats`: every counter, and the names of the interface slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// The counters.
    pub snapshot: crate::dataplane::stats::Snapshot,
    /// Drop events.
    pub events: EventCounts,
    /// Interface name per counter slot.
    pub interfaces: std::collections::BTreeMap<u32, String>,
    /// Rule name per rule slot.
    pub rules: std::collections::BTreeMap<u32, String>,
}

/// `GET /v1/bans`: the bans with their comments.
pub type BanList = Vec<BanRow>;

/// Body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket: no daemon runs with this run directory.
    #[error(
        "no apifw daemon is running: no control socket at {} (start one with `apifw run`, or pass \
         the daemon's --run-dir)",
        socket.display()
    )]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket refused us.
    #[error(
        "permission denied on {}: the control API is open to root and the policy's \
         `daemon.control_group` only",
        socket.display()
    )]
    PermissionDenied {
        /// The socket path.
        socket: PathBuf,
    },
    /// Connecting failed otherwise (e.g. a stale socket of a dead daemon).
    #[error("cannot connect to the daemon at {} (is it running?)", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the control connection failed")]
    Http(#[source] hyper::Error),
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer was not what this CLI expects (version mismatch?).
    #[error("unexpected answer from the daemon")]
    Decode(#[source] serde_json::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

impl ClientError {
    /// The process exit code for this error: 3 when the daemon cannot be reached, 1 when it
    /// refused or failed the request.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotRunning { .. } | Self::PermissionDenied { .. } | Self::Connect { .. } => 3,
            _ => 1,
        }
    }
}

/// A client of one daemon's control socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the socket at `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None)
    }

    /// `POST path` with `body` as JSON.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(ClientError::Decode)?;
        self.request(Method::POST, path, Some(body))
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let (status, bytes) = runtime.block_on(self.exchange(method, path, body))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Daemon {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => ClientError::NotRunning {
                    socket: self.socket.clone(),
                },
                std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    socket: self.socket.clone(),
                },
                _ => ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                },
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path}"))
            .header(hyper::header::HOST, "apifw")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|err| ClientError::Daemon {
                status: 0,
                message: err.to_string(),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}
