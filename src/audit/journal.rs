//! The audit journal: one writer thread owns the file. Requests hand it record bodies through a
//! bounded channel and await its acknowledgement; it takes whatever is queued, gives each record
//! its place in the hash chain, writes the batch with one `write` and, for `fsync = "batch"`, one
//! `fdatasync` (group commit). A full channel makes requests wait; nothing is dropped.
//!
//! The file is written from a dedicated OS thread, never from a tokio worker. On start the tail
//! of the existing file is read to continue the chain, and a torn last line (a crash mid-write)
//! is truncated. A failed write rolls the file back to its last good length and reports the sink
//! broken (for `/readyz`) until a write succeeds again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::record::{AuditRecord, GENESIS, RecordBody, seal_line};
use crate::config::{AuditConfig, FsyncMode};

/// Records queued at most before requests wait.
const QUEUE: usize = 4096;
/// Records written in one batch at most.
const MAX_BATCH: usize = 1024;
/// How much of the file's end is read to find the last record.
const TAIL_BYTES: u64 = 256 * 1024;

/// The audit trail could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The file could not be written or synced.
    #[error("the audit trail cannot be written: {0}")]
    Write(String),
    /// The writer is gone (shutting down).
    #[error("the audit trail is closed")]
    Closed,
}

/// Why the journal could not start.
#[derive(Debug, thiserror::Error)]
#[error("audit.path {path}: {reason}")]
pub struct OpenError {
    path: String,
    reason: String,
}

type Ack = oneshot::Sender<Result<u64, AuditError>>;

/// Shared state the writer reports through.
#[derive(Debug, Default)]
struct Health {
    broken: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    records: AtomicU64,
    syncs: AtomicU64,
}

/// A handle to the journal. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct AuditJournal {
    /// A record to write, or `None`: a barrier acknowledged once everything before it is written.
    sender: mpsc::Sender<(Option<RecordBody>, Ack)>,
    health: Arc<Health>,
    credential: Option<super::AuditCredential>,
}

/// Where the chain stands: the last record's seq and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The last seq written (0 when none).
    pub seq: u64,
    /// Its hash (the genesis value when none).
    pub hash: String,
}

fn fail(path: &Path, reason: impl std::fmt::Display) -> OpenError {
    OpenError { path: path.display().to_string(), reason: reason.to_string() }
}

/// Rotated files are `<path>.1`, `<path>.2`, ... in order; returns the highest number in use.
fn last_rotation(path: &Path) -> u64 {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return 0 };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name().to_str().and_then(|f| f.strip_prefix(name)?.strip_prefix('.')?.parse::<u64>().ok())
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The rotated file number `n` of `path`.
pub fn rotated(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Reads the last complete record of `file` and truncates a torn tail. Only regular files are
/// inspected (a device such as /dev/full has no tail to read).
fn recover_tail(file: &mut File, path: &Path) -> Result<Option<ChainHead>, OpenError> {
    let meta = file.metadata().map_err(|e| fail(path, e))?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let len = meta.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(|e| fail(path, e))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail).map_err(|e| fail(path, e))?;
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        let keep = start + complete as u64;
        tracing::warn!(path = %path.display(), torn_bytes = tail.len() - complete, "truncating a torn last audit line left by a crash");
        file.set_len(keep).map_err(|e| fail(path, e))?;
        file.sync_all().map_err(|e| fail(path, e))?;
    }
    let lines = tail.get(..complete).unwrap_or_default();
    let Some(last) = lines.split(|&b| b == b'\n').rfind(|l| !l.is_empty()) else { return Ok(None) };
    let record: AuditRecord =
        serde_json::from_slice(last).map_err(|e| fail(path, format!("the last record is unreadable: {e}")))?;
    Ok(Some(ChainHead { seq: record.seq, hash: record.hash }))
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    head: ChainHead,
    fsync: FsyncMode,
    rotate_bytes: Option<u64>,
    rotation: u64,
    health: Arc<Health>,
}

impl Writer {
    fn open(config: &AuditConfig) -> Result<Self, OpenError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&path, e))?;
        }
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(|e| fail(&path, e))?;
        let rotation = last_rotation(&path);
        let head = match recover_tail(&mut file, &path)? {
            Some(head) => head,
            // A fresh file after a rotation continues the chain of the last rotated file.
            None if rotation > 0 => {
                let old = rotated(&path, rotation);
                let mut previous = File::open(&old).map_err(|e| fail(&old, e))?;
                recover_tail(&mut previous, &old)?.unwrap_or(ChainHead { seq: 0, hash: GENESIS.into() })
            }
            None => ChainHead { seq: 0, hash: GENESIS.into() },
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::info!(path = %path.display(), seq = head.seq, "audit trail open");
        Ok(Self {
            path,
            file,
            size,
            head,
            fsync: config.fsync,
            rotate_bytes: config.rotate_bytes,
            rotation,
            health: Arc::default(),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let next = rotated(&self.path, self.rotation + 1);
        std::fs::rename(&self.path, &next)?;
        self.rotation += 1;
        self.file = OpenOptions::new().read(true).append(true).create(true).open(&self.path)?;
        self.size = 0;
        tracing::info!(rotated_to = %next.display(), "audit trail rotated");
        Ok(())
    }

    /// Writes one batch; on error the file is rolled back and the chain head kept.
    fn write_batch(&mut self, bodies: Vec<RecordBody>) -> Result<Vec<u64>, AuditError> {
        if bodies.is_empty() {
            return Ok(Vec::new()); // only barriers: what came before is already written and synced
        }
        let mut head = self.head.clone();
        let mut bytes = Vec::with_capacity(bodies.len() * 512);
        let mut ends = Vec::with_capacity(bodies.len());
        let mut seqs = Vec::with_capacity(bodies.len());
        for body in &bodies {
            let seq = head.seq + 1;
            let hash = seal_line(seq, body, &head.hash, &mut bytes);
            ends.push(bytes.len());
            seqs.push(seq);
            head = ChainHead { seq, hash };
        }
        if self.rotate_bytes.is_some_and(|limit| self.size > 0 && self.size + bytes.len() as u64 > limit) {
            self.rotate().map_err(|e| AuditError::Write(e.to_string()))?;
        }
        let result = match self.fsync {
            FsyncMode::Always => {
                // One sync per record: every record is durable on its own before the next.
                let mut start = 0;
                ends.iter().try_for_each(|&end| {
                    self.file.write_all(bytes.get(start..end).unwrap_or_default())?;
                    start = end;
                    self.health.syncs.fetch_add(1, Ordering::Relaxed);
                    self.file.sync_data()
                })
            }
            FsyncMode::Batch => self.file.write_all(&bytes).and_then(|()| {
                self.health.syncs.fetch_add(1, Ordering::Relaxed);
                self.file.sync_data()
            }),
            FsyncMode::Off => self.file.write_all(&bytes),
        };
        match result {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.head = head;
                self.health.records.fetch_add(seqs.len() as u64, Ordering::Relaxed);
                self.health.broken.store(false, Ordering::Relaxed);
                Ok(seqs)
            }
            Err(error) => {
                // Leave no partial line behind: the chain continues from the last good record.
                let _ = self.file.set_len(self.size);
                self.health.broken.store(true, Ordering::Relaxed);
                if let Ok(mut last) = self.health.last_error.lock() {
                    *last = Some(error.to_string());
                }
                tracing::error!(%error, path = %self.path.display(), "audit write failed");
                Err(AuditError::Write(error.to_string()))
            }
        }
    }

    fn run(mut self, mut receiver: mpsc::Receiver<(Option<RecordBody>, Ack)>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let (bodies, acks): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let is_record: Vec<bool> = bodies.iter().map(Option::is_some).collect();
            match self.write_batch(bodies.into_iter().flatten().collect()) {
                Ok(seqs) => {
                    // Records get their seq; barriers the seq reached by the end of the batch.
                    let mut seqs = seqs.into_iter();
                    let last = self.head.seq;
                    // A barrier after a failed write says so (the trail is not whole).
                    let barrier = match self.health.broken.load(Ordering::Relaxed) {
                        false => Ok(last),
                        true => Err(AuditError::Write("an earlier record could not be written".into())),
                    };
                    for (ack, record) in acks.into_iter().zip(is_record) {
                        let answer = if record { Ok(seqs.next().unwrap_or(last)) } else { barrier.clone() };
                        drop(ack.send(answer));
                    }
                }
                Err(error) => acks.into_iter().for_each(|ack| drop(ack.send(Err(error.clone())))),
            }
        }
    }
}

impl AuditJournal {
    /// Opens (or creates) the trail, continues its chain, and starts the writer thread.
    pub fn open(config: &AuditConfig) -> Result<Self, OpenError> {
        let writer = Writer::open(config)?;
        let health = writer.health.clone();
        let (sender, receiver) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| fail(&config.path, e))?;
        Ok(Self { sender, health, credential: None })
    }

    /// A handle that stamps `upstream_credential` on every record it writes.
    pub fn with_credential(mut self, credential: &crate::config::UpstreamCredential) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// Appends a record and waits until it is written (and synced, per `audit.fsync`).
    /// Returns its seq.
    pub async fn append(&self, mut body: RecordBody) -> Result<u64, AuditError> {
        self.stamp(&mut body);
        let (ack, done) = oneshot::channel();
        self.sender.send((Some(body), ack)).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Waits until every record handed over before this call is written (and synced, per
    /// `audit.fsync`); returns the last seq written. Shutdown calls it, so queued outcome records
    /// are not lost at exit.
    pub async fn flush(&self) -> Result<u64, AuditError> {
        let (ack, done) = oneshot::channel();
        self.sender.send((None, ack)).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// `Ok` while the last write succeeded; the error otherwise (for `/readyz`).
    pub fn health(&self) -> Result<(), String> {
        if self.health.broken.load(Ordering::Relaxed) {
            let last = self.health.last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
            Err(format!("audit trail not writable: {last}"))
        } else {
            Ok(())
        }
    }

    /// Records written and syncs made so far: (records, syncs).
    pub fn counters(&self) -> (u64, u64) {
        (self.health.records.load(Ordering::Relaxed), self.health.syncs.load(Ordering::Relaxed))
    }
}

/// Waits for one record's acknowledgement. Hands the record over without waiting when the queue
/// has room (the common case, nothing allocated); only a full queue parks a boxed send.
pub struct Append {
    state: AppendState,
}

type SendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AuditError>> + Send>>;

enum AppendState {
    Acked(oneshot::Receiver<Result<u64, AuditError>>),
    Queueing(SendFuture, Option<oneshot::Receiver<Result<u64, AuditError>>>),
    Failed(Option<AuditError>),
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").finish_non_exhaustive()
    }
}

impl Append {
    /// Lets the record be written without waiting for its acknowledgement. A record already
    /// queued needs nothing more; one still waiting for room in the queue is finished by a task.
    pub fn detach(self) {
        match self.state {
            AppendState::Acked(_) => {}
            AppendState::Queueing(..) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(async move {
                    if let Err(error) = self.await {
                        tracing::error!(%error, "a record could not be queued");
                    }
                })),
                Err(_) => tracing::error!("a record could not be queued: no runtime"),
            },
            AppendState::Failed(error) => {
                tracing::error!(error = %error.unwrap_or(AuditError::Closed), "a record could not be queued");
            }
        }
    }
}

impl std::future::Future for Append {
    type Output = Result<u64, AuditError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        loop {
            let next = match &mut self.state {
                AppendState::Acked(receiver) => {
                    return std::pin::Pin::new(receiver).poll(cx).map(|r| r.unwrap_or(Err(AuditError::Closed)));
                }
                AppendState::Failed(error) => return Poll::Ready(Err(error.take().unwrap_or(AuditError::Closed))),
                AppendState::Queueing(send, receiver) => match send.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => AppendState::Failed(Some(error)),
                    Poll::Ready(Ok(())) => match receiver.take() {
                        Some(receiver) => AppendState::Acked(receiver),
                        None => AppendState::Failed(Some(AuditError::Closed)),
                    },
                },
            };
            self.state = next;
        }
    }
}

impl AuditJournal {
    fn stamp(&self, body: &mut RecordBody) {
        if body.upstream_credential.is_none() {
            body.upstream_credential.clone_from(&self.credential);
        }
    }

    /// Like [`AuditJournal::append`], as a nameable future that allocates only when the queue is full.
    pub fn submit(&self, mut body: RecordBody) -> Append {
        self.stamp(&mut body);
        let (ack, done) = oneshot::channel();
        let state = match self.sender.try_send((Some(body), ack)) {
            Ok(()) => AppendState::Acked(done),
            Err(mpsc::error::TrySendError::Closed(_)) => AppendState::Failed(Some(AuditError::Closed)),
            Err(mpsc::error::TrySendError::Full(item)) => {
                let sender = self.sender.clone();
                let send: SendFuture = Box::pin(async move { sender.send(item).await.map_err(|_| AuditError::Closed) });
                AppendState::Queueing(send, Some(done))
            }
        };
        Append { state }
    }
}
