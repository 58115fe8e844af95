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
    // No plain rotated file is left behind.
    let leftovers = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("0xabc_") && !n.ends_with(".gz")
        })
        .count();
    assert_eq!(leftovers, 0);
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

#[tokio::test]
async fn open_files_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, stats, writer) = TxLog::start(dir.path(), 8).expect("starts");
    for round in 0..2 {
        for a in 0..1000 {
            log.write(line(&format!("0x{a:040x}"), round)).await;
        }
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
