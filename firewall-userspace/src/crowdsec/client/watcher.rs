//! The agent side's HTTP: a machine (watcher, in CrowdSec's words) logs in with its
//! `machine_id` and password (`POST /v1/watchers/login`, answered with a JWT) and pushes alerts
//! with `Authorization: Bearer <token>` (`POST /v1/alerts`).
//!
//! The token is kept until a minute before the expiry the login answer gives (the LAPI's default
//! is an hour), so a push costs one request, not two; a token the LAPI refuses anyway (401: it
//! restarted with another secret, or the clocks disagree) costs one more login and the push is
//! sent again, once. The password file is read at each login, so a new password needs no reload.
//! Requests are bounded exactly as the bouncer's ([`super::Endpoint`]).

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::{Method, StatusCode, body::Bytes, header};

use super::{Endpoint, LapiError, shown};
use crate::{
    crowdsec::alerts::{self, Token},
    policy::crowdsec::{CrowdsecSettings, Password, PushSettings},
};

/// A token is renewed this long before the LAPI says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// How long a token is kept when the login answer gave no expiry that could be read.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);
/// The least time a token is kept, whatever the expiry says (a clock far behind the LAPI's must
/// not mean a login before every push).
const MIN_LIFETIME: Duration = Duration::from_secs(30);

struct Cached {
    token: String,
    renew_at: Instant,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("token", &"<redacted>")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A watcher's client of one LAPI.
#[derive(Debug)]
pub struct WatcherClient {
    endpoint: Endpoint,
    machine_id: String,
    password: Password,
    token: Option<Cached>,
    logins: u64,
}

impl WatcherClient {
    /// A client for `settings` logging in as `push.machine_id`; nothing is sent yet.
    pub fn new(settings: &CrowdsecSettings, push: &PushSettings) -> Result<Self, LapiError> {
        Ok(Self {
            endpoint: Endpoint::new(settings)?,
            machine_id: push.machine_id.clone(),
            password: push.password.clone(),
            token: None,
            logins: 0,
        })
    }

    /// The LAPI's URL.
    pub fn url(&self) -> &str {
        self.endpoint.url()
    }

    /// Logins so far.
    pub fn logins(&self) -> u64 {
        self.logins
    }

    fn password(&self) -> Result<String, LapiError> {
        match &self.password {
            Password::Inline(password) => Ok(password.clone()),
            Password::File(path) => {
                let error = |source| LapiError::PasswordFile {
                    path: path.clone(),
                    source,
                };
                let password = std::fs::read_to_string(path).map_err(error)?;
                let password = password.trim();
                if password.is_empty() {
                    return Err(error(std::io::Error::other("the file is empty")));
                }
                Ok(password.to_owned())
            }
        }
    }

    /// `POST /v1/watchers/login`: a fresh token, kept for the next pushes.
    pub async fn login(&mut self) -> Result<(), LapiError> {
        self.token = None;
        let body = serde_json::json!({
            "machine_id": self.machine_id,
            "password": self.password()?,
            "scenarios": [],
        });
        let request = self
            .endpoint
            .request(Method::POST, "/v1/watchers/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let (status, answer) = self.endpoint.send(request).await?;
        self.logins += 1;
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(LapiError::LoginRefused {
                    url: self.endpoint.url.clone(),
                    machine_id: self.machine_id.clone(),
                    status: status.as_u16(),
                });
            }
            _ => return Err(self.endpoint.status_error(status, &answer)),
        }
        let Token {
            token,
            expires_unix,
        } = alerts::parse_login(&answer).map_err(|source| LapiError::InvalidAnswer {
            url: self.endpoint.url.clone(),
            source,
        })?;
        let lifetime = expires_unix.map_or(UNKNOWN_LIFETIME, |expires| {
            Duration::from_secs(expires.saturating_sub(alerts::unix_now()))
                .saturating_sub(RENEW_BEFORE)
                .max(MIN_LIFETIME)
        });
        self.token = Some(Cached {
            token,
            renew_at: Instant::now() + lifetime,
        });
        Ok(())
    }

    /// Whether a token is held that is not due for renewal.
    pub fn has_token(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(|cached| cached.renew_at > Instant::now())
    }

    /// `POST /v1/alerts` with `body` (a JSON array of alerts), logging in first when no token is
    /// held, and once more if the LAPI refuses the one held. Returns the ids of the alerts the
    /// LAPI created.
    pub async fn push_alerts(&mut self, body: Bytes) -> Result<Vec<String>, LapiError> {
        let mut fresh = false;
        if !self.has_token() {
            self.login().await?;
            fresh = true;
        }
        loop {
            let token = self.token.as_ref().map(|cached| cached.token.clone());
            let request = self
                .endpoint
                .request(Method::POST, "/v1/alerts")
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", token.unwrap_or_default()),
                )
                .body(Full::new(body.clone()));
            let (status, answer) = self.endpoint.send(request).await?;
            match status {
                status if status.is_success() => {
                    return alerts::parse_created(&answer).map_err(|source| {
                        LapiError::InvalidAnswer {
                            url: self.endpoint.url.clone(),
                            source,
                        }
                    });
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !fresh => {
                    self.login().await?;
                    fresh = true;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    self.token = None;
                    return Err(LapiError::TokenRefused {
                        url: self.endpoint.url.clone(),
                        machine_id: self.machine_id.clone(),
                        status: status.as_u16(),
                    });
                }
                // Debian's LAPI 1.4.6 answers a swagger validation failure (a required field
                // missing) with 500, `{"message":"validation failure list:\n…"}`.
                status
                    if status == StatusCode::BAD_REQUEST
                        || status == StatusCode::UNPROCESSABLE_ENTITY
                        || (status == StatusCode::INTERNAL_SERVER_ERROR
                            && contains(&answer, b"validation failure")) =>
                {
                    return Err(LapiError::Rejected {
                        url: self.endpoint.url.clone(),
                        status: status.as_u16(),
                        body: shown(&answer),
                    });
                }
                _ => return Err(self.endpoint.status_error(status, &answer)),
            }
        }
    }
}
