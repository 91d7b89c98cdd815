//! The `[[jail]]` tables of the policy: which access log a jail follows, which lines count
//! against a source, and how long a source that reaches `max_retry` is banned. Every default is
//! spelled out here, and every error names the jail and the key.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Diagnostic, Locator, parse_cidr};

/// Matches per source a jail bans at, unless the policy says otherwise.
pub const DEFAULT_MAX_RETRY: u32 = 5;
/// Window matches are counted over.
pub const DEFAULT_FIND_TIME: &str = "10m";
/// How long a first ban lasts.
pub const DEFAULT_BAN_TIME: &str = "10m";
/// Status codes a jail counts when it names none: failed authentication.
pub const DEFAULT_STATUS: [u16; 2] = [401, 403];
/// Longest ban an increment may reach unless the policy says otherwise.
pub const DEFAULT_INCREMENT_MAX: &str = "1d";
/// How long a source's ban history is kept after its last ban, unless the policy says
/// otherwise.
pub const DEFAULT_FORGET_AFTER: &str = "1d";

/// Format of an access log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// NCSA combined (nginx `combined`, Apache `%h %l %u %t "%r" %>s %b "%{Referer}i"
    /// "%{User-agent}i"`), optionally followed by a quoted X-Forwarded-For field.
    #[default]
    Combined,
    /// One JSON object per line (envoy, traefik, caddy, nginx `escape=json`), read through
    /// [`FieldMap`].
    Json,
}

/// Where a JSON log keeps each value: a key, or a dotted path into nested objects
/// (`request.remote_ip`). An array yields its first element (caddy logs headers as arrays).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldMap {
    /// The address of the peer that sent the request.
    pub client: String,
    /// The response status code (a number or a numeric string).
    pub status: String,
    /// The request method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// The User-Agent header.
    pub user_agent: String,
    /// The X-Forwarded-For header.
    pub forwarded_for: String,
}

impl Default for FieldMap {
    /// The field names of nginx's common JSON `log_format` recipes; envoy, traefik and caddy
    /// need a map (see `examples/apifw.toml`).
    fn default() -> Self {
        Self {
            client: "remote_addr".into(),
            status: "status".into(),
            method: "method".into(),
            path: "path".into(),
            user_agent: "user_agent".into(),
            forwarded_for: "x_forwarded_for".into(),
        }
    }
}

/// A regular expression that compares by its text, so that a policy stays comparable.
#[derive(Clone, Debug)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// Longer bans for repeat offenders: the n-th ban (from 0) lasts `ban_time × factor^n`, at most
/// `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Increment {
    /// Growth per ban.
    pub factor: u32,
    /// Longest ban, in seconds.
    pub max_secs: u64,
    /// A source's ban history is forgotten this many seconds after its last ban.
    pub forget_after_secs: u64,
}

/// A validated jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    /// Unique name.
    pub name: String,
    /// The access log it follows (resolved against the policy's directory); none for a jail
    /// that only takes abuse reports.
    pub log: Option<PathBuf>,
    /// Format of `log`.
    pub format: LogFormat,
    /// Field names of a JSON log.
    pub fields: FieldMap,
    /// Status codes that count (empty: any).
    pub status: Vec<u16>,
    /// Methods that count, upper case (empty: any).
    pub methods: Vec<String>,
    /// The request target must match this (none: any).
    pub path: Option<Pattern>,
    /// The User-Agent must match this (none: any).
    pub user_agent: Option<Pattern>,
    /// Window matches are counted over, in seconds.
    pub find_time_secs: u64,
    /// Matches (or report weight) within `find_time` that ban a source.
    pub max_retry: u32,
    /// First ban, in seconds.
    pub ban_time_secs: u64,
    /// Longer bans for repeat offenders; none: every ban lasts `ban_time`.
    pub increment: Option<Increment>,
    /// Peers whose X-Forwarded-For header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether abuse reports that name no jail are counted here.
    pub reports: bool,
}

impl JailConfig {
    /// How long the `nth` ban (from 0) of a source lasts, in seconds.
    pub fn ban_secs(&self, nth: u32) -> u64 {
        match self.increment {
            None => self.ban_time_secs,
            Some(increment) => {
                let growth = u64::from(increment.factor).saturating_pow(nth);
                self.ban_time_secs
                    .saturating_mul(growth)
                    .min(increment.max_secs.max(self.ban_time_secs))
            }
        }
    }

    /// How long a source's ban history is kept after its last ban, in seconds.
    pub fn forget_after_secs(&self) -> u64 {
        self.increment
            .map_or(self.ban_time_secs, |increment| increment.forget_after_secs)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIncrement {
    #[serde(default = "default_factor")]
    factor: u32,
    max: Option<String>,
    forget_after: Option<String>,
}

fn default_factor() -> u32 {
    2
}

/// A `[[jail]]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJail {
    name: String,
    log: Option<PathBuf>,
    #[serde(default)]
    format: LogFormat,
    #[serde(default)]
    fields: FieldMap,
    status: Option<Vec<u16>>,
    #[serde(default)]
    methods: Vec<String>,
    path: Option<String>,
    user_agent: Option<String>,
    find_time: Option<String>,
    max_retry: Option<u32>,
    ban_time: Option<String>,
    ban_time_increment: Option<RawIncrement>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    reports: Option<bool>,
}

fn seconds(key: &str, value: Option<&str>, default: &str) -> Result<u64, String> {
    let text = value.unwrap_or(default);
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{key} = \"{text}\": {err} (e.g. \"30s\", \"10m\", \"1h\")"))?;
    if duration.as_secs() == 0 {
        return Err(format!("{key} = \"{text}\": must be at least 1s"));
    }
    Ok(duration.as_secs())
}

fn pattern(key: &str, value: Option<&str>) -> Result<Option<Pattern>, String> {
    value
        .map(|text| {
            Regex::new(text)
                .map(Pattern)
                .map_err(|err| format!("{key} = {text:?} is not a valid regular expression: {err}"))
        })
        .transpose()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate(policy_dir: &Path, raw: &RawJail) -> Result<JailConfig, String> {
    if !valid_name(&raw.name) {
        return Err(
            "name must be 1 to 64 letters, digits, `-`, `_` or `.` (it labels metrics)".into(),
        );
    }
    if raw.log.is_none() && raw.reports == Some(false) {
        return Err("has neither a `log` nor `reports = true`: it could never match".into());
    }
    let status = raw
        .status
        .clone()
        .unwrap_or_else(|| DEFAULT_STATUS.to_vec());
    if let Some(bad) = status.iter().find(|code| !(100..=599).contains(*code)) {
        return Err(format!(
            "status: {bad} is not an HTTP status code (100..=599)"
        ));
    }
    let mut methods = Vec::new();
    for method in &raw.methods {
        if method.is_empty() || !method.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(format!("methods: `{method}` is not an HTTP method"));
        }
        methods.push(method.to_ascii_uppercase());
    }
    let max_retry = raw.max_retry.unwrap_or(DEFAULT_MAX_RETRY);
    if max_retry == 0 {
        return Err("max_retry must be at least 1".into());
    }
    let ban_time_secs = seconds("ban_time", raw.ban_time.as_deref(), DEFAULT_BAN_TIME)?;
    let increment = match &raw.ban_time_increment {
        None => None,
        Some(increment) => {
            if increment.factor < 1 {
                return Err("ban_time_increment.factor must be at least 1".into());
            }
            let max_secs = seconds(
                "ban_time_increment.max",
                increment.max.as_deref(),
                DEFAULT_INCREMENT_MAX,
            )?;
            if max_secs < ban_time_secs {
                return Err(format!(
                    "ban_time_increment.max ({max_secs}s) is shorter than ban_time \
                     ({ban_time_secs}s)"
                ));
            }
            Some(Increment {
                factor: increment.factor,
                max_secs,
                forget_after_secs: seconds(
                    "ban_time_increment.forget_after",
                    increment.forget_after.as_deref(),
                    DEFAULT_FORGET_AFTER,
                )?,
            })
        }
    };
    let mut trusted_proxies = Vec::new();
    for proxy in &raw.trusted_proxies {
        trusted_proxies.push(
            parse_cidr(proxy)
                .map_err(|message| format!("trusted_proxies: {message}"))?
                .trunc(),
        );
    }
    let fields = &raw.fields;
    for (key, value) in [
        ("client", &fields.client),
        ("status", &fields.status),
        ("method", &fields.method),
        ("path", &fields.path),
        ("user_agent", &fields.user_agent),
        ("forwarded_for", &fields.forwarded_for),
    ] {
        if value.is_empty() || value.split('.').any(str::is_empty) {
            return Err(format!(
                "fields.{key} = {value:?}: expected a key or a dotted path (e.g. \
                 \"request.remote_ip\")"
            ));
        }
    }
    Ok(JailConfig {
        name: raw.name.clone(),
        log: raw.log.as_ref().map(|log| policy_dir.join(log)),
        format: raw.format,
        fields: raw.fields.clone(),
        status,
        methods,
        path: pattern("path", raw.path.as_deref())?,
        user_agent: pattern("user_agent", raw.user_agent.as_deref())?,
        find_time_secs: seconds("find_time", raw.find_time.as_deref(), DEFAULT_FIND_TIME)?,
        max_retry,
        ban_time_secs,
        increment,
        trusted_proxies,
        reports: raw.reports.unwrap_or(raw.log.is_none()),
    })
}

/// Validates the `[[jail]]` tables; each error names the jail and its key, at the jail's line.
pub(crate) fn parse_jails(
    locator: &Locator<'_>,
    policy: &Path,
    raw: &[Spanned<RawJail>],
    errors: &mut Vec<Diagnostic>,
) -> Vec<JailConfig> {
    let policy_dir = policy.parent().unwrap_or(Path::new("."));
    let mut jails = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut logs: HashMap<PathBuf, String> = HashMap::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let jail = spanned.get_ref();
        let mut fail = |message: String| {
            errors.push(locator.at(offset, format!("jail `{}`: {message}", jail.name)))
        };
        if let Some(first) = names.insert(jail.name.clone(), offset) {
            fail(format!(
                "duplicate jail name (first at line {})",
                locator.at(first, String::new()).line
            ));
            continue;
        }
        match validate(policy_dir, jail) {
            Ok(config) => {
                if let Some(log) = &config.log
                    && let Some(other) = logs.insert(log.clone(), config.name.clone())
                {
                    // Two followers of one file would each keep an offset; one jail per log,
                    // with several patterns, is the supported shape.
                    fail(format!(
                        "follows {} like jail `{other}`; one log has one jail",
                        log.display()
                    ));
                    continue;
                }
                jails.push(config);
            }
            Err(message) => fail(message),
        }
    }
    jails
}

#[cfg(test)]
mod tests {
    use crate::policy::{Loaded, PolicyError};
    use std::path::Path;

    fn load(text: &str) -> Result<Loaded, PolicyError> {
        Loaded::from_str(Path::new("/etc/apifw/policy.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Err(PolicyError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
            Err(other) => panic!("expected validation errors, got {other}"),
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.policy.jails),
        }
    }

    #[test]
    fn a_minimal_jail_takes_the_documented_defaults() {
        let loaded = load("[[jail]]\nname = \"auth\"\nlog = \"logs/access.log\"\n")
            .unwrap_or_else(|err| panic!("{err}"));
        let jail = &loaded.policy.jails[0];
        assert_eq!(
            jail.log.as_deref(),
            Some(Path::new("/etc/apifw/logs/access.log"))
        );
        assert_eq!(jail.format, super::LogFormat::Combined);
        assert_eq!(jail.status, [401, 403]);
        assert!(jail.methods.is_empty() && jail.path.is_none() && jail.user_agent.is_none());
        assert_eq!(
            (jail.find_time_secs, jail.max_retry, jail.ban_time_secs),
            (600, 5, 600)
        );
        assert_eq!(jail.increment, None);
        assert!(!jail.reports, "a log jail takes only named reports");
        assert_eq!(jail.ban_secs(0), 600);
        assert_eq!(jail.ban_secs(7), 600, "no increment: every ban is ban_time");
        assert_eq!(jail.fields.client, "remote_addr");
    }

    #[test]
    fn increments_grow_by_the_factor_up_to_the_maximum() {
        let loaded = load(
            "[[jail]]\nname = \"api\"\nmax_retry = 3\nban_time = \"1m\"\n\
             ban_time_increment = { factor = 3, max = \"20m\" }\n\
             trusted_proxies = [\"192.0.2.0/24\", \"2001:db8::1\"]\nmethods = [\"post\"]\n\
             path = \"^/login\"\n",
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let jail = &loaded.policy.jails[0];
        assert!(jail.reports, "a jail without a log takes reports");
        assert_eq!(jail.methods, ["POST"]);
        assert_eq!(
            [0, 1, 2, 3, 40].map(|nth| jail.ban_secs(nth)),
            [60, 180, 540, 1200, 1200]
        );
        assert_eq!(jail.forget_after_secs(), 86_400);
        assert_eq!(jail.trusted_proxies.len(), 2);
    }

    #[test]
    fn bad_jails_are_errors_naming_the_jail_and_the_key() {
        let jail = |body: &str| format!("[[jail]]\nname = \"j\"\nlog = \"a.log\"\n{body}\n");
        for (body, expected) in [
            ("max_retry = 0", "jail `j`: max_retry must be at least 1"),
            ("find_time = \"soon\"", "jail `j`: find_time = \"soon\""),
            (
                "ban_time = \"0s\"",
                "jail `j`: ban_time = \"0s\": must be at least 1s",
            ),
            ("status = [999]", "jail `j`: status: 999"),
            (
                "path = \"(\"",
                "jail `j`: path = \"(\" is not a valid regular expression",
            ),
            ("user_agent = \"[\"", "jail `j`: user_agent = \"[\""),
            ("methods = [\"GE T\"]", "jail `j`: methods: `GE T`"),
            (
                "trusted_proxies = [\"nope\"]",
                "jail `j`: trusted_proxies: invalid CIDR `nope`",
            ),
            (
                "ban_time = \"1h\"\nban_time_increment = { max = \"10m\" }",
                "jail `j`: ban_time_increment.max (600s) is shorter than ban_time (3600s)",
            ),
            (
                "ban_time_increment = { factor = 0 }",
                "jail `j`: ban_time_increment.factor must be at least 1",
            ),
            (
                "fields = { client = \"a..b\" }",
                "jail `j`: fields.client = \"a..b\"",
            ),
        ] {
            let found = errors(&jail(body));
            assert_eq!(found.len(), 1, "{body}: {found:?}");
            assert!(
                found[0].starts_with("/etc/apifw/policy.toml:1:1: ") && found[0].contains(expected),
                "{body}: {found:?}"
            );
        }
        let found = errors(
            "[[jail]]\nname = \"a\"\nlog = \"x.log\"\n[[jail]]\nname = \"a\"\nlog = \"y.log\"\n\
             [[jail]]\nname = \"b\"\nlog = \"x.log\"\n[[jail]]\nname = \"c d\"\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("jail `a`: duplicate jail name (first at line 1)"));
        assert!(found[1].contains("jail `b`: follows /etc/apifw/x.log like jail `a`"));
        assert!(found[2].contains("jail `c d`: name must be"));
        let found = errors("[[jail]]\nname = \"x\"\nlog = \"a\"\nretries = 3\n");
        assert!(found[0].contains("unknown field `retries`"), "{found:?}");
    }
}
