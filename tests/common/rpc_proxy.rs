//! A JSON-RPC proxy in front of a real node that refuses `eth_getLogs` over
//! more than `max_range` blocks, as many hosted nodes do. Everything else is
//! forwarded unchanged.

use anyhow::Result;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The running proxy; stops when dropped.
pub struct RangeLimitProxy {
    pub port: u16,
    /// How many `eth_getLogs` it refused.
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RangeLimitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RangeLimitProxy {
    pub async fn start(upstream: String, max_range: u64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let refused = Arc::new(AtomicUsize::new(0));
        let client = alloy::transports::http::reqwest::Client::new();
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (client, upstream, counter) =
                    (client.clone(), upstream.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, client, upstream, max_range, counter).await;
                });
            }
        });
        Ok(Self {
            port,
            refused,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn block_number(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

fn too_wide(req: &Value, max_range: u64) -> bool {
    if req["method"] != "eth_getLogs" {
        return false;
    }
    let f = &req["params"][0];
    match (block_number(&f["fromBlock"]), block_number(&f["toBlock"])) {
        (Some(a), Some(b)) => b.saturating_sub(a) + 1 > max_range,
        _ => false,
    }
}

async fn serve(
    sock: TcpStream,
    client: alloy::transports::http::reqwest::Client,
    upstream: String,
    max_range: u64,
    refused: Arc<AtomicUsize>,
) -> Result<()> {
    let (read, mut write) = sock.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        let req: Value = serde_json::from_slice(&body)?;
        let answer = if !req.is_array() && too_wide(&req, max_range) {
            refused.fetch_add(1, Ordering::Relaxed);
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": req["id"],
                "error": {"code": -32005, "message": format!("query exceeds max block range {max_range}")}}))?
        } else {
            client
                .post(&upstream)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
                .bytes()
                .await?
                .to_vec()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(&answer).await?;
    }
}
