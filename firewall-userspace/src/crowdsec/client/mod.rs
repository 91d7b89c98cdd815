//! The HTTP side of the LAPI link: the bouncer's `GET /v1/decisions/stream` with its
//! `X-Api-Key` ([`LapiClient`]), and the agent side's login and `POST /v1/alerts` with a token
//! ([`watcher::WatcherClient`]), over hyper's HTTP/1 client on a tokio TCP stream (the crate
//! already serves HTTP with hyper; no second HTTP stack). Both go through one [`Endpoint`].
//!
//! A LAPI is a server on the network, so every request is bounded: connecting by
//! `crowdsec.connect_timeout`, the whole request (connect to the answer's last byte) by
//! `crowdsec.timeout`, and the answer's size by `crowdsec.max_answer_bytes`. A LAPI that hangs,
//! trickles or floods costs one failed sync, never the daemon's loop or memory. One connection
//! per request: a poll every few seconds does not need keep-alive, and a fresh connection cannot
//! inherit a half-read answer.
//!
//! Plain `http://` only: TLS would need a TLS stack and a certificate policy, which is left for
//! later; `https://` URLs are refused when the policy is read (`policy/crowdsec.rs`).

use std::{path::PathBuf, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode, Uri, body::Bytes, header};
use hyper_util::rt::TokioIo;

use crate::policy::crowdsec::{ApiKey, CrowdsecSettings};

#[cfg(test)]
mod tests;
pub mod watcher;
#[cfg(test)]
mod watcher_tests;

/// Why a request to the LAPI failed.
#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    /// The URL cannot be used (checked when the policy is read; kept for URLs from elsewhere).
    #[error("crowdsec.lapi_url = \"{url}\": {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file cannot be read, or holds no usable key.
    #[error("cannot read the LAPI key from crowdsec.api_key_file = \"{}\"", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed (refused, unreachable, name not resolved).
    #[error("cannot connect to the LAPI at {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than `crowdsec.connect_timeout`.
    #[error("connecting to the LAPI at {url} timed out after {after:?} (crowdsec.connect_timeout)")]
    ConnectTimeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The request took longer than `crowdsec.timeout`.
    #[error("the LAPI at {url} did not answer within {after:?} (crowdsec.timeout)")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// HTTP failed (the connection closed early, a malformed response).
    #[error("HTTP exchange with the LAPI at {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The reason.
        #[source]
        source: hyper::Error,
    },
    /// Reading the answer failed part way.
    #[error("reading the LAPI's answer from {url} failed")]
    Body {
        /// The URL.
        url: String,
        /// The reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The LAPI refused the key.
    #[error(
        "the LAPI at {url} refused the API key (HTTP {status}): check crowdsec.api_key or \
         crowdsec.api_key_file against `cscli bouncers list`"
    )]
    Forbidden {
        /// The URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The password file cannot be read, or holds no usable password.
    #[error("cannot read the machine password from crowdsec.password_file = \"{}\"", path.display())]
    PasswordFile {
        /// The password file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The LAPI refused the machine's login.
    #[error(
        "the LAPI at {url} refused the login of crowdsec.machine_id = \"{machine_id}\" (HTTP \
         {status}): check it and crowdsec.password or crowdsec.password_file against `cscli \
         machines list` (the machine must be validated)"
    )]
    LoginRefused {
        /// The URL.
        url: String,
        /// The machine.
        machine_id: String,
        /// 401 or 403.
        status: u16,
    },
    /// The LAPI refused a token it had just given.
    #[error(
        "the LAPI at {url} refused the token of crowdsec.machine_id = \"{machine_id}\" right \
         after the login (HTTP {status})"
    )]
    TokenRefused {
        /// The URL.
        url: String,
        /// The machine.
        machine_id: String,
        /// 401 or 403.
        status: u16,
    },
    /// The LAPI refused the alerts as invalid: sending them again cannot help.
    #[error("the LAPI at {url} refused the alerts as invalid (HTTP {status}): {body}")]
    Rejected {
        /// The URL.
        url: String,
        /// 400 or 422.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// A successful answer that cannot be read.
    #[error("the LAPI at {url} answered something apifw cannot use")]
    InvalidAnswer {
        /// The URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: crate::crowdsec::alerts::AnswerError,
    },
    /// Any other status than 200.
    #[error("the LAPI at {url} answered HTTP {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// The answer is longer than `crowdsec.max_answer_bytes`.
    #[error(
        "the LAPI's answer from {url} is longer than {limit} bytes (crowdsec.max_answer_bytes); \
         nothing of it was read into the firewall"
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
}

impl LapiError {
    /// A short name of the error's kind, for the metrics' `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url { .. } | Self::KeyFile { .. } | Self::PasswordFile { .. } => "config",
            Self::Connect { .. } => "connect",
            Self::ConnectTimeout { .. } | Self::Timeout { .. } => "timeout",
            Self::Http { .. } | Self::Body { .. } => "http",
            Self::Forbidden { .. } | Self::LoginRefused { .. } | Self::TokenRefused { .. } => {
                "forbidden"
            }
            Self::Rejected { .. } => "rejected",
            Self::InvalidAnswer { .. } => "invalid_answer",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// Aborts a spawned task when dropped: the connection of a request that timed out goes with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a LAPI is and how long and how much it may take: what every request needs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_answer_bytes: u64,
}

impl Endpoint {
    /// The endpoint of `settings.lapi_url`.
    pub fn new(settings: &CrowdsecSettings) -> Result<Self, LapiError> {
        let url = settings.lapi_url.clone();
        let bad = |reason: &str| LapiError::Url {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported (TLS is not supported yet)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        // `[::1]` in a URL is `::1` to connect to.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.to_string(),
            path: uri.path().trim_end_matches('/').to_owned(),
            url,
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            max_answer_bytes: settings.max_answer_bytes,
        })
    }

    /// The LAPI's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request to `route` (`/v1/...`, under the URL's path) with the headers every request
    /// carries.
    fn request(&self, method: Method, route: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{route}", self.path))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("apifw/", env!("CARGO_PKG_VERSION")),
            )
    }

    /// Sends `request` and reads the whole answer, both bounded (`crowdsec.timeout` for the
    /// whole exchange, `crowdsec.connect_timeout` to connect, `crowdsec.max_answer_bytes`);
    /// any status comes back, for the caller to judge.
    async fn send(
        &self,
        request: Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<(StatusCode, Bytes), LapiError> {
        let request = request.map_err(|err| LapiError::Url {
            url: self.url.clone(),
            reason: err.to_string(),
        })?;
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| LapiError::Timeout {
                url: self.url.clone(),
                after: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), LapiError> {
        let url = || self.url.clone();
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| LapiError::ConnectTimeout {
            url: url(),
            after: self.connect_timeout,
        })?
        .map_err(|source| LapiError::Connect { url: url(), source })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| LapiError::Http { url: url(), source })?;
        let _connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| LapiError::Http { url: url(), source })?;
        let status = response.status();
        let limit = usize::try_from(self.max_answer_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|source| {
                if source.is::<http_body_util::LengthLimitError>() {
                    LapiError::TooLarge {
                        url: url(),
                        limit: self.max_answer_bytes,
                    }
                } else {
                    LapiError::Body { url: url(), source }
                }
            })?
            .to_bytes();
        Ok((status, body))
    }

    /// An error for an answer of an unexpected status.
    fn status_error(&self, status: StatusCode, body: &[u8]) -> LapiError {
        LapiError::Status {
            url: self.url.clone(),
            status: status.as_u16(),
            body: shown(body),
        }
    }
}

/// The start of an answer, for an error message.
fn shown(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_owned()
}

/// The bouncer's client of one LAPI.
#[derive(Debug, Clone)]
pub struct LapiClient {
    endpoint: Endpoint,
    api_key: String,
}

impl LapiClient {
    /// A client for `settings`; reads the key file, if the key is in one.
    pub fn new(settings: &CrowdsecSettings) -> Result<Self, LapiError> {
        let endpoint = Endpoint::new(settings)?;
        let api_key = match &settings.api_key {
            ApiKey::Inline(key) => key.clone(),
            ApiKey::File(path) => {
                let key_error = |source| LapiError::KeyFile {
                    path: path.clone(),
                    source,
                };
                let key = std::fs::read_to_string(path).map_err(key_error)?;
                let key = key.trim().to_owned();
                if key.is_empty() {
                    return Err(key_error(std::io::Error::other("the file is empty")));
                }
                key
            }
        };
        if header::HeaderValue::from_str(&api_key).is_err() {
            return Err(LapiError::KeyFile {
                path: match &settings.api_key {
                    ApiKey::File(path) => path.clone(),
                    ApiKey::Inline(_) => PathBuf::from("(crowdsec.api_key)"),
                },
                source: std::io::Error::other(
                    "the key holds characters an HTTP header cannot carry",
                ),
            });
        }
        Ok(Self { endpoint, api_key })
    }

    /// The LAPI's URL.
    pub fn url(&self) -> &str {
        self.endpoint.url()
    }

    /// `GET /v1/decisions/stream?startup=…`: every active decision (`startup`), or what changed
    /// since this bouncer's last request. Returns the answer's bytes, unparsed.
    pub async fn decision_stream(&self, startup: bool) -> Result<Bytes, LapiError> {
        let request = self
            .endpoint
            .request(
                Method::GET,
                &format!("/v1/decisions/stream?startup={startup}"),
            )
            .header("X-Api-Key", &self.api_key)
            .body(Full::new(Bytes::new()));
        let (status, body) = self.endpoint.send(request).await?;
        match status {
            StatusCode::OK => Ok(body),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(LapiError::Forbidden {
                url: self.endpoint.url.clone(),
                status: status.as_u16(),
            }),
            _ => Err(self.endpoint.status_error(status, &body)),
        }
    }
}
