//! The HTTP API from a test: signed requests posted, reads with the token,
//! the WebSocket stream.

use super::WAIT;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// The token every API test uses.
pub const TOKEN: &str = "test-api-token-0123456789";

/// A config edit that serves the API on `port`, its token in a file in
/// `dir`.
pub fn with_api(port: u16, dir: &std::path::Path) -> Result<impl FnOnce(&mut Value) + use<>> {
    let file = dir.join("api-token");
    std::fs::write(&file, format!("{TOKEN}\n"))?;
    Ok(move |c: &mut Value| {
        c["http_config"] = json!({
            "listen": format!("127.0.0.1:{port}"),
            "api": true,
            "api_token_file": file,
        });
    })
}

/// A world serving the API on a free port (its token in a file of the
/// returned directory), with `webhooks` as `http_config.webhooks` unless
/// null, and a client of it.
pub async fn api_world(
    test: &str,
    webhooks: Value,
) -> Result<(super::World, Api, tempfile::TempDir)> {
    let port = super::http::free_port()?;
    let dir = tempfile::tempdir()?;
    let api = with_api(port, dir.path())?;
    let w = super::World::with(test, &[], move |c: &mut Value| {
        api(c);
        if !webhooks.is_null() {
            c["http_config"]["webhooks"] = webhooks;
        }
    })
    .await?;
    Ok((w, Api::new(port), dir))
}

/// An HTTP client of the API on `port`.
pub struct Api {
    port: u16,
    client: reqwest::Client,
}

impl Api {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Posts `body` to `/v1/{kind}`: the status and the JSON answer.
    pub async fn post(&self, kind: &str, body: Vec<u8>) -> Result<(u16, Value)> {
        let r = self
            .client
            .post(self.url(&format!("/v1/{kind}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// `GET path` with `token` (none when `None`).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> Result<(u16, Value)> {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Waits until the daemon is active and its API answers (a standby
    /// answers requests with 503, reads already).
    pub async fn wait_up(&self) -> Result<()> {
        super::eventually("the API answers, active", || async {
            let active = self
                .get_as("/healthz", None)
                .await
                .is_ok_and(|(_, health)| health["role"] == "active");
            Ok(active
                && self
                    .get("/v1/watches/0x0000000000000000000000000000000000000001")
                    .await
                    .is_ok_and(|(s, _)| s == 200))
        })
        .await
    }

    /// `GET path` with the token.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        self.get_as(path, Some(TOKEN)).await
    }

    /// Opens `/v1/stream` (after `after`, when given).
    pub async fn stream(&self, after: Option<i64>) -> Result<Stream> {
        let path = match after {
            Some(a) => format!("/v1/stream?after={a}"),
            None => "/v1/stream".to_owned(),
        };
        let mut req = format!("ws://127.0.0.1:{}{path}", self.port).into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Stream {
            ws,
            seen: Vec::new(),
        })
    }

    /// Opens `/v1/stream` with `authorization` as given; the HTTP status
    /// of a refusal.
    pub async fn stream_refused(&self, authorization: Option<&str>) -> Result<u16> {
        let mut req = format!("ws://127.0.0.1:{}/v1/stream", self.port).into_client_request()?;
        if let Some(a) = authorization {
            req.headers_mut().insert("authorization", a.parse()?);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => bail!("the stream opened"),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Ok(r.status().as_u16()),
            Err(e) => Err(e.into()),
        }
    }
}

/// One answer from the stream.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Stream position.
    pub id: i64,
    /// Response kind.
    pub kind: String,
    /// The answer.
    pub answer: Value,
}

/// An open stream, with every answer read so far.
pub struct Stream {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub seen: Vec<Pushed>,
}

impl Stream {
    /// The next answer, within the test wait.
    pub async fn next(&mut self) -> Result<Pushed> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("no answer on the stream in time")?
                .context("the stream closed")??;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text)?;
            let p = Pushed {
                id: v["id"].as_i64().context("id")?,
                kind: v["kind"].as_str().context("kind")?.to_owned(),
                answer: v["answer"].clone(),
            };
            self.seen.push(p.clone());
            return Ok(p);
        }
    }

    /// Reads until an answer matches `pred` (within the test wait each).
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&Pushed) -> bool) -> Result<Pushed> {
        if let Some(p) = self.seen.iter().find(|p| pred(p)) {
            return Ok(p.clone());
        }
        loop {
            let p = self.next().await.with_context(|| {
                format!("waiting on the stream for {what}; seen {:?}", self.seen)
            })?;
            if pred(&p) {
                return Ok(p);
            }
        }
    }

    /// Closes it.
    pub async fn close(mut self) -> Result<Vec<Pushed>> {
        let _ = self.ws.close(None).await;
        Ok(self.seen)
    }
}
