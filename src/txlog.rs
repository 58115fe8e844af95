//! Per-address transaction logs, as the Go version writes them.
//!
//! One file per address under the logs folder, a line per request and response
//! in the form `[Type]: time-from-to-chain-symbol-amount` (time in UTC; amounts
//! as Go's `%f` writes them, six decimals, but exact: more decimals when the
//! amount has them), plus `ethnode.log` for chain events. A file that passes
//! 1 MiB is renamed to `{address}_{YYYYMMDD_HHMMSS}.log` at once (so no line is
//! lost or reordered: later lines go to a fresh file) and compressed to
//! `.log.gz` by a background thread. A rotated file a crash left uncompressed
//! is compressed at the next start. Open files are bounded by a
//! least-recently-used set, so a million addresses do not exhaust descriptors.
//!
//! Writers send lines through a bounded channel to one writer thread, the only
//! owner of the files, which runs on idle CPU only; a catch-up thread at
//! normal priority writes in its place while it is far behind
//! ([`catchup`]). Rotated files go to one compressor thread.

mod catchup;

use flate2::Compression;
use flate2::write::GzEncoder;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::warn;

/// Lines waiting for the writer. Creating a file per new address is the
/// writer's slowest step; a deep queue lets a burst of requests (25 s at
/// 10,000 a second) pass without the listen task ever waiting on the logs.
const QUEUE: usize = 1 << 18;

/// When the catch-up thread writes in the writer's place: from a quarter
/// of the queue waiting down to a sixty-fourth, looked at ten times a second.
const MARKS: catchup::Marks = catchup::Marks {
    high: QUEUE / 4,
    low: QUEUE / 64,
    every: std::time::Duration::from_millis(100),
};

/// Size at which a file is rotated.
pub const ROTATE_AT: u64 = 1 << 20;
/// The chain events file.
pub const NODE_FILE: &str = "ethnode";

/// `2006-01-02 15:04:05` (UTC) and `20060102_150405` of `t`.
fn timestamps(t: SystemTime) -> (String, String) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let [y, m, d, h, mi, s] = crate::clock::civil(secs);
    (
        format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        format!("{y:04}{m:02}{d:02}_{h:02}{mi:02}{s:02}"),
    )
}

/// One line of a transaction log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// File stem: the address (lower case), or [`NODE_FILE`].
    pub file: String,
    /// `TopupReq`, `WithdrawResp`, …
    pub kind: String,
    /// Sender (may be empty).
    pub from: String,
    /// Recipient or watched address.
    pub to: String,
    /// Chain.
    pub chain: String,
    /// Symbol.
    pub symbol: String,
    /// Exact amount text.
    pub amount: String,
}

impl Line {
    /// The line as the outbox keeps it: its fields joined by tabs (none of
    /// them holds a tab: addresses, names and number text).
    pub fn to_stored(&self) -> String {
        [
            &self.file,
            &self.kind,
            &self.from,
            &self.to,
            &self.chain,
            &self.symbol,
            &self.amount,
        ]
        .map(String::as_str)
        .join("\t")
    }

    /// A line read back from [`Line::to_stored`]; `None` if it is not one.
    pub fn from_stored(text: &str) -> Option<Self> {
        let mut f = text.split('\t').map(str::to_owned);
        let line = Line {
            file: f.next()?,
            kind: f.next()?,
            from: f.next()?,
            to: f.next()?,
            chain: f.next()?,
            symbol: f.next()?,
            amount: f.next()?,
        };
        f.next().is_none().then_some(line)
    }

    fn render(&self, now: SystemTime) -> String {
        let (time, _) = timestamps(now);
        format!(
            "[{}]: {}-{}-{}-{}-{}-{}\n",
            self.kind, time, self.from, self.to, self.chain, self.symbol, self.amount
        )
    }
}

/// Sends lines to the writer; cheap to clone. A handle made with
/// [`TxLog::disabled`] drops everything.
#[derive(Debug, Clone)]
pub struct TxLog {
    tx: Option<mpsc::Sender<Line>>,
}

/// What the writer thread reports, for tests and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Files open now.
    pub open: AtomicUsize,
    /// Most files ever open at once.
    pub max_open: AtomicUsize,
    /// Rotations started.
    pub rotations: AtomicUsize,
    /// Compressions finished.
    pub compressed: AtomicUsize,
    /// Lines written.
    pub written: AtomicUsize,
    /// Lines the catch-up thread wrote while the writer was far behind.
    pub caught_up: AtomicUsize,
}

/// `exact` (a decimal text) as the Go version's `%f` wrote amounts: at least
/// six decimals (`100.5` → `100.500000`), and every decimal it has beyond
/// those (`0.123456789`), so nothing is rounded.
pub fn go_amount(exact: &str) -> String {
    let decimals = exact.split_once('.').map_or(0, |(_, f)| f.len());
    match decimals {
        0 => format!("{exact}.000000"),
        d if d < 6 => format!("{exact}{:0<width$}", "", width = 6 - d),
        _ => exact.to_owned(),
    }
}

impl TxLog {
    /// A log that writes nothing.
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Starts the writer thread for `dir`, keeping at most `max_open` files open.
    pub fn start(
        dir: &Path,
        max_open: usize,
    ) -> io::Result<(Self, Arc<WriterStats>, std::thread::JoinHandle<()>)> {
        let stats = Arc::new(WriterStats::default());
        let writer = Writer::open(dir, max_open, stats.clone())?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let queue = tx.downgrade();
        let handle = std::thread::Builder::new()
            .name("txlog".into())
            .spawn(move || {
                let handover = Arc::new(catchup::Handover::new(catchup::Shared { rx, writer }));
                // Spawned before this thread lowers itself, which it would
                // inherit.
                let helper = {
                    let handover = handover.clone();
                    std::thread::Builder::new()
                        .name("txlog-catchup".into())
                        .spawn(move || {
                            set_nice(10);
                            handover.watch(&queue, QUEUE, MARKS);
                        })
                };
                if let Err(e) = &helper {
                    warn!(target: "m2pool::txlog", error = %e, "no catch-up thread; the log writer runs on idle CPU alone");
                }
                lower_priority();
                handover.write_all();
                if let Ok(helper) = helper {
                    helper.thread().unpark();
                    let _ = helper.join();
                }
                match Arc::try_unwrap(handover) {
                    Ok(handover) => handover.into_writer().finish(),
                    Err(_) => {
                        warn!(target: "m2pool::txlog", "the catch-up thread still holds the log files; rotated files may be left uncompressed until the next start");
                    }
                }
            })?;
        Ok((Self { tx: Some(tx) }, stats, handle))
    }

    /// Queues a line (waiting if the writer is behind; lines are never dropped
    /// while the writer runs).
    pub async fn write(&self, line: Line) {
        if let Some(tx) = &self.tx
            && tx.send(line).await.is_err()
        {
            warn!(target: "m2pool::txlog", "transaction log writer has stopped; line not written");
        }
    }
}

struct OpenFile {
    file: File,
    size: u64,
    used: u64,
}

struct Writer {
    dir: PathBuf,
    max_open: usize,
    open: HashMap<String, OpenFile>,
    tick: u64,
    stats: Arc<WriterStats>,
    /// Rotated files go to the compressor thread here.
    compress: std::sync::mpsc::Sender<PathBuf>,
    compressor: std::thread::JoinHandle<()>,
}

impl Writer {
    /// The files of `dir` (made if missing), with the compressor thread
    /// started and given the rotated files a crash left plain.
    fn open(dir: &Path, max_open: usize, stats: Arc<WriterStats>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (compress_tx, compress_rx) = std::sync::mpsc::channel::<PathBuf>();
        let compressor = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("txlog-gzip".into())
                .spawn(move || {
                    lower_priority();
                    for plain in compress_rx {
                        match compress(&plain) {
                            Ok(()) => {
                                stats.compressed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                warn!(target: "m2pool::txlog", file = %plain.display(), error = %e,
                                      "cannot compress rotated log; it stays as it is");
                            }
                        }
                    }
                })?
        };
        for plain in leftovers(dir)? {
            let _ = compress_tx.send(plain);
        }
        Ok(Writer {
            dir: dir.to_owned(),
            max_open: max_open.max(1),
            open: HashMap::new(),
            tick: 0,
            stats,
            compress: compress_tx,
            compressor,
        })
    }

    /// Writes one line; a failure is logged and the line is lost.
    fn write_logged(&mut self, line: &Line) {
        if let Err(e) = self.write(line) {
            warn!(target: "m2pool::txlog", file = %line.file, error = %e, "cannot write transaction log");
        }
    }

    /// Flushes the open files and waits for the compressor to finish what
    /// it was given.
    fn finish(mut self) {
        for (_, mut f) in self.open.drain() {
            let _ = f.file.flush();
        }
        drop(self.compress);
        let _ = self.compressor.join();
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.log"))
    }

    fn write(&mut self, line: &Line) -> io::Result<()> {
        self.tick += 1;
        if !self.open.contains_key(&line.file) {
            if self.open.len() >= self.max_open {
                // Close the least recently used file.
                if let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, f)| f.used)
                    .map(|(k, _)| k.clone())
                {
                    self.open.remove(&oldest);
                }
            }
            let path = self.path(&line.file);
            // Most files are new (an address seen for the first time): create
            // it, and only for one that exists ask how big it is.
            let (file, size) = match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(f) => (f, 0),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let f = OpenOptions::new().append(true).open(&path)?;
                    let size = f.metadata()?.len();
                    (f, size)
                }
                Err(e) => return Err(e),
            };
            self.open.insert(
                line.file.clone(),
                OpenFile {
                    file,
                    size,
                    used: 0,
                },
            );
        }
        let open_now = self.open.len();
        self.stats.open.store(open_now, Ordering::Relaxed);
        self.stats.max_open.fetch_max(open_now, Ordering::Relaxed);
        let now = SystemTime::now();
        let text = line.render(now);
        let tick = self.tick;
        let rotate = {
            let f = self
                .open
                .get_mut(&line.file)
                .ok_or_else(|| io::Error::other("file vanished"))?;
            f.file.write_all(text.as_bytes())?;
            self.stats.written.fetch_add(1, Ordering::Relaxed);
            f.size += text.len() as u64;
            f.used = tick;
            f.size >= ROTATE_AT
        };
        if rotate {
            self.open.remove(&line.file);
            self.stats.open.store(self.open.len(), Ordering::Relaxed);
            let (_, stamp) = timestamps(now);
            let mut target = self.dir.join(format!("{}_{stamp}.log", line.file));
            let mut n = 1;
            while target.exists() || target.with_extension("log.gz").exists() {
                target = self.dir.join(format!("{}_{stamp}_{n}.log", line.file));
                n += 1;
            }
            std::fs::rename(self.path(&line.file), &target)?;
            self.stats.rotations.fetch_add(1, Ordering::Relaxed);
            if self.compress.send(target).is_err() {
                warn!(target: "m2pool::txlog", file = %line.file, "the compressor has stopped; rotated log left plain");
            }
        }
        Ok(())
    }
}

/// Rotated files a crash left behind: `{stem}_{stamp}.log` not yet
/// compressed (returned, oldest first), and half-written `.log.gz.tmp` files
/// (removed; their plain file is still there).
fn leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut plain = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".log.gz.tmp") {
            std::fs::remove_file(&path)?;
        } else if let Some(stem) = name.strip_suffix(".log")
            // Live files are named by an address or `ethnode`: no `_`.
            && stem.contains('_')
        {
            plain.push(path);
        }
    }
    plain.sort();
    Ok(plain)
}

/// The fields of a response that its log line needs; `amount` as its exact
/// JSON text (a float would round an 18-decimal amount).
#[derive(serde::Deserialize)]
struct ResponseFields<'a> {
    #[serde(borrow, default)]
    address: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    from_address: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    to_address: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    chain: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    symbol: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    amount: Option<&'a serde_json::value::RawValue>,
}

/// The line a published response writes (none for a dead letter or a body
/// that does not name an address). The amount is the response's own number
/// text, never passed through a float.
pub fn response_line(kind: &str, body: &[u8]) -> Option<Line> {
    let v: ResponseFields<'_> = serde_json::from_slice(body).ok()?;
    let s = |f: &Option<std::borrow::Cow<'_, str>>| f.as_deref().unwrap_or_default().to_owned();
    let amount = match v.amount.map(|a| a.get().trim()) {
        Some(n) if n.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => go_amount(n),
        _ => "0".into(),
    };
    let (name, from, to, file) = match kind {
        "topup_resp" => (
            "TopupResp",
            s(&v.from_address),
            s(&v.address),
            s(&v.address),
        ),
        "remove_resp" => ("RemoveResp", String::new(), s(&v.address), s(&v.address)),
        "withdraw_resp" => (
            "WithdrawResp",
            s(&v.from_address),
            s(&v.to_address),
            s(&v.from_address),
        ),
        "pay_resp" => (
            "PayResp",
            s(&v.from_address),
            s(&v.to_address),
            s(&v.from_address),
        ),
        _ => return None,
    };
    let file = file.to_ascii_lowercase();
    // Only names that are plainly addresses become file names.
    if file.len() != 42
        || !file.starts_with("0x")
        || !file[2..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(Line {
        file,
        kind: name.to_owned(),
        from,
        to,
        chain: s(&v.chain),
        symbol: s(&v.symbol),
        amount,
    })
}

/// A chain event line for `ethnode.log`.
pub fn node_line(
    kind: &str,
    from: String,
    to: String,
    chain: &str,
    symbol: &str,
    amount: String,
) -> Line {
    Line {
        file: NODE_FILE.to_owned(),
        kind: kind.to_owned(),
        from,
        to,
        chain: chain.to_owned(),
        symbol: symbol.to_owned(),
        amount,
    }
}

/// Runs the calling thread only on CPU time nothing else wants
/// (`SCHED_IDLE`; nice 19 where that is refused): under load the logs wait
/// in their queue while requests and chain work go first, and a thread of
/// the daemon that wakes takes the CPU from the writer at once, instead of
/// waiting out its time slice. Nothing is dropped: the writer catches up
/// when there is room, and the catch-up thread writes in its place while it
/// is far behind.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling
    // thread's policy on Linux; it reads `param`, which outlives the call.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        set_nice(19);
    }
}

/// Sets the calling thread's nice value (higher only, without privilege).
fn set_nice(nice: i32) {
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the
    // calling thread's nice value on Linux; it reads and writes no memory.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 {
        tracing::debug!(target: "m2pool::txlog", nice, "could not lower a log thread's priority");
    }
}

/// `x.log` → `x.log.gz`, then removes `x.log`.
fn compress(plain: &Path) -> io::Result<()> {
    let gz_path = plain.with_extension("log.gz");
    let tmp = plain.with_extension("log.gz.tmp");
    let mut input = File::open(plain)?;
    let mut enc = GzEncoder::new(File::create(&tmp)?, Compression::default());
    io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, &gz_path)?;
    std::fs::remove_file(plain)
}

#[cfg(test)]
mod tests;
