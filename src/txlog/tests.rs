use super::*;
use flate2::read::GzDecoder;
use std::io::Read;
use std::time::Duration;

fn line(file: &str, n: usize) -> Line {
    Line {
        file: file.to_owned(),
        kind: "WithdrawReq".into(),
        from: "0x1111111111111111111111111111111111111111".into(),
        to: file.to_owned(),
        chain: "ETH".into(),
        symbol: "USDT".into(),
        amount: format!("{n}.5"),
    }
}

#[test]
fn timestamps_are_utc_in_the_go_layout() {
    let t = UNIX_EPOCH + Duration::from_secs(1_758_610_297);
    assert_eq!(
        timestamps(t),
        ("2025-09-23 06:51:37".into(), "20250923_065137".into())
    );
    assert_eq!(timestamps(UNIX_EPOCH).0, "1970-01-01 00:00:00");
    // A leap day.
    assert_eq!(
        timestamps(UNIX_EPOCH + Duration::from_secs(951_782_400)).0,
        "2000-02-29 00:00:00"
    );
    let l = line("0xabc", 100).render(t);
    assert_eq!(
        l,
        "[WithdrawReq]: 2025-09-23 06:51:37-0x1111111111111111111111111111111111111111-0xabc-ETH-USDT-100.5\n"
    );
}

#[test]
fn amounts_are_written_as_go_did_and_never_rounded() {
    assert_eq!(go_amount("100.5"), "100.500000");
    assert_eq!(go_amount("200"), "200.000000");
    assert_eq!(go_amount("0.000001"), "0.000001");
    assert_eq!(go_amount("0.25"), "0.250000");
    assert_eq!(go_amount("0.123456789012345678"), "0.123456789012345678");
    assert_eq!(
        go_amount("123456789012345678901234567890.5"),
        "123456789012345678901234567890.500000"
    );
    let resp = br#"{"address":"0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f","status":1,"chain":"ETH","symbol":"USDT","amount":100.5,"tx_hash":"0x1","from_address":"0x1111111111111111111111111111111111111111"}"#;
    let l = response_line("topup_resp", resp).expect("a line");
    assert_eq!(l.amount, "100.500000");
    assert_eq!(l.file, "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f");
    // 18 decimals and 30 integer digits: a float would round both.
    for amount in ["1.000000000000000001", "123456789012345678901234567890.5"] {
        let resp = format!(
            r#"{{"queue_id":"q","status":2,"amount":{amount},"chain":"ETH","symbol":"ETH","tx_hash":"0x1","from_address":"0x1111111111111111111111111111111111111111","to_address":"0x2222222222222222222222222222222222222222"}}"#
        );
        let l = response_line("withdraw_resp", resp.as_bytes()).expect("a line");
        assert_eq!(l.amount, go_amount(amount));
        assert_eq!(l.file, "0x1111111111111111111111111111111111111111");
    }
}

/// Whether `name` is `{stem}_{YYYYMMDD}_{HHMMSS}[_{n}].log.gz`.
fn is_rotated_name(name: &str, stem: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix('_'))
        .and_then(|r| r.strip_suffix(".log.gz"))
    else {
        return false;
    };
    let parts: Vec<&str> = rest.split('_').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [d, t] => digits(d, 8) && digits(t, 6),
        [d, t, n] => digits(d, 8) && digits(t, 6) && n.parse::<u32>().is_ok(),
        _ => false,
    }
}

fn read_all(dir: &Path, stem: &str) -> String {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(&format!("{stem}_")) && name.ends_with(".log.gz")
        })
        .collect();
    rotated.sort();
    let mut out = String::new();
    for p in rotated {
        GzDecoder::new(File::open(p).expect("open"))
            .read_to_string(&mut out)
            .expect("gunzip");
    }
    out.push_str(&std::fs::read_to_string(dir.join(format!("{stem}.log"))).unwrap_or_default());
    out
}

#[tokio::test]
async fn a_file_past_one_mebibyte_is_rotated_to_gzip_without_losing_a_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, stats, writer) = TxLog::start(dir.path(), 16).expect("starts");
    let n = 25_000; // about 2.5 MiB of lines
    for i in 0..n {
        log.write(line("0xabc", i)).await;
    }
    drop(log);
    writer.join().expect("writer ends");
    assert!(stats.rotations.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        stats.compressed.load(Ordering::Relaxed),
        stats.rotations.load(Ordering::Relaxed)
    );
    let all = read_all(dir.path(), "0xabc");
    let amounts: Vec<&str> = all
        .lines()
        .map(|l| l.rsplit('-').next().unwrap_or_default())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("{i}.5")).collect();
    assert_eq!(amounts, want, "every line, in order");
    // Every rotated file is named `{address}_{YYYYMMDD_HHMMSS}.log.gz`; no
    // plain rotated file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "0xabc.log")
        .collect();
    assert_eq!(names.len(), stats.rotations.load(Ordering::Relaxed));
    for n in &names {
        assert!(is_rotated_name(n, "0xabc"), "rotated file named {n}");
    }
}

#[tokio::test]
async fn a_rotated_file_a_crash_left_plain_is_compressed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("0xabc_20250923_065137.log");
    std::fs::write(&plain, "[WithdrawReq]: before the crash\n").expect("write");
    std::fs::write(dir.path().join("0xabc_20250923_065137.log.gz.tmp"), "half").expect("write");
    std::fs::write(dir.path().join("0xabc.log"), "live\n").expect("write");
    let (log, stats, writer) = TxLog::start(dir.path(), 4).expect("starts");
    drop(log);
    writer.join().expect("writer ends");
    assert_eq!(stats.compressed.load(Ordering::Relaxed), 1);
    assert!(!plain.exists(), "the plain rotated file is gone");
    assert!(!dir.path().join("0xabc_20250923_065137.log.gz.tmp").exists());
    assert_eq!(
        read_all(dir.path(), "0xabc"),
        "[WithdrawReq]: before the crash\nlive\n",
        "the live file is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_each_writers_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _, writer) = TxLog::start(dir.path(), 4).expect("starts");
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500usize {
                let mut l = line(&format!("0xf{}", (t + i) % 5), i);
                l.from = format!("task{t}");
                log.write(l).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    drop(log);
    writer.join().expect("writer ends");
    let mut total = 0;
    for f in 0..5 {
        let text = read_all(dir.path(), &format!("0xf{f}"));
        let mut last: HashMap<String, i64> = HashMap::new();
        for l in text.lines() {
            total += 1;
            let parts: Vec<&str> = l.split('-').collect();
            let task = parts[parts.len() - 5].to_owned();
            let n: i64 = parts[parts.len() - 1]
                .trim_end_matches(".5")
                .parse()
                .expect("number");
            let prev = last.insert(task, n).unwrap_or(-1);
            assert!(n > prev, "lines of one writer stay in order");
        }
    }
    assert_eq!(total, 8 * 500);
}

/// Descriptors this process holds open on files in `dir`.
fn descriptors_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[tokio::test]
async fn open_files_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, stats, writer) = TxLog::start(dir.path(), 8).expect("starts");
    for round in 0..2 {
        for a in 0..1000 {
            log.write(line(&format!("0x{a:040x}"), round)).await;
        }
        // The descriptors the kernel counts, once the writer is through.
        let want = (round + 1) * 1000;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.written.load(Ordering::Relaxed) < want {
            assert!(std::time::Instant::now() < deadline, "writer too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let open = descriptors_in(dir.path());
        assert!(
            (1..=8).contains(&open),
            "{open} files open in the log folder"
        );
    }
    drop(log);
    writer.join().expect("writer ends");
    assert!(
        stats.max_open.load(Ordering::Relaxed) <= 8,
        "at most 8 files open at once"
    );
    for a in [0, 499, 999] {
        let text =
            std::fs::read_to_string(dir.path().join(format!("0x{a:040x}.log"))).expect("file");
        assert_eq!(
            text.lines().count(),
            2,
            "both lines, reopened in append mode"
        );
    }
}

#[test]
fn a_line_kept_in_the_outbox_reads_back_the_same() {
    let l = Line {
        file: "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f".into(),
        kind: "RemoveResp".into(),
        from: String::new(),
        to: "0x4e5b2e1dc63f6b91cb6cd759936495434c7e972f".into(),
        chain: "ETH".into(),
        symbol: "USDT".into(),
        amount: "0".into(),
    };
    assert_eq!(Line::from_stored(&l.to_stored()), Some(l));
    assert_eq!(Line::from_stored("too\tfew"), None);
    assert_eq!(
        Line::from_stored("a\tb\tc\td\te\tf\tg\th"),
        None,
        "too many"
    );
}

/// A writer on `dir` and a queue already holding `n` lines for `0xabc`
/// (amounts `0.5`, `1.5`, …), with nobody writing yet.
fn queued(dir: &Path, n: usize) -> (catchup::Handover, mpsc::Sender<Line>, Arc<WriterStats>) {
    let stats = Arc::new(WriterStats::default());
    let writer = Writer::open(dir, 4, stats.clone()).expect("writer");
    let (tx, rx) = mpsc::channel(n + 1);
    for i in 0..n {
        tx.try_send(line("0xabc", i)).expect("room");
    }
    (
        catchup::Handover::new(catchup::Shared { rx, writer }),
        tx,
        stats,
    )
}

#[test]
fn the_catch_up_thread_writes_down_to_the_low_mark_in_order_then_hands_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (handover, tx, stats) = queued(dir.path(), 100);
    // The writer thread is not running (as when it gets no CPU at all):
    // the catch-up thread writes until the low mark is left.
    assert!(!handover.catch_up(10), "the queue is still open");
    assert_eq!(stats.caught_up.load(Ordering::Relaxed), 90);
    assert_eq!(stats.written.load(Ordering::Relaxed), 90);
    // The rest, once the senders are gone, by the writer thread's loop.
    drop(tx);
    handover.write_all();
    handover.into_writer().finish();
    let amounts: Vec<String> = read_all(dir.path(), "0xabc")
        .lines()
        .map(|l| l.rsplit('-').next().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("{i}.5")).collect();
    assert_eq!(amounts, want, "every line once, in order");
    assert_eq!(stats.caught_up.load(Ordering::Relaxed), 90);
}

#[test]
fn the_catch_up_thread_takes_over_above_the_high_mark_hands_back_and_ends_with_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A full queue of 64 and no writer thread yet (as when it gets no CPU).
    let (handover, tx, stats) = queued(dir.path(), 64);
    let handover = Arc::new(handover);
    let queue = tx.downgrade();
    let marks = catchup::Marks {
        high: 8,
        low: 2,
        every: Duration::from_micros(50),
    };
    let watcher = {
        let handover = handover.clone();
        std::thread::spawn(move || handover.watch(&queue, 65, marks))
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stats.caught_up.load(Ordering::Relaxed) < 62 {
        assert!(
            std::time::Instant::now() < until,
            "caught up {} of 62 (down to the low mark of 2)",
            stats.caught_up.load(Ordering::Relaxed)
        );
        std::thread::yield_now();
    }
    // Now the writer thread too, while 20,000 more lines come: the two
    // hand the files back and forth.
    let writer = {
        let handover = handover.clone();
        std::thread::spawn(move || handover.write_all())
    };
    let n = 64 + 20_000;
    for i in 64..n {
        tx.blocking_send(line("0xabc", i)).expect("open");
    }
    drop(tx);
    // Both end once the queue has no sender (a lost wake-up would leave
    // the writer asleep here).
    let (ended, joined) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = writer.join();
        let _ = watcher.join();
        let _ = ended.send(());
    });
    joined
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer and the catch-up thread end with the queue");
    let Ok(handover) = Arc::try_unwrap(handover) else {
        panic!("both threads let go of the files");
    };
    handover.into_writer().finish();
    let amounts: Vec<String> = read_all(dir.path(), "0xabc")
        .lines()
        .map(|l| l.rsplit('-').next().unwrap_or_default().to_owned())
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("{i}.5")).collect();
    assert!(
        amounts == want,
        "every line once, in order ({} lines)",
        amounts.len()
    );
    assert_eq!(stats.written.load(Ordering::Relaxed), n);
}

/// `(thread id, policy, nice)` of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<(String, i64, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The fields after the name, which is in parentheses: the state
        // is field 3, nice field 19, policy field 41.
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(-1);
        let tid = task.file_name().to_string_lossy().into_owned();
        found.push((tid, field(41), field(19)));
    }
    found
}

/// The calling thread's `(policy, nice)`.
fn this_thread() -> (i32, i32) {
    // SAFETY: both read only the calling thread's scheduling settings.
    unsafe {
        (
            libc::sched_getscheduler(0),
            libc::getpriority(libc::PRIO_PROCESS, 0),
        )
    }
}

#[tokio::test]
async fn the_started_writer_runs_on_idle_cpu_and_its_catch_up_thread_at_nice_ten() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Threads of other writers this process may run are left out.
    let others: Vec<String> = ["txlog", "txlog-gzip", "txlog-catchup"]
        .iter()
        .flat_map(|n| threads_named(n))
        .map(|(tid, _, _)| tid)
        .collect();
    let mine = |name: &str| -> Vec<(String, i64, i64)> {
        threads_named(name)
            .into_iter()
            .filter(|(tid, _, _)| !others.contains(tid))
            .collect()
    };
    let caller = this_thread();
    let (log, _, writer) = TxLog::start(dir.path(), 4).expect("starts");
    let lowered = |t: &[(String, i64, i64)]| {
        t.len() == 1 && (t[0].1 == i64::from(libc::SCHED_IDLE) || t[0].2 == 19)
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let helper = loop {
        let (writers, gzip) = (mine("txlog"), mine("txlog-gzip"));
        let helpers = mine("txlog-catchup");
        if lowered(&writers)
            && lowered(&gzip)
            && helpers.len() == 1
            && (helpers[0].1, helpers[0].2) == (i64::from(libc::SCHED_OTHER), 10)
        {
            break helpers[0].0.clone();
        }
        assert!(
            std::time::Instant::now() < until,
            "(thread, policy, nice) of the writer {writers:?}, compressor {gzip:?}, catch-up {helpers:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        this_thread(),
        caller,
        "the thread that started the log is left as it was"
    );
    drop(log);
    writer.join().expect("writer ends");
    assert!(
        !mine("txlog-catchup")
            .iter()
            .any(|(tid, _, _)| *tid == helper),
        "the catch-up thread ends with the writer"
    );
}
