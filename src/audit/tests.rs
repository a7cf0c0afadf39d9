use std::path::{Path, PathBuf};

use super::journal::rotated;
use super::record::GENESIS;
use super::verify::verify_files;
use super::*;
use crate::config::{AuditConfig, FsyncMode};

fn body(n: u64) -> RecordBody {
    let mut body = super::record::tests::body(Phase::Intent);
    body.time = format!("2026-12-03T18:04:{:02}.000Z", n % 60);
    body.request_id = format!("r{n}");
    body.client_request_id = format!("c{n}");
    body
}

fn config(path: &Path, fsync: FsyncMode, rotate_bytes: Option<u64>) -> AuditConfig {
    AuditConfig { path: path.to_path_buf(), fsync, rotate_bytes }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

async fn write(journal: &AuditJournal, range: std::ops::Range<u64>) {
    for n in range {
        journal.append(body(n)).await.unwrap();
    }
}

#[tokio::test]
async fn a_restart_continues_the_chain_and_verify_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit").join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Always, None)).unwrap();
    write(&journal, 0..3).await;
    drop(journal);
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, None)).unwrap();
    assert_eq!(journal.append(body(3)).await.unwrap(), 4);
    let first: AuditRecord = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS));
    let summary = super::verify::verify_file(&path).unwrap();
    assert_eq!((summary.records, summary.seqs), (4, Some((1, 4))));
}

#[tokio::test]
async fn a_torn_last_line_is_a_warning_and_truncated_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, None)).unwrap();
    write(&journal, 0..2).await;
    drop(journal);
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"seq\":3,\"time\":\"2026-");
    std::fs::write(&path, &text).unwrap();
    let summary = super::verify::verify_file(&path).unwrap();
    assert!(summary.torn_tail);
    assert_eq!(summary.records, 2);
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, None)).unwrap();
    assert_eq!(journal.append(body(2)).await.unwrap(), 3);
    let summary = super::verify::verify_file(&path).unwrap();
    assert!(!summary.torn_tail);
    assert_eq!(summary.records, 3);
}

async fn trail_of(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Off, None)).unwrap();
    write(&journal, 0..n).await;
    (dir, path)
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let mut all = lines(path);
    edit(&mut all);
    std::fs::write(path, all.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn verify_names_the_first_bad_line_of_any_tampering() {
    type Edit = Box<dyn FnOnce(&mut Vec<String>)>;
    let cases: Vec<(&str, Edit, usize)> = vec![
        ("edit", Box::new(|l: &mut Vec<String>| l[2] = l[2].replace("inactive", "active")), 3),
        (
            "edit with a recomputed hash",
            Box::new(|l: &mut Vec<String>| {
                let mut r: AuditRecord = serde_json::from_str(&l[2]).unwrap();
                r.body.request_id = "forged".into();
                let r = AuditRecord::seal(r.seq, r.body, r.prev_hash);
                l[2] = String::from_utf8(r.to_line()).unwrap().trim_end().to_owned();
            }),
            4,
        ),
        (
            "removal",
            Box::new(|l: &mut Vec<String>| {
                l.remove(1);
            }),
            2,
        ),
        ("swap", Box::new(|l: &mut Vec<String>| l.swap(1, 2)), 2),
        (
            "insertion",
            Box::new(|l: &mut Vec<String>| {
                let copy = l[1].clone();
                l.insert(2, copy);
            }),
            3,
        ),
        ("whitespace", Box::new(|l: &mut Vec<String>| l[3] = l[3].replacen(':', ": ", 1)), 4),
        ("torn in the middle", Box::new(|l: &mut Vec<String>| l[1].truncate(20)), 2),
    ];
    for (name, edit, bad_line) in cases {
        let (_dir, path) = trail_of(5).await;
        assert!(super::verify::verify_file(&path).is_ok());
        rewrite(&path, edit);
        let broken = super::verify::verify_file(&path).expect_err(name);
        assert_eq!(broken.line, bad_line, "{name}: {broken}");
    }
}

#[tokio::test]
async fn rotation_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, Some(1500))).unwrap();
    write(&journal, 0..10).await;
    drop(journal);
    let mut files: Vec<PathBuf> = (1..).map(|n| rotated(&path, n)).take_while(|p| p.exists()).collect();
    assert!(files.len() >= 2, "rotated {} times", files.len());
    files.push(path.clone());
    assert_eq!(verify_files(&files).unwrap().records, 10);
    // Out of order, the chain is broken; the last file alone starts mid-chain.
    let mut reversed = files.clone();
    reversed.reverse();
    assert!(verify_files(&reversed).is_err());
    assert!(super::verify::verify_file(&path).unwrap().starts_mid_chain);
    // A restart right after a rotation continues from the rotated file.
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, Some(1500))).unwrap();
    write(&journal, 10..11).await;
    let files: Vec<PathBuf> =
        (1..).map(|n| rotated(&path, n)).take_while(|p| p.exists()).chain([path.clone()]).collect();
    assert_eq!(verify_files(&files).unwrap().records, 11);
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_the_health_check() {
    let journal = AuditJournal::open(&config(Path::new("/dev/full"), FsyncMode::Batch, None)).unwrap();
    assert!(journal.health().is_ok());
    let error = journal.append(body(0)).await.unwrap_err();
    assert!(matches!(error, AuditError::Write(_)), "{error}");
    assert!(journal.health().unwrap_err().contains("not writable"));
}

#[tokio::test]
async fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = AuditJournal::open(&config(&dir.path().join("t.jsonl"), FsyncMode::Batch, None)).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(body(n)).await.unwrap() })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let (records, syncs) = journal.counters();
    assert_eq!(records, 200);
    assert!(syncs < records, "group commit: {syncs} syncs for {records} records");
}

#[tokio::test]
async fn flush_waits_for_detached_records_without_a_sync_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Batch, None)).unwrap();
    assert_eq!(journal.flush().await.unwrap(), 0);
    for n in 0..5 {
        journal.submit(body(n)).detach();
    }
    assert_eq!(journal.flush().await.unwrap(), 5);
    assert_eq!(lines(&path).len(), 5);
    let (records, syncs) = journal.counters();
    assert_eq!(records, 5);
    assert!((1..=5).contains(&syncs), "{syncs} syncs: barriers add none");
    assert_eq!(journal.flush().await.unwrap(), 5);
    assert_eq!(journal.counters().1, syncs);
}

#[tokio::test]
async fn a_flush_after_a_failed_write_says_so() {
    let journal = AuditJournal::open(&config(Path::new("/dev/full"), FsyncMode::Batch, None)).unwrap();
    assert!(journal.append(body(0)).await.is_err());
    assert!(journal.flush().await.is_err());
}

#[tokio::test]
async fn verify_counts_intents_that_never_got_an_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.jsonl");
    let journal = AuditJournal::open(&config(&path, FsyncMode::Off, None)).unwrap();
    let outcome = |n| RecordBody { phase: Phase::Outcome, status: Some(200), ..body(n) };
    for record in [body(1), outcome(1), body(2), body(3), body(3), outcome(3)] {
        journal.append(record).await.unwrap();
    }
    let summary = super::verify::verify_file(&path).unwrap();
    assert_eq!(summary.open_intents, 2, "r2 has none, r3 (a batch of two) has one of two");
    assert!(super::verify::describe(&summary, &[path]).contains("2 intent record(s) have no outcome"));
}
