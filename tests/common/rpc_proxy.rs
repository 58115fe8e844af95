//! Proxies between the daemon and a real anvil, to inject the faults of real
//! nodes and networks; nothing is answered in the node's place except the
//! refusals a test asks for.
//!
//! - [`RpcProxy`]: HTTP JSON-RPC. Refuses `eth_getLogs` the way hosted nodes
//!   do (a block-range limit, or a cap on the number of results), records every
//!   `eth_getLogs` range it is asked for, and can run one call on the node just
//!   before forwarding a given `eth_getLogs` (to reorganise the chain in the
//!   middle of a catch-up).
//! - [`TcpProxy`]: plain TCP (JSON-RPC over HTTP and WebSocket alike) that can
//!   be cut (every connection dropped, new ones closed at once) and restored.

use anyhow::Result;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the node refuses.
#[derive(Debug, Clone, Copy)]
pub enum Refuse {
    /// `eth_getLogs` over more than this many blocks: "query exceeds max
    /// block range N".
    RangeOver(u64),
    /// `eth_getLogs` whose answer holds more than this many logs: "query
    /// returned more than N results" (Infura's wording).
    ResultsOver(usize),
    /// Not a refusal: `eth_getLogs` by block range answers no logs at all, as
    /// a node lagging behind its own head does (or one half of a
    /// load-balanced pair); by block hash it answers truly.
    EmptyRanges,
    /// `eth_getCode` of this address fails as a node that cannot answer it
    /// now does; every other request is forwarded.
    CodeOf(alloy::primitives::Address),
    /// A JSON-RPC batch of more calls than this is refused as a whole, as
    /// geth (1000) and Erigon (100) do.
    BatchOver(usize),
    /// Every request is read and never answered (a node that hangs).
    Silent,
    /// `eth_sendRawTransaction` (alone or in a batch) is refused with this
    /// message, as a node refuses a transaction it will not take
    /// ("insufficient funds for gas * price + value").
    SendRaw(&'static str),
    /// The first transaction sent after this is set is answered as taken
    /// (its hash) and never reaches the node, every time it is sent: a node
    /// that takes a transaction and loses it (evicted from its pool). Every
    /// other transaction is forwarded.
    LoseFirstSend,
}

/// One `eth_getLogs` the proxy was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsAsked {
    pub from: u64,
    pub to: u64,
    /// The proxy answered with the refusal instead of the logs.
    pub refused: bool,
}

impl LogsAsked {
    /// Blocks in the range.
    pub fn width(&self) -> u64 {
        self.to.saturating_sub(self.from) + 1
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct RpcShared {
    upstream: String,
    refuse: Mutex<Option<Refuse>>,
    asked: Mutex<Vec<LogsAsked>>,
    /// How many `eth_getCode` were failed ([`Refuse::CodeOf`]).
    code_refused: std::sync::atomic::AtomicUsize,
    /// Sizes of the JSON-RPC batches asked, and whether each was refused.
    batches: Mutex<Vec<(usize, bool)>>,
    /// Once: when `eth_getLogs` from this block is asked, send this request to
    /// the node first.
    before_logs: Mutex<Option<(u64, Value)>>,
    /// The raw transaction [`Refuse::LoseFirstSend`] loses, once chosen.
    lost: Mutex<Option<String>>,
    /// How many times it was sent.
    lost_sends: std::sync::atomic::AtomicUsize,
    /// Every raw transaction asked to be sent, with when.
    sends: Mutex<Vec<(std::time::SystemTime, String)>>,
    client: alloy::transports::http::reqwest::Client,
}

/// The running HTTP JSON-RPC proxy; stops when dropped.
pub struct RpcProxy {
    pub port: u16,
    shared: Arc<RpcShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RpcProxy {
    /// A proxy to the node at `upstream` (an `http://` URL).
    pub async fn start(upstream: String, refuse: Option<Refuse>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(RpcShared {
            upstream,
            refuse: Mutex::new(refuse),
            asked: Mutex::new(Vec::new()),
            code_refused: Default::default(),
            batches: Mutex::new(Vec::new()),
            before_logs: Mutex::new(None),
            lost: Mutex::new(None),
            lost_sends: Default::default(),
            sends: Mutex::new(Vec::new()),
            client: alloy::transports::http::reqwest::Client::new(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, s).await;
                });
            }
        });
        Ok(Self { port, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every `eth_sendRawTransaction` asked so far (alone or in a batch):
    /// when (the wall clock, to compare with times the daemon stores), and
    /// the raw transaction.
    pub fn sends(&self) -> Vec<(std::time::SystemTime, String)> {
        lock(&self.shared.sends).clone()
    }

    /// Changes what the node refuses from now on.
    pub fn set_refuse(&self, refuse: Option<Refuse>) {
        *lock(&self.shared.refuse) = refuse;
    }

    /// How many times the transaction [`Refuse::LoseFirstSend`] loses was
    /// sent (and answered as taken).
    pub fn lost_sends(&self) -> usize {
        self.shared
            .lost_sends
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every `eth_getLogs` asked so far, in order.
    pub fn logs_asked(&self) -> Vec<LogsAsked> {
        lock(&self.shared.asked).clone()
    }

    /// How many `eth_getLogs` were refused.
    pub fn refused(&self) -> usize {
        lock(&self.shared.asked)
            .iter()
            .filter(|a| a.refused)
            .count()
    }

    /// How many `eth_getCode` requests were failed.
    pub fn code_refused(&self) -> usize {
        self.shared
            .code_refused
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every JSON-RPC batch asked so far: its size and whether it was refused.
    pub fn batches(&self) -> Vec<(usize, bool)> {
        lock(&self.shared.batches).clone()
    }

    /// The next time `eth_getLogs` from block `from` is asked, sends
    /// `method(params)` to the node first (once).
    pub fn before_logs_from(&self, from: u64, method: &str, params: Value) {
        *lock(&self.shared.before_logs) = Some((
            from,
            json!({"jsonrpc": "2.0", "id": 9_999_999, "method": method, "params": params}),
        ));
    }

    /// Whether the call given to [`Self::before_logs_from`] was made.
    pub fn before_logs_done(&self) -> bool {
        lock(&self.shared.before_logs).is_none()
    }
}

fn block_number(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

/// The block range of an `eth_getLogs` request.
fn logs_range(req: &Value) -> Option<(u64, u64)> {
    if req["method"] != "eth_getLogs" {
        return None;
    }
    let f = &req["params"][0];
    Some((block_number(&f["fromBlock"])?, block_number(&f["toBlock"])?))
}

async fn forward(s: &RpcShared, body: Vec<u8>) -> Result<Vec<u8>> {
    Ok(s.client
        .post(&s.upstream)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .bytes()
        .await?
        .to_vec())
}

fn refusal(id: &Value, message: String) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32005, "message": message}}),
    )?)
}

/// [`Refuse::LoseFirstSend`]: answers the lost transaction's sends itself
/// and forwards the rest of the request.
async fn lose_first_send(s: &RpcShared, req: Value) -> Result<Vec<u8>> {
    let (calls, batch) = match req {
        Value::Array(calls) => (calls, true),
        one => (vec![one], false),
    };
    let mut answered = Vec::new();
    let mut forwarded = Vec::new();
    for c in calls {
        let raw = (c["method"] == "eth_sendRawTransaction")
            .then(|| c["params"][0].as_str().map(str::to_owned))
            .flatten();
        let lost = raw
            .as_ref()
            .is_some_and(|r| lock(&s.lost).get_or_insert_with(|| r.clone()) == r);
        match raw {
            Some(r) if lost => {
                s.lost_sends
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let bytes = alloy::primitives::hex::decode(&r)?;
                let hash = alloy::primitives::keccak256(bytes);
                answered.push(json!({"jsonrpc": "2.0", "id": c["id"], "result": hash}));
            }
            _ => forwarded.push(c),
        }
    }
    if !forwarded.is_empty() {
        let body = if batch {
            serde_json::to_vec(&forwarded)?
        } else {
            serde_json::to_vec(&forwarded[0])?
        };
        match serde_json::from_slice::<Value>(&forward(s, body).await?)? {
            Value::Array(more) => answered.extend(more),
            one => answered.push(one),
        }
    }
    Ok(if batch {
        serde_json::to_vec(&answered)?
    } else {
        serde_json::to_vec(&answered[0])?
    })
}

/// The answer to one JSON-RPC request (or batch, forwarded as is).
async fn answer(s: &RpcShared, body: Vec<u8>) -> Result<Vec<u8>> {
    let req: Value = serde_json::from_slice(&body)?;
    {
        let now = std::time::SystemTime::now();
        let calls = req
            .as_array()
            .map_or(std::slice::from_ref(&req), Vec::as_slice);
        lock(&s.sends).extend(calls.iter().filter_map(|c| {
            (c["method"] == "eth_sendRawTransaction")
                .then(|| c["params"][0].as_str().map(|r| (now, r.to_owned())))
                .flatten()
        }));
    }
    let refuse = *lock(&s.refuse);
    if let Some(Refuse::LoseFirstSend) = refuse {
        return lose_first_send(s, req).await;
    }
    let sends = |calls: &[Value]| {
        calls
            .iter()
            .all(|c| c["method"] == "eth_sendRawTransaction")
    };
    if let (Some(Refuse::SendRaw(message)), Some(calls)) = (refuse, req.as_array())
        && sends(calls)
    {
        let out: Vec<Value> = calls
            .iter()
            .map(|c| json!({"jsonrpc": "2.0", "id": c["id"], "error": {"code": -32000, "message": message}}))
            .collect();
        return Ok(serde_json::to_vec(&out)?);
    }
    if let Some(Refuse::SendRaw(message)) = refuse
        && req["method"] == "eth_sendRawTransaction"
    {
        return Ok(serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32000, "message": message}}),
        )?);
    }
    if let Some(calls) = req.as_array() {
        let refused = matches!(refuse, Some(Refuse::BatchOver(max)) if calls.len() > max);
        lock(&s.batches).push((calls.len(), refused));
        if refused {
            return Ok(serde_json::to_vec(
                &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "batch too large"}}),
            )?);
        }
        return forward(s, body).await;
    }
    if let Some(Refuse::CodeOf(a)) = refuse
        && req["method"] == "eth_getCode"
        && req["params"][0]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case(&format!("{a:#x}")))
    {
        s.code_refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return Ok(serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32000, "message": "internal error: state unavailable"}}),
        )?);
    }
    let Some((from, to)) = logs_range(&req) else {
        return forward(s, body).await;
    };
    let first = {
        let mut hook = lock(&s.before_logs);
        match hook.as_ref() {
            Some((at, _)) if *at == from => hook.take().map(|(_, call)| call),
            _ => None,
        }
    };
    if let Some(call) = first {
        let out = forward(s, serde_json::to_vec(&call)?).await?;
        let v: Value = serde_json::from_slice(&out)?;
        anyhow::ensure!(v.get("error").is_none(), "{call} failed: {v}");
    }
    let (refused, out) = match refuse {
        Some(Refuse::RangeOver(max)) if to.saturating_sub(from) + 1 > max => (
            true,
            refusal(&req["id"], format!("query exceeds max block range {max}"))?,
        ),
        Some(Refuse::ResultsOver(max)) => {
            let out = forward(s, body).await?;
            let v: Value = serde_json::from_slice(&out)?;
            if v["result"].as_array().is_some_and(|logs| logs.len() > max) {
                (
                    true,
                    refusal(
                        &req["id"],
                        format!("query returned more than {max} results"),
                    )?,
                )
            } else {
                (false, out)
            }
        }
        Some(Refuse::EmptyRanges) => (
            false,
            serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": req["id"], "result": []}))?,
        ),
        _ => (false, forward(s, body).await?),
    };
    lock(&s.asked).push(LogsAsked { from, to, refused });
    Ok(out)
}

async fn serve(sock: TcpStream, s: Arc<RpcShared>) -> Result<()> {
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
        if matches!(*lock(&s.refuse), Some(Refuse::Silent)) {
            continue;
        }
        let out = answer(&s, body).await?;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            out.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(&out).await?;
    }
}

struct TcpShared {
    upstream: SocketAddr,
    /// Open, and the token that ends the connections of this opening.
    state: Mutex<(bool, CancellationToken)>,
    forwarded: AtomicUsize,
    closed: AtomicUsize,
}

/// The running TCP proxy; stops (and drops its connections) when dropped.
pub struct TcpProxy {
    pub port: u16,
    shared: Arc<TcpShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.shared.state).1.cancel();
    }
}

impl TcpProxy {
    /// A proxy to `127.0.0.1:port`, open.
    pub async fn start(port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let own = listener.local_addr()?.port();
        let shared = Arc::new(TcpShared {
            upstream: SocketAddr::from(([127, 0, 0, 1], port)),
            state: Mutex::new((true, CancellationToken::new())),
            forwarded: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (open, stop) = lock(&s.state).clone();
                if !open {
                    s.closed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(mut node) = TcpStream::connect(s.upstream).await else {
                        // The node is down: the client sees its connection end.
                        s.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    s.forwarded.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut node) => {}
                    }
                });
            }
        });
        Ok(Self {
            port: own,
            shared,
            task,
        })
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and closes new ones at once, until [`Self::restore`].
    pub fn cut(&self) {
        let mut st = lock(&self.shared.state);
        st.0 = false;
        st.1.cancel();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        *lock(&self.shared.state) = (true, CancellationToken::new());
    }

    /// Connections forwarded to the node so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Connections closed at once (cut, or the node down) so far.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::Relaxed)
    }
}
