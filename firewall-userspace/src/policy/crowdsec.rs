//! The `[crowdsec]` section: which CrowdSec Local API (LAPI) the daemon's bouncer follows, with
//! which key, how often, and which decisions it takes; and, with machine credentials, which of
//! this host's bans its agent side pushes to the LAPI as alerts. Every default is spelled out
//! here, and every error names the setting and its value.
//!
//! Only the settings are checked here; the key and password files are read when they are used
//! (the key at each sync, the password at each login), so a rotated secret needs no reload, and
//! `apifw check` of a policy meant for another host does not need the secrets.

use std::{path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Diagnostic, Locator};

/// How often the decision stream is polled unless the policy says otherwise.
pub const DEFAULT_POLL_INTERVAL: &str = "10s";
/// How often the whole stream is asked for again unless the policy says otherwise: deltas can
/// miss decisions (a Debian LAPI 1.4.6 delivered 99,950 of 100,000 decisions imported with
/// `cscli decisions import` while a bouncer polled every second), and a full answer heals that.
pub const DEFAULT_RESYNC_INTERVAL: &str = "10m";
/// How long one request may take, connect to last byte, unless the policy says otherwise.
pub const DEFAULT_TIMEOUT: &str = "30s";
/// How long connecting may take unless the policy says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
/// The largest answer read unless the policy says otherwise: a community blocklist of 100k
/// decisions is about 25 MiB of JSON.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 64 << 20;

/// `limits.max_bans` below this draws a warning when the policy follows a LAPI: CrowdSec's
/// community blocklist is about 100,000 decisions.
pub const COMMUNITY_BLOCKLIST_BANS: u32 = 1 << 17;

/// A decision scope the bouncer can enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionScope {
    /// One address (`Ip`): a /32 or /128 ban.
    Ip,
    /// A CIDR (`Range`): a subnet ban.
    Range,
}

impl DecisionScope {
    /// Reads a scope as the LAPI or the policy writes it (`Ip`, `ip`, `Range`, `range`).
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("ip") {
            Some(Self::Ip)
        } else if text.eq_ignore_ascii_case("range") {
            Some(Self::Range)
        } else {
            None
        }
    }

    /// The LAPI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "Ip",
            Self::Range => "Range",
        }
    }
}

/// The bouncer's API key: in the policy, or in a file of its own (`cscli bouncers add` prints
/// it). Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiKey {
    /// The key itself (`api_key`).
    Inline(String),
    /// A file holding it (`api_key_file`, resolved against the policy's directory); surrounding
    /// whitespace is ignored.
    File(PathBuf),
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The watcher's password (`cscli machines add NAME --password PW`): in the policy, or in a file
/// of its own. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// The password itself (`password`).
    Inline(String),
    /// A file holding it (`password_file`, resolved against the policy's directory); surrounding
    /// whitespace is ignored.
    File(PathBuf),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The agent side: which bans this host pushes to the LAPI as alerts with a decision, and the
/// machine (watcher) credentials it logs in with. Present only when the credentials are given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSettings {
    /// The machine's name in the LAPI (`machine_id`).
    pub machine_id: String,
    /// Its password.
    pub password: Password,
    /// Whether the jails' bans (abuse reports included) are pushed (`push_jail_bans`, default
    /// true).
    pub jail_bans: bool,
    /// Whether the XDP rate limiter's own bans are pushed (`push_rate_limit_bans`, default
    /// false).
    pub rate_limit_bans: bool,
}

/// A validated `[crowdsec]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdsecSettings {
    /// The LAPI's base URL, without a trailing slash (`http://127.0.0.1:8080`).
    pub lapi_url: String,
    /// The bouncer's key.
    pub api_key: ApiKey,
    /// Time between two polls of the decision stream.
    pub poll_interval: Duration,
    /// Time after which a poll asks for every decision again (`startup=true`) instead of what
    /// changed.
    pub resync_interval: Duration,
    /// Longest time one request may take, from connecting to the answer's last byte.
    pub timeout: Duration,
    /// Longest time connecting may take.
    pub connect_timeout: Duration,
    /// Largest answer read; a longer one is refused whole.
    pub max_answer_bytes: u64,
    /// Only decisions of these origins are enforced (empty: every origin).
    pub origins: Vec<String>,
    /// Only decisions of these scopes are enforced.
    pub scopes: Vec<DecisionScope>,
    /// What this host pushes to the LAPI, when it has machine credentials.
    pub push: Option<PushSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrowdsec {
    lapi_url: Spanned<String>,
    api_key: Option<Spanned<String>>,
    api_key_file: Option<Spanned<PathBuf>>,
    poll_interval: Option<Spanned<String>>,
    resync_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    max_answer_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    origins: Vec<Spanned<String>>,
    scopes: Option<Vec<Spanned<String>>>,
    machine_id: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    push_jail_bans: Option<Spanned<bool>>,
    push_rate_limit_bans: Option<Spanned<bool>>,
}

/// Checks a LAPI URL: `http://host[:port][/path]`. TLS is not spoken yet, so `https://` is
/// refused rather than sent in clear text.
pub fn check_lapi_url(url: &str) -> Result<String, String> {
    let setting = format!("crowdsec.lapi_url = \"{url}\"");
    if url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(format!(
            "{setting}: TLS is not supported yet; reach the LAPI over plain http:// on a private \
             address or loopback (an stunnel or a TLS-terminating proxy next to apifw also works)"
        ));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|err| format!("{setting}: not a URL ({err}); e.g. \"http://127.0.0.1:8080\""))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{setting}: the URL must start with http:// (e.g. \"http://127.0.0.1:8080\")"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{setting}: the URL names no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{setting}: the URL must not have a query"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Validates the `[crowdsec]` section; `policy` is the policy file (a relative key file is
/// relative to its directory).
pub(super) fn parse_crowdsec(
    locator: &Locator<'_>,
    policy: &Path,
    raw: Option<&Spanned<RawCrowdsec>>,
    errors: &mut Vec<Diagnostic>,
) -> Option<CrowdsecSettings> {
    let section = raw?;
    let raw = section.get_ref();
    let before = errors.len();
    let mut fail = |offset: usize, message: String| errors.push(locator.at(offset, message));

    let lapi_url = check_lapi_url(raw.lapi_url.get_ref())
        .map_err(|message| fail(raw.lapi_url.span().start, message))
        .ok();
    let api_key = match (&raw.api_key, &raw.api_key_file) {
        (Some(key), None) if key.get_ref().trim().is_empty() => {
            fail(key.span().start, "crowdsec.api_key is empty".into());
            None
        }
        (Some(key), None) => Some(ApiKey::Inline(key.get_ref().trim().to_owned())),
        (None, Some(file)) if file.get_ref().as_os_str().is_empty() => {
            fail(file.span().start, "crowdsec.api_key_file is empty".into());
            None
        }
        (None, Some(file)) => Some(ApiKey::File(
            policy
                .parent()
                .unwrap_or(Path::new("."))
                .join(file.get_ref()),
        )),
        (Some(key), Some(_)) => {
            fail(
                key.span().start,
                "crowdsec: set api_key or api_key_file, not both".into(),
            );
            None
        }
        (None, None) => {
            fail(
                section.span().start,
                "crowdsec: set api_key or api_key_file (`cscli bouncers add apifw` prints a key)"
                    .into(),
            );
            None
        }
    };
    let mut duration =
        |name: &str, value: &Option<Spanned<String>>, default: &str, min: Duration| {
            let (text, offset) = value.as_ref().map_or((default, section.span().start), |v| {
                (v.get_ref().as_str(), v.span().start)
            });
            match humantime::parse_duration(text) {
                Ok(parsed) if parsed >= min => Some(parsed),
                Ok(_) => {
                    fail(
                        offset,
                        format!("crowdsec.{name} = \"{text}\": must be at least {min:?}"),
                    );
                    None
                }
                Err(err) => {
                    fail(
                        offset,
                        format!("crowdsec.{name} = \"{text}\": {err} (e.g. \"10s\", \"1m\")"),
                    );
                    None
                }
            }
        };
    let poll_interval = duration(
        "poll_interval",
        &raw.poll_interval,
        DEFAULT_POLL_INTERVAL,
        Duration::from_secs(1),
    );
    let resync_interval = duration(
        "resync_interval",
        &raw.resync_interval,
        DEFAULT_RESYNC_INTERVAL,
        Duration::from_secs(10),
    );
    let timeout = duration(
        "timeout",
        &raw.timeout,
        DEFAULT_TIMEOUT,
        Duration::from_millis(100),
    );
    let connect_timeout = duration(
        "connect_timeout",
        &raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
        Duration::from_millis(100),
    );
    let max_answer_bytes = match &raw.max_answer_bytes {
        Some(value) if *value.get_ref() < 1024 => {
            fail(
                value.span().start,
                format!(
                    "crowdsec.max_answer_bytes = {}: must be at least 1024",
                    value.get_ref()
                ),
            );
            None
        }
        Some(value) => Some(*value.get_ref()),
        None => Some(DEFAULT_MAX_ANSWER_BYTES),
    };
    let mut origins = Vec::new();
    for origin in &raw.origins {
        let text = origin.get_ref().trim();
        if text.is_empty() {
            fail(
                origin.span().start,
                "crowdsec.origins: an origin is empty (e.g. \"cscli\", \"crowdsec\", \"CAPI\", \
                 \"lists\")"
                    .into(),
            );
        } else if !origins.iter().any(|known: &String| known == text) {
            origins.push(text.to_owned());
        }
    }
    let mut scopes = Vec::new();
    match &raw.scopes {
        None => scopes = vec![DecisionScope::Ip, DecisionScope::Range],
        Some(listed) if listed.is_empty() => fail(
            section.span().start,
            "crowdsec.scopes is empty: list \"Ip\", \"Range\" or both (or leave it out for both)"
                .into(),
        ),
        Some(listed) => {
            for scope in listed {
                match DecisionScope::parse(scope.get_ref()) {
                    Some(parsed) if !scopes.contains(&parsed) => scopes.push(parsed),
                    Some(_) => {}
                    None => fail(
                        scope.span().start,
                        format!(
                            "crowdsec.scopes: unknown scope `{}` (apifw enforces \"Ip\" and \
                             \"Range\")",
                            scope.get_ref()
                        ),
                    ),
                }
            }
        }
    }
    let push = parse_push(raw, policy, section.span().start, &mut fail);
    if errors.len() > before {
        return None;
    }
    Some(CrowdsecSettings {
        lapi_url: lapi_url?,
        api_key: api_key?,
        poll_interval: poll_interval?,
        resync_interval: resync_interval?,
        timeout: timeout?,
        connect_timeout: connect_timeout?,
        max_answer_bytes: max_answer_bytes?,
        origins,
        scopes,
        push,
    })
}

/// The agent side's settings: `None` without machine credentials (and then no `push_*` may be
/// turned on), errors through `fail`.
fn parse_push(
    raw: &RawCrowdsec,
    policy: &Path,
    section_start: usize,
    fail: &mut impl FnMut(usize, String),
) -> Option<PushSettings> {
    const HOW: &str = "`cscli machines add apifw-HOST --password PW` creates them";
    let password = match (&raw.password, &raw.password_file) {
        (Some(password), None) if password.get_ref().trim().is_empty() => {
            fail(password.span().start, "crowdsec.password is empty".into());
            None
        }
        (Some(password), None) => Some(Password::Inline(password.get_ref().trim().to_owned())),
        (None, Some(file)) if file.get_ref().as_os_str().is_empty() => {
            fail(file.span().start, "crowdsec.password_file is empty".into());
            None
        }
        (None, Some(file)) => Some(Password::File(
            policy
                .parent()
                .unwrap_or(Path::new("."))
                .join(file.get_ref()),
        )),
        (Some(password), Some(_)) => {
            fail(
                password.span().start,
                "crowdsec: set password or password_file, not both".into(),
            );
            None
        }
        (None, None) => None,
    };
    let machine_id = match &raw.machine_id {
        Some(id) if id.get_ref().trim().is_empty() => {
            fail(id.span().start, "crowdsec.machine_id is empty".into());
            None
        }
        Some(id) => Some(id.get_ref().trim().to_owned()),
        None => None,
    };
    let credentials = match (
        &raw.machine_id,
        raw.password.is_some() || raw.password_file.is_some(),
    ) {
        (Some(id), false) => {
            fail(
                id.span().start,
                format!(
                    "crowdsec.machine_id = \"{}\": set password or password_file too ({HOW})",
                    id.get_ref()
                ),
            );
            false
        }
        (None, true) => {
            let at = raw
                .password
                .as_ref()
                .map(Spanned::span)
                .or(raw.password_file.as_ref().map(Spanned::span))
                .map_or(section_start, |span| span.start);
            fail(
                at,
                format!(
                    "crowdsec: a password without machine_id: set machine_id to the machine's \
                     name ({HOW})"
                ),
            );
            false
        }
        (Some(_), true) => true,
        (None, false) => false,
    };
    let jail_bans = raw
        .push_jail_bans
        .as_ref()
        .map(|v| (*v.get_ref(), v.span().start));
    let rate_limit_bans = raw
        .push_rate_limit_bans
        .as_ref()
        .map(|v| (*v.get_ref(), v.span().start));
    if !credentials {
        for (name, setting) in [
            ("push_jail_bans", jail_bans),
            ("push_rate_limit_bans", rate_limit_bans),
        ] {
            if let Some((true, at)) = setting
                && raw.machine_id.is_none()
                && raw.password.is_none()
                && raw.password_file.is_none()
            {
                fail(
                    at,
                    format!(
                        "crowdsec.{name} = true: pushing bans to the LAPI needs machine \
                         credentials: set crowdsec.machine_id and crowdsec.password or \
                         crowdsec.password_file ({HOW})"
                    ),
                );
            }
        }
        return None;
    }
    Some(PushSettings {
        machine_id: machine_id?,
        password: password?,
        jail_bans: jail_bans.is_none_or(|(on, _)| on),
        rate_limit_bans: rate_limit_bans.is_some_and(|(on, _)| on),
    })
}
