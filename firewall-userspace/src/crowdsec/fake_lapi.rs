//! An in-process stand-in for CrowdSec's Local API, for tests: hyper on `127.0.0.1`, answering
//! `GET /v1/decisions/stream` with whatever the test sets (a status and a body, or no answer at
//! all), and recording each request's `startup` flag and `X-Api-Key`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;

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
    /// The request target.
    pub target: String,
    /// The `X-Api-Key` header.
    pub api_key: Option<String>,
}

impl Seen {
    /// Whether the request asked for every decision (`startup=true`).
    pub fn startup(&self) -> bool {
        self.target.contains("startup=true")
    }
}

#[derive(Debug)]
struct State {
    /// Answers to give in order; the last one repeats.
    answers: Vec<Answer>,
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

impl FakeLapi {
    /// Starts a fake that answers `{"new":null,"deleted":null}` until told otherwise.
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
                            let answer = {
                                let mut state = state.lock().expect("fake LAPI state");
                                state.seen.push(Seen {
                                    target: request.uri().to_string(),
                                    api_key: request
                                        .headers()
                                        .get("x-api-key")
                                        .and_then(|value| value.to_str().ok())
                                        .map(str::to_owned),
                                });
                                if state.answers.len() > 1 {
                                    state.answers.remove(0)
                                } else {
                                    state.answers[0].clone()
                                }
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

    /// Answers `body` with 200 from now on.
    pub fn answer(&self, body: impl Into<Bytes>) {
        self.set(vec![Answer::Reply(StatusCode::OK, body.into())]);
    }

    /// Gives these answers in order, the last one repeating.
    pub fn set(&self, answers: Vec<Answer>) {
        assert!(!answers.is_empty(), "the fake needs an answer");
        self.state.lock().expect("fake LAPI state").answers = answers;
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("fake LAPI state").seen.clone()
    }
}
