//! The daemon's side of the control API (`docs/CONTROL-API.md`): accepts connections on the
//! Unix socket, checks the caller's credentials, has [`request::parse`] validate each request
//! and carries it out on the [`Engine`].

use std::{convert::Infallible, sync::Arc};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::UnixListener, sync::Mutex};
use tracing::{debug, warn};

use crate::{
    control::{Changed, ErrorBody},
    daemon::request::{self, ControlRequest, Parsed},
    engine::{Engine, EngineError},
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

/// The HTTP status of each way a request can fail.
pub fn status_of(err: &EngineError) -> StatusCode {
    match err {
        EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
        EngineError::NotFound(_) => StatusCode::NOT_FOUND,
        EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
        EngineError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        EngineError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(err: EngineError) -> Response<Full<Bytes>> {
    respond(
        status_of(&err),
        &ErrorBody {
            error: err.to_string(),
        },
    )
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
        return error(EngineError::Forbidden(format!(
            "uid {} may not use the apifw control API: it is open to root{}",
            peer.uid,
            if access.group.is_some() {
                " and members of the policy's `daemon.control_group`"
            } else {
                " only (set `daemon.control_group` in the policy to grant a group)"
            }
        )));
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return error(EngineError::bad_request(format!(
                "cannot read the request body (limit {MAX_BODY} bytes): {err}"
            )));
        }
    };
    let actor = peer.actor();
    let Parsed { verb, request } = request::parse(&method, &path, &body);
    let mut engine = engine.lock().await;
    let ok = |changed: Changed| respond(StatusCode::OK, &changed);
    let result: Result<Response<Full<Bytes>>, EngineError> =
        request.and_then(|request| match request {
            ControlRequest::Status => Ok(respond(StatusCode::OK, &engine.status())),
            ControlRequest::Stats => engine.stats().map(|view| respond(StatusCode::OK, &view)),
            ControlRequest::Top => Ok(respond(StatusCode::OK, &engine.top())),
            ControlRequest::List(kind) => Ok(respond(StatusCode::OK, &engine.list(kind))),
            ControlRequest::ListAdd { kind, nets, meta } => {
                let action = format!("{}.add", kind.as_str());
                engine
                    .list_add(kind, nets, meta, &actor, (&action, serde_json::Value::Null))
                    .map(ok)
            }
            ControlRequest::ListDel { kind, nets } => engine.list_del(kind, nets, &actor).map(ok),
            ControlRequest::Import {
                kind,
                origin,
                prefixes,
                skipped,
                meta,
                detail,
            } => engine
                .import(kind, &origin, prefixes, meta, &actor, detail)
                .map(|mut changed| {
                    changed.skipped = skipped;
                    ok(changed)
                }),
            ControlRequest::Bans => engine.bans().map(|rows| respond(StatusCode::OK, &rows)),
            ControlRequest::BanAdd {
                nets,
                ttl_secs,
                comment,
            } => engine.ban_add(nets, ttl_secs, comment, &actor).map(ok),
            ControlRequest::BanDel { nets } => engine.ban_del(nets, &actor).map(ok),
            ControlRequest::Reload => engine.reload(&actor).map(ok),
            ControlRequest::Jails => Ok(respond(StatusCode::OK, &engine.jails())),
            ControlRequest::Report {
                source,
                reason,
                weight,
                jail,
            } => engine
                .report(source, &reason, weight, jail.as_deref(), &actor)
                .map(|outcome| respond(StatusCode::OK, &outcome)),
        });
    engine.count_request(&verb, if result.is_ok() { "ok" } else { "error" });
    result.unwrap_or_else(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_failure_has_its_status() {
        let status = |err| status_of(&err).as_u16();
        assert_eq!(status(EngineError::Invalid("bad CIDR".into())), 400);
        assert_eq!(status(EngineError::Forbidden("uid 1000".into())), 403);
        assert_eq!(status(EngineError::NotFound("no route".into())), 404);
        assert_eq!(status(EngineError::Failed("disk full".into())), 500);
        assert_eq!(status(EngineError::Full("ban map full".into())), 507);
    }
}
