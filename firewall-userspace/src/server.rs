//! The daemon's side of the control API (`docs/CONTROL-API.md`): accepts connections on the
//! Unix socket, checks the caller's credentials, routes requests to the [`Engine`].

use std::{convert::Infallible, sync::Arc};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{net::UnixListener, sync::Mutex};
use tracing::{debug, warn};

use crate::{
    control::{API_PREFIX, BanAdd, ErrorBody, Import, ListAdd, Targets},
    engine::{ApiError, Engine, EntryMeta, parse_targets},
    feeds,
    state::ListKind,
};

/// Largest request body: an import of a few million lines.
const MAX_BODY: usize = 512 << 20;

/// Who may use the control API besides root.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// Members of this group (primary or supplementary) are allowed.
    pub group: Option<u32>,
}

/// The caller of one connection.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl Peer {
    fn actor(&self) -> String {
        match self.pid {
            Some(pid) => format!("uid {} (pid {pid})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Whether `peer` is root or a member of the control group. Supplementary groups come from
/// `/proc/<pid>/status`, as SO_PEERCRED carries only the primary group.
fn allowed(peer: &Peer, access: Access) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let Some(group) = access.group else {
        return false;
    };
    if peer.gid == group {
        return true;
    }
    let Some(pid) = peer.pid else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Groups:").map(str::to_owned))
        })
        .is_some_and(|groups| {
            groups
                .split_whitespace()
                .any(|gid| gid.parse() == Ok(group))
        })
}

/// Serves the control API on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>, access: Access) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            Err(err) => {
                warn!(%err, "cannot read the control client's credentials; refusing it");
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let engine = engine.clone();
                async move { Ok::<_, Infallible>(handle(request, peer, access, engine).await) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%err, "control connection ended with an error");
            }
        });
    }
}

fn respond<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|err| {
        format!("{{\"error\":\"cannot encode the answer: {err}\"}}").into_bytes()
    });
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str("application/json") {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn error(err: ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, &ErrorBody { error: err.message })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))
}

async fn handle(
    request: Request<Incoming>,
    peer: Peer,
    access: Access,
    engine: Arc<Mutex<Engine>>,
) -> Response<Full<Bytes>> {
    if !allowed(&peer, access) {
        warn!(uid = peer.uid, "control request refused");
        engine.lock().await.count_request("any", "refused");
        return error(ApiError {
            status: 403,
            message: format!(
                "uid {} may not use the apifw control API: it is open to root{}",
                peer.uid,
                if access.group.is_some() {
                    " and members of the policy's `daemon.control_group`"
                } else {
                    " only (set `daemon.control_group` in the policy to grant a group)"
                }
            ),
        });
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return error(ApiError::bad_request(format!(
                "cannot read the request body (limit {MAX_BODY} bytes): {err}"
            )));
        }
    };
    let Some(route) = path.strip_prefix(API_PREFIX) else {
        return error(ApiError {
            status: 404,
            message: format!("unknown path {path}: this daemon speaks the {API_PREFIX} API"),
        });
    };
    let actor = peer.actor();
    let mut engine = engine.lock().await;
    let list_kind = |name: &str| match name {
        "block" => Some(ListKind::Block),
        "allow" => Some(ListKind::Allow),
        _ => None,
    };
    let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
    let verb = match segments.as_slice() {
        ["lists", list] => format!("{list}.list"),
        ["lists", list, action] => format!("{list}.{action}"),
        ["bans"] => "ban.list".to_owned(),
        ["bans", action] => format!("ban.{action}"),
        [one] => (*one).to_owned(),
        _ => "unknown".to_owned(),
    };
    let verb = if verb.len() > 32 || !verb.chars().all(|c| c.is_ascii_lowercase() || c == '.') {
        "unknown".to_owned()
    } else {
        verb
    };
    let result: Result<Response<Full<Bytes>>, ApiError> = match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => Ok(respond(StatusCode::OK, &engine.status())),
        (&Method::GET, ["stats"]) => engine.stats().map(|view| respond(StatusCode::OK, &view)),
        (&Method::GET, ["top"]) => Ok(respond(StatusCode::OK, &engine.top())),
        (&Method::GET, ["lists", list]) if list_kind(list).is_some() => Ok(respond(
            StatusCode::OK,
            &engine.list(list_kind(list).unwrap_or(ListKind::Block)),
        )),
        (&Method::POST, ["lists", list, "add"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            parse::<ListAdd>(&body).and_then(|add| {
                let nets = parse_targets(&add.cidrs)?;
                let meta = EntryMeta {
                    ttl_secs: add.ttl_secs,
                    comment: add.comment,
                };
                let action = format!("{}.add", kind.as_str());
                engine
                    .list_add(kind, nets, meta, &actor, (&action, serde_json::Value::Null))
                    .map(|changed| respond(StatusCode::OK, &changed))
            })
        }
        (&Method::POST, ["lists", list, "del"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            parse::<Targets>(&body).and_then(|targets| {
                let nets = parse_targets(&targets.cidrs)?;
                engine
                    .list_del(kind, nets, &actor)
                    .map(|changed| respond(StatusCode::OK, &changed))
            })
        }
        (&Method::POST, ["lists", list, "import"]) if list_kind(list).is_some() => {
            let kind = list_kind(list).unwrap_or(ListKind::Block);
            parse::<Import>(&body).and_then(|import| {
                let parsed = feeds::parse(&import.content, import.format);
                let origin = std::path::Path::new(&import.origin);
                let bad: Vec<String> = parsed
                    .bad_lines
                    .iter()
                    .map(|line| line.describe(origin))
                    .collect();
                if !bad.is_empty() && !import.skip_bad_lines {
                    let shown: Vec<String> = bad.iter().take(20).cloned().collect();
                    return Err(ApiError::bad_request(format!(
                        "{} bad line(s) in {}; nothing was imported (pass --skip-bad-lines to \
                         import the rest):\n{}",
                        bad.len(),
                        import.origin,
                        shown.join("\n")
                    )));
                }
                if parsed.prefixes.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{} holds no addresses or CIDRs; nothing was imported",
                        import.origin
                    )));
                }
                let detail = serde_json::json!({
                    "file": import.origin, "format": import.format, "skipped_lines": bad.len(),
                });
                let meta = EntryMeta {
                    ttl_secs: import.ttl_secs,
                    comment: import.comment,
                };
                engine
                    .import(kind, &import.origin, parsed.prefixes, meta, &actor, detail)
                    .map(|mut changed| {
                        changed.skipped = bad;
                        respond(StatusCode::OK, &changed)
                    })
            })
        }
        (&Method::GET, ["bans"]) => engine.bans().map(|rows| respond(StatusCode::OK, &rows)),
        (&Method::POST, ["bans", "add"]) => parse::<BanAdd>(&body).and_then(|ban| {
            let nets = parse_targets(&ban.cidrs)?;
            engine
                .ban_add(nets, ban.ttl_secs, ban.comment, &actor)
                .map(|changed| respond(StatusCode::OK, &changed))
        }),
        (&Method::POST, ["bans", "del"]) => parse::<Targets>(&body).and_then(|targets| {
            let nets = parse_targets(&targets.cidrs)?;
            engine
                .ban_del(nets, &actor)
                .map(|changed| respond(StatusCode::OK, &changed))
        }),
        (&Method::POST, ["reload"]) => engine
            .reload(&actor)
            .map(|changed| respond(StatusCode::OK, &changed)),
        _ => Err(ApiError {
            status: 404,
            message: format!("no such request: {method} {path} (see docs/CONTROL-API.md)"),
        }),
    };
    engine.count_request(&verb, if result.is_ok() { "ok" } else { "error" });
    result.unwrap_or_else(error)
}
