//! `POST /v1/{topup,withdraw,pay,remove}`: the queues' signed bodies, over
//! HTTP, answered once the request is committed.
//!
//! What the router refuses (a bad signature, malformed JSON, an unknown
//! chain or symbol, a bad amount) is answered in the HTTP response alone,
//! with a 4xx code, and nothing is stored: a caller over HTTP is told at
//! once, and no answer to a forged or broken request reaches the response
//! queues, the stream or a webhook. Everything else goes to listen through
//! the same channel and inbox as a broker delivery; the response comes
//! after the commit, with the answers that commit queued.

use super::{HttpDeps, State, answer, api_of, refuse};
use crate::health::Role;
use crate::listen::{Ack, Inbound, Receipt};
use crate::msg::{Kind, Status};
use crate::reply::Reply;
use crate::server::Routed;
use crate::store::Outcome;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::warn;

/// How long a caller waits for its request's commit before it is told to
/// send it again (harmless: the same request is applied once).
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// A caller waiting for its request's commit.
#[derive(Debug)]
struct Waiting(oneshot::Sender<Receipt>);

impl Ack for Waiting {
    fn through(self: Box<Self>, receipt: Receipt) -> futures::future::BoxFuture<'static, ()> {
        // A caller that has gone away has nothing to be told.
        let _ = self.0.send(receipt);
        Box::pin(std::future::ready(()))
    }
}

/// `POST /v1/{kind}`.
pub(super) async fn post(
    axum::extract::State(deps): State,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let api = match api_of(&deps) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(kind) = Kind::parse(&kind) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no request kind `{kind}`: topup, withdraw, pay or remove"),
        );
    };
    if let Some(r) = not_serving(&deps) {
        return r;
    }
    let request = api.router.route(kind, body.to_vec());
    match &request.routed {
        Routed::Unaddressable { reason } => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"accepted": false, "status": 0, "error": reason}),
            );
        }
        Routed::Refuse {
            outcome,
            error,
            replies,
        } => {
            let (code, status) = if *outcome == Outcome::BadSignature {
                (StatusCode::UNAUTHORIZED, Status::BadSignature as u8)
            } else {
                (StatusCode::BAD_REQUEST, Status::Failed as u8)
            };
            return answer(
                code,
                json!({"accepted": false, "status": status, "error": error, "answers": bodies(replies)}),
            );
        }
        _ => {}
    }
    let Some(listen) = deps.requests.upgrade() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    };
    let (tx, rx) = oneshot::channel();
    let inbound = Inbound {
        request,
        ack: Some(Box::new(Waiting(tx))),
    };
    if listen.send(inbound).await.is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    drop(listen);
    let receipt = match tokio::time::timeout(COMMIT_WAIT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request was not recorded (the daemon stopped); send it again",
            );
        }
        Err(_) => {
            warn!(target: "m2pool::http", %kind, "request not committed in time; the caller is told to send it again");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request is not confirmed yet; send it again (it is applied once)",
            );
        }
    };
    receipted(&receipt)
}

/// The HTTP response to a committed request: `200` for a repeat (it moved
/// nothing; its answers say where it stands), `409` when listen refused
/// it (an answer with status 0: an address not watched, a `queue_id`
/// reused with other content, payouts too far along to cancel), else `202`.
fn receipted(receipt: &Receipt) -> Response {
    let answers = bodies(&receipt.answers);
    let refusal = answers
        .iter()
        .find(|a| a["status"] == json!(Status::Failed as u8))
        .map(|a| a["error"].clone());
    let (code, accepted) = match (&refusal, receipt.repeat) {
        (_, true) => (StatusCode::OK, true),
        (Some(_), false) => (StatusCode::CONFLICT, false),
        (None, false) => (StatusCode::ACCEPTED, true),
    };
    let mut body = json!({"accepted": accepted, "repeat": receipt.repeat, "answers": answers});
    if let (Some(error), false) = (refusal, accepted) {
        body["status"] = json!(Status::Failed as u8);
        body["error"] = error;
    }
    answer(code, body)
}

/// The answers as JSON values.
fn bodies(replies: &[Reply]) -> Vec<Value> {
    replies
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

/// `503` while this instance is a standby: its listen does not run.
fn not_serving(deps: &HttpDeps) -> Option<Response> {
    let snap = deps.health.snapshot();
    (snap.role == Role::Standby).then(|| {
        super::answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": "this instance is a standby; send requests to the active one",
                "active": snap.lease.holder,
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u8, error: Option<&str>) -> Reply {
        Reply {
            kind: "remove_resp",
            body: serde_json::to_vec(&json!({"status": status, "error": error})).expect("json"),
            line: None,
        }
    }

    async fn decoded(r: Response) -> (StatusCode, Value) {
        let code = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn a_receipt_decides_the_code() {
        let new = Receipt {
            repeat: false,
            answers: vec![],
        };
        let (code, body) = decoded(receipted(&new)).await;
        assert_eq!(
            (code, body["accepted"].clone()),
            (StatusCode::ACCEPTED, json!(true))
        );

        let refused = Receipt {
            repeat: false,
            answers: vec![reply(0, Some("address is not watched for ETH USDT"))],
        };
        let (code, body) = decoded(receipted(&refused)).await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(body["status"], json!(0));
        assert_eq!(body["error"], json!("address is not watched for ETH USDT"));

        // A repeat moved nothing, whatever its answers say.
        let repeat = Receipt {
            repeat: true,
            answers: vec![reply(0, Some("failed before")), reply(1, None)],
        };
        let (code, body) = decoded(receipted(&repeat)).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["repeat"], json!(true));
        assert_eq!(body["answers"].as_array().map(Vec::len), Some(2));

        let done = Receipt {
            repeat: false,
            answers: vec![reply(1, None)],
        };
        assert_eq!(decoded(receipted(&done)).await.0, StatusCode::ACCEPTED);
    }
}
