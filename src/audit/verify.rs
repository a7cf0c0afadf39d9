//! `connector-gateway audit verify FILE...`: recomputes the chain over one or more files (rotated
//! files in order, then the current one) and names the first bad line. A torn final line (a crash
//! mid-write) is a warning, not a failure.

use std::path::{Path, PathBuf};

use super::record::{AuditRecord, GENESIS, Phase};

/// What an intact chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records checked.
    pub records: u64,
    /// First and last seq, when any.
    pub seqs: Option<(u64, u64)>,
    /// First and last time, when any.
    pub times: Option<(String, String)>,
    /// Set when the chain does not start at seq 1 (earlier files were not given).
    pub starts_mid_chain: bool,
    /// Set when the last line was torn (a crash mid-write).
    pub torn_tail: bool,
    /// Intent records with no outcome after them: requests still in flight when the trail was
    /// read, or cut off by a crash.
    pub open_intents: u64,
}

/// The first place the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct Broken {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Verifies `files` as one chain, in order.
pub fn verify_files(files: &[PathBuf]) -> Result<Summary, Broken> {
    let mut summary =
        Summary { records: 0, seqs: None, times: None, starts_mid_chain: false, torn_tail: false, open_intents: 0 };
    // Intents minus outcomes per request id (a batch has one pair per inner write).
    let mut open: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut previous: Option<AuditRecord> = None;
    for (index, file) in files.iter().enumerate() {
        let last_file = index + 1 == files.len();
        let broken = |line: usize, reason: String| Broken { file: file.clone(), line, reason };
        let bytes = std::fs::read(file).map_err(|e| broken(0, format!("cannot read: {e}")))?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let torn = lines.pop().filter(|l| !l.is_empty());
        if torn.is_some() {
            if !last_file {
                return Err(broken(lines.len() + 1, "torn line in the middle of the chain".into()));
            }
            summary.torn_tail = true;
        }
        for (i, raw) in lines.iter().enumerate() {
            let line = i + 1;
            let record: AuditRecord =
                serde_json::from_slice(raw).map_err(|e| broken(line, format!("not an audit record: {e}")))?;
            if record.to_line().strip_suffix(b"\n") != Some(raw) {
                return Err(broken(
                    line,
                    "the record was edited (its bytes are not the ones the gateway wrote)".into(),
                ));
            }
            if !record.is_sealed_correctly() {
                return Err(broken(line, format!("seq {}: the hash does not match the record's content", record.seq)));
            }
            match &previous {
                Some(prev) if record.seq != prev.seq + 1 => {
                    return Err(broken(
                        line,
                        format!(
                            "seq {} follows seq {}: a record was removed, inserted or reordered",
                            record.seq, prev.seq
                        ),
                    ));
                }
                Some(prev) if record.prev_hash != prev.hash => {
                    return Err(broken(
                        line,
                        format!("seq {}: prev_hash does not match the previous record's hash", record.seq),
                    ));
                }
                None if record.seq == 1 && record.prev_hash != GENESIS => {
                    return Err(broken(line, "seq 1 does not start from the genesis hash".into()));
                }
                None if record.seq != 1 => summary.starts_mid_chain = true,
                _ => {}
            }
            let delta = match record.body.phase {
                Phase::Intent => 1,
                Phase::Outcome => -1,
                Phase::Denied => 0,
            };
            if delta != 0 {
                let count = open.entry(record.body.request_id.clone()).or_insert(0);
                *count += delta;
                if *count == 0 {
                    open.remove(&record.body.request_id);
                }
            }
            summary.records += 1;
            summary.seqs = Some((summary.seqs.map_or(record.seq, |s| s.0), record.seq));
            let time = record.body.time.clone();
            summary.times = Some((summary.times.take().map_or_else(|| time.clone(), |t| t.0), time));
            previous = Some(record);
        }
    }
    summary.open_intents = open.values().filter(|&&n| n > 0).map(|&n| n.unsigned_abs()).sum();
    Ok(summary)
}

/// Human-readable summary line for the CLI.
pub fn describe(summary: &Summary, files: &[PathBuf]) -> String {
    let mut text = format!("intact: {} records in {} file(s)", summary.records, files.len());
    if let (Some((first, last)), Some((t0, t1))) = (summary.seqs, &summary.times) {
        text.push_str(&format!(", seq {first}..{last}, {t0} .. {t1}"));
    }
    if summary.starts_mid_chain {
        text.push_str("\nnote: the chain starts after seq 1 (earlier files were not given)");
    }
    if summary.open_intents > 0 {
        text.push_str(&format!(
            "\nnote: {} intent record(s) have no outcome yet (requests in flight, or cut off by a crash)",
            summary.open_intents
        ));
    }
    if summary.torn_tail {
        text.push_str(
            "\nwarning: the last line is torn (a crash mid-write); the gateway truncates it on its next start",
        );
    }
    text
}

/// Convenience for one file.
pub fn verify_file(path: &Path) -> Result<Summary, Broken> {
    verify_files(&[path.to_path_buf()])
}
