//! The queue API: HTTP on loopback (`admin.queueApiAddress`), JSON in and out. Every request
//! but the reads needs an `X-Mailroom-Actor` header naming who asks (a browser cannot send it
//! across origins without asking first), and every request is logged with it. The routes are
//! listed in docs/operations.md "Day two".

use super::{ACTOR_HEADER, ErrorBody};
use crate::{
    metrics::Metrics,
    queue::control::{Command, Control, Detail, Done, Filter, Refusal, parse_id},
    spool::{Spool, quarantine::ReleaseError},
};
use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, Uri, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;

#[derive(Clone)]
struct Api {
    control: Control,
    spool: Spool,
    metrics: Metrics,
}

/// The queue API's routes.
pub fn router(control: Control, spool: Spool, metrics: Metrics) -> Router {
    Router::new()
        .route("/v1/queue", get(list))
        .route("/v1/queue/flush", post(flush))
        .route("/v1/queue/{id}", get(show).delete(delete))
        .route("/v1/queue/{id}/status", get(status))
        .route("/v1/queue/{id}/{action}", post(act))
        .route("/v1/quarantine", get(quarantine_list))
        .route("/v1/quarantine/{id}/release", post(quarantine_release))
        .with_state(Api {
            control,
            spool,
            metrics,
        })
}

/// Serves the queue API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Control,
    spool: Spool,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(control, spool, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (status, [(CONTENT_TYPE, "application/json")], text).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

fn bad_id(id: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("{id:?} is not a message id (16 hex digits)"),
    )
}

fn stopped() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is not running (the sidecar is stopping)",
    )
}

/// Who asks, as the header says (printable ASCII, bounded), for mutations and the log.
fn actor(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(ACTOR_HEADER)?.to_str().ok()?.trim();
    let ok = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| (0x20..0x7f).contains(&b));
    ok.then(|| value.to_owned())
}

fn no_actor() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("the {ACTOR_HEADER} header (who asks, printable ASCII) is required for a change"),
    )
}

/// The query parameter `name`, if given (values are plain words and domains: no decoding).
fn query<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn refusal(r: &Refusal) -> Response {
    let status = match r {
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::Busy(_) | Refusal::Held(_) => StatusCode::CONFLICT,
        Refusal::OtherRoute { .. } => StatusCode::BAD_REQUEST,
        Refusal::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, r.to_string())
}

/// Counts and logs one mutation's outcome.
fn record(api: &Api, action: &str, target: &str, actor: &str, outcome: Result<&str, &str>) {
    let result = if outcome.is_ok() { "ok" } else { "refused" };
    api.metrics.queue_admin.with_label_values(&[action, result]).inc();
    match outcome {
        Ok(what) => tracing::info!(action, target, actor, result = what, "queue: change made"),
        Err(why) => tracing::warn!(action, target, actor, error = why, "queue: change refused"),
    }
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Response {
    let who = actor(&headers).unwrap_or_else(|| "anonymous".into());
    match api.control.ask(Command::List).await {
        Ok(rows) => {
            tracing::debug!(actor = %who, messages = rows.len(), "queue: listed");
            json(StatusCode::OK, &rows)
        }
        Err(_) => stopped(),
    }
}

async fn show(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(mid) = parse_id(&id) else {
        return bad_id(&id);
    };
    let who = actor(&headers).unwrap_or_else(|| "anonymous".into());
    let found = match api.control.ask(|r| Command::Get(mid, r)).await {
        Ok(found) => found,
        Err(_) => return stopped(),
    };
    let Some((row, meta)) = found else {
        return refusal(&Refusal::NotFound(mid.to_string()));
    };
    let bytes = api.spool.read(mid).await.unwrap_or_default();
    let split = memchr::memmem::find(&bytes, b"\r\n\r\n").map_or(bytes.len(), |at| at + 2);
    let with_body = query(&uri, "body") == Some("true");
    tracing::info!(actor = %who, message_id = %mid, body = with_body, "queue: message shown");
    let env = &meta.envelope;
    let detail = Detail {
        row,
        sender: env.sender.clone(),
        recipient_list: env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, a)| crate::queue::control::RcptRow {
                address: a.clone(),
                done: meta.done.contains(&(i as u32)),
                notify: env.dsn.rcpt(i).notify.map(|n| n.to_param()),
            })
            .collect(),
        signed: meta.signature.as_deref().is_some_and(|s| !s.is_empty()),
        headers: String::from_utf8_lossy(&bytes[..split]).into_owned(),
        body: with_body
            .then(|| String::from_utf8_lossy(bytes.get(split + 2..).unwrap_or_default()).into_owned()),
    };
    json(StatusCode::OK, &detail)
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Some(mid) = parse_id(&id) else {
        return bad_id(&id);
    };
    match api.control.ask(|r| Command::Status(mid, r)).await {
        Ok(Some(s)) => json(StatusCode::OK, &s),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no message {mid} in the queue, nor among the last that left it"),
        ),
        Err(_) => stopped(),
    }
}

async fn flush(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(who) = actor(&headers) else {
        return no_actor();
    };
    let filter = Filter {
        domain: query(&uri, "domain").map(str::to_owned),
        route: query(&uri, "route").map(str::to_owned),
    };
    let target = match (&filter.domain, &filter.route) {
        (Some(d), _) => format!("domain={d}"),
        (None, Some(r)) => format!("route={r}"),
        (None, None) => "all".into(),
    };
    match api.control.ask(|r| Command::Flush(filter, r)).await {
        Ok(Ok(f)) => {
            let what = format!("flushed={} held={} unparked={}", f.flushed, f.held, f.unparked);
            record(&api, "flush", &target, &who, Ok(&what));
            json(StatusCode::OK, &f)
        }
        Ok(Err(e)) => {
            record(&api, "flush", &target, &who, Err(&e.to_string()));
            refusal(&e)
        }
        Err(_) => stopped(),
    }
}

async fn act(
    State(api): State<Api>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = actor(&headers) else {
        return no_actor();
    };
    let Some(mid) = parse_id(&id) else {
        return bad_id(&id);
    };
    let (action, answer) = match action.as_str() {
        "retry" => ("retry", api.control.ask(|r| Command::Retry(mid, r)).await),
        "hold" => ("hold", api.control.ask(|r| Command::Hold(mid, r)).await),
        "release" => ("release", api.control.ask(|r| Command::Release(mid, r)).await),
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: use retry, hold or release"),
            );
        }
    };
    mutation(&api, action, &mid.to_string(), &who, answer)
}

fn mutation(
    api: &Api,
    action: &str,
    target: &str,
    who: &str,
    answer: Result<Result<Done, Refusal>, crate::queue::control::Stopped>,
) -> Response {
    match answer {
        Ok(Ok(done)) => {
            record(api, action, target, who, Ok(&done.result));
            json(StatusCode::OK, &done)
        }
        Ok(Err(e)) => {
            record(api, action, target, who, Err(&e.to_string()));
            refusal(&e)
        }
        Err(_) => stopped(),
    }
}

async fn delete(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(who) = actor(&headers) else {
        return no_actor();
    };
    let Some(mid) = parse_id(&id) else {
        return bad_id(&id);
    };
    // Stated, never assumed: whether the sender hears about it is the caller's decision.
    let bounce = match query(&uri, "bounce") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "say whether the sender gets a failure notice: bounce=true or bounce=false",
            );
        }
    };
    let action = if bounce { "delete_bounce" } else { "delete_silent" };
    let answer = api
        .control
        .ask(|reply| Command::Delete {
            id: mid,
            bounce,
            reply,
        })
        .await;
    mutation(&api, action, &mid.to_string(), &who, answer)
}

async fn quarantine_list(State(api): State<Api>) -> Response {
    match api.spool.quarantined() {
        Ok(list) => json(StatusCode::OK, &list),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot list the quarantine: {e}"),
        ),
    }
}

async fn quarantine_release(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(who) = actor(&headers) else {
        return no_actor();
    };
    match api.spool.release_quarantined(&id).await {
        Ok(new) => {
            let done = Done {
                id: id.clone(),
                result: format!("queued again as {new}"),
            };
            record(&api, "quarantine_release", &id, &who, Ok(&done.result));
            json(StatusCode::OK, &done)
        }
        Err(e) => {
            record(&api, "quarantine_release", &id, &who, Err(&e.to_string()));
            let status = match e {
                ReleaseError::NotFound(_) => StatusCode::NOT_FOUND,
                ReleaseError::NoEnvelope(_) | ReleaseError::Incomplete { .. } => StatusCode::CONFLICT,
                ReleaseError::Io(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, e.to_string())
        }
    }
}
