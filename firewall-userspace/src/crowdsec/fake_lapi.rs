//! An in-process stand-in for CrowdSec's Local API, for tests: hyper on `127.0.0.1`.
//!
//! - `GET /v1/decisions/stream` answers whatever the test sets (a status and a body, or no
//!   answer at all);
//! - `POST /v1/watchers/login` checks the machine's credentials ([`MACHINE_ID`],
//!   [`PASSWORD`]) and gives a token (401 otherwise, as the real one);
//! - `POST /v1/alerts` takes a JSON array of alerts with a token it gave and still holds (401
//!   otherwise), keeps them and answers 201 with their ids;
//!
//! unless the test queued answers of its own for the login or the alerts, which go first. Every
//! request is recorded.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

/// The machine the fake knows.
pub const MACHINE_ID: &str = "apifw-test";
/// Its password.
pub const PASSWORD: &str = "machine-password";

/// What the fake answers next.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status and a body.
    Reply(StatusCode, Bytes),
    /// Accept the request and never answer (a hanging LAPI).
    Hang,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The request target.
    pub target: String,
    /// The `X-Api-Key` header.
    pub api_key: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body.
    pub body: String,
}

impl Seen {
    /// Whether the request asked for every decision (`startup=true`).
    pub fn startup(&self) -> bool {
        self.target.contains("startup=true")
    }
}

#[derive(Debug)]
struct State {
    /// Answers of the decision stream, in order; the last one repeats.
    answers: Vec<Answer>,
    /// Answers to give to logins before checking credentials, in order.
    login: Vec<Answer>,
    /// Answers to give to alerts before checking tokens, in order.
    alerts: Vec<Answer>,
    /// Tokens given and still valid.
    tokens: Vec<String>,
    /// Tokens given so far.
    issued: u64,
    /// Alerts received.
    received: Vec<serde_json::Value>,
    seen: Vec<Seen>,
}

/// A running fake LAPI; stops when dropped.
#[derive(Debug)]
pub struct FakeLapi {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLapi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Answer {
    Answer::Reply(status, Bytes::from(body.to_string()))
}

impl State {
    fn answer(&mut self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> Answer {
        let queued = match path {
            "/v1/watchers/login" => &mut self.login,
            "/v1/alerts" => &mut self.alerts,
            _ => {
                return if self.answers.len() > 1 {
                    self.answers.remove(0)
                } else {
                    self.answers[0].clone()
                };
            }
        };
        if !queued.is_empty() {
            return queued.remove(0);
        }
        if method != "POST" {
            return json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({}));
        }
        let unauthorized = |message: &str| {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"code": 401, "message": message}),
            )
        };
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "invalid character in JSON"}),
            );
        };
        if path == "/v1/watchers/login" {
            if body["machine_id"] != MACHINE_ID || body["password"] != PASSWORD {
                return unauthorized("incorrect Username or Password");
            }
            self.issued += 1;
            let token = format!("token-{}", self.issued);
            self.tokens.push(token.clone());
            let expire = humantime::format_rfc3339_seconds(
                std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
            );
            return json(
                StatusCode::OK,
                serde_json::json!({"code": 200, "expire": expire.to_string(), "token": token}),
            );
        }
        let token = auth.and_then(|auth| auth.strip_prefix("Bearer "));
        if !token.is_some_and(|token| self.tokens.iter().any(|held| held == token)) {
            return unauthorized("Token is expired");
        }
        let Some(alerts) = body.as_array() else {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "json: cannot unmarshal object"}),
            );
        };
        let first = self.received.len() + 1;
        self.received.extend(alerts.iter().cloned());
        let ids: Vec<String> = (first..first + alerts.len())
            .map(|id| id.to_string())
            .collect();
        json(StatusCode::CREATED, serde_json::json!(ids))
    }
}

impl FakeLapi {
    /// Starts a fake whose stream answers `{"new":null,"deleted":null}` until told otherwise.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            answers: vec![Answer::Reply(
                StatusCode::OK,
                Bytes::from_static(br#"{"new":null,"deleted":null}"#),
            )],
            login: Vec::new(),
            alerts: Vec::new(),
            tokens: Vec::new(),
            issued: 0,
            received: Vec::new(),
            seen: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|value| value.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let (api_key, authorization) =
                                (header("x-api-key"), header("authorization"));
                            let method = request.method().to_string();
                            let target = request.uri().to_string();
                            let path = request.uri().path().to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|body| body.to_bytes())
                                .unwrap_or_default();
                            let answer = {
                                let mut state = state.lock().expect("fake LAPI state");
                                state.seen.push(Seen {
                                    method: method.clone(),
                                    target,
                                    api_key,
                                    authorization: authorization.clone(),
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                });
                                state.answer(&method, &path, authorization.as_deref(), &body)
                            };
                            match answer {
                                Answer::Reply(status, body) => {
                                    let mut response = Response::new(Full::new(body));
                                    *response.status_mut() = status;
                                    Ok::<_, Infallible>(response)
                                }
                                Answer::Hang => std::future::pending().await,
                            }
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            address,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The stream answers `body` with 200 from now on.
    pub fn answer(&self, body: impl Into<Bytes>) {
        self.set(vec![Answer::Reply(StatusCode::OK, body.into())]);
    }

    /// The stream gives these answers in order, the last one repeating.
    pub fn set(&self, answers: Vec<Answer>) {
        assert!(!answers.is_empty(), "the fake needs an answer");
        self.state.lock().expect("fake LAPI state").answers = answers;
    }

    /// The next logins get these answers, in order, before credentials are checked again.
    pub fn queue_login(&self, answers: Vec<Answer>) {
        self.state.lock().expect("fake LAPI state").login = answers;
    }

    /// The next pushes get these answers, in order, before tokens are checked again.
    pub fn queue_alerts(&self, answers: Vec<Answer>) {
        self.state.lock().expect("fake LAPI state").alerts = answers;
    }

    /// Forgets every token given (as a LAPI whose tokens expired, or that restarted).
    pub fn expire_tokens(&self) {
        self.state.lock().expect("fake LAPI state").tokens.clear();
    }

    /// The alerts received so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("fake LAPI state").received.clone()
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("fake LAPI state").seen.clone()
    }

    /// The requests to `path` so far.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.target.split('?').next() == Some(path))
            .collect()
    }
}
