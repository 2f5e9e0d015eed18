//! Group commit: the writer's thread, which runs the store work of async
//! callers ([`Store::blocking`]) in shared transactions.
//!
//! # Why
//!
//! Every commit of a writer costs an fsync (`synchronous = FULL`, invariant
//! 6) and a dozen file-lock and page-write system calls, and every
//! `spawn_blocking` hand-off two thread wake-ups. At bootstrap the daemon
//! stores several things per issued token, so this was most of its CPU time
//! beside the RSA signature. Here one thread owns the writes: jobs that
//! arrive while a batch is being synced queue up, and the next batch runs
//! them all in one transaction and syncs once.
//!
//! # Invariants
//!
//! - **Durable before answered**: a job's result reaches its caller only
//!   after the transaction holding its writes committed. When the commit
//!   fails, every job of the batch gets that failure, whatever it returned.
//! - **Each write is what it was**: inside a batch every [`Store::write`]
//!   is a savepoint, so a failing one rolls back only its own changes, as
//!   its own transaction did; earlier writes of the same job stand.
//! - **Nobody sees a batch before its commit**: while a batch is open, reads
//!   and writes from other threads wait until it ends
//!   ([`Store::connection`]), so nothing published can rest on writes that
//!   might still be lost.
//! - **The thread never keeps the store alive**: it holds the store weakly
//!   between batches and drops its handle before answering, so the last
//!   caller's drop still closes the database and releases the writer lock
//!   at once; with the store gone, the thread ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Weak};
use std::thread::{self, ThreadId};

use super::{ExecCached as _, Inner, Store, StoreError};

/// The most jobs one transaction takes: enough to share one fsync among
/// every job that arrives during it, few enough that the first of them is
/// not kept waiting long for the last.
const MAX_BATCH: usize = 256;

/// One caller's work: runs on the writer thread and returns how to answer
/// the caller once the batch's fate is known.
pub(super) type Job = Box<dyn FnOnce(&Store) -> Answer + Send>;

/// Answers a caller: given `None` when the batch committed, or the reason
/// it did not.
pub(super) type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The connection and who holds a batch open on it.
pub(super) struct Connection {
    pub(super) conn: rusqlite::Connection,
    /// The writer thread while it runs a batch: other threads wait.
    pub(super) batch: Option<ThreadId>,
}

impl Connection {
    pub(super) fn new(conn: rusqlite::Connection) -> Self {
        Self { conn, batch: None }
    }

    /// True when the calling thread runs the open batch, so its writes are
    /// savepoints inside it.
    pub(super) fn in_my_batch(&self) -> bool {
        self.batch == Some(thread::current().id())
    }

    /// True when another thread runs an open batch.
    pub(super) fn in_other_batch(&self) -> bool {
        self.batch.is_some_and(|t| t != thread::current().id())
    }
}

/// One write inside a batch: a savepoint, released when the write
/// succeeded and rolled back otherwise, also when the write panicked (the
/// guard's drop). rusqlite's own savepoint parses its SQL on every use;
/// these statements come from the statement cache, and a batch runs one
/// per write.
pub(super) struct Savepoint<'c> {
    conn: &'c rusqlite::Connection,
    released: bool,
}

impl<'c> Savepoint<'c> {
    pub(super) fn open(conn: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        conn.exec_cached("SAVEPOINT batch_write", [])?;
        Ok(Self {
            conn,
            released: false,
        })
    }

    pub(super) fn release(mut self) -> rusqlite::Result<()> {
        self.conn.exec_cached("RELEASE batch_write", [])?;
        // Only now: a RELEASE that failed leaves the guard to undo the
        // write, so the batch never commits a write its caller saw fail.
        self.released = true;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.released {
            // Undoes the write; its failure was already reported. If these
            // fail too, SQLite has ended the transaction itself, and the
            // batch's commit finds that out.
            let _ = self.conn.exec_cached("ROLLBACK TO batch_write", []);
            let _ = self.conn.exec_cached("RELEASE batch_write", []);
        }
    }
}

/// Wraps `f` as a job whose result goes to `reply` after the commit.
pub(super) fn job<T, F>(f: F, reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    Box::new(move |store: &Store| -> Answer {
        let out = catch_unwind(AssertUnwindSafe(|| f(store))).unwrap_or_else(|panic| {
            Err(StoreError::Internal {
                what: format!("a store job panicked: {}", panic_text(&panic)),
            })
        });
        Box::new(move |failed: Option<&StoreError>| {
            let out = match (out, failed) {
                (Ok(_), Some(e)) => Err(copy_error(e)),
                (out, _) => out,
            };
            // A caller that stopped waiting (cancelled) needs no answer.
            let _ = reply.send(out);
        })
    })
}

/// Starts the writer thread for `inner` and returns where to send jobs.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Sender<Job>, StoreError> {
    let (send, receive) = channel::<Job>();
    let weak = Arc::downgrade(inner);
    thread::Builder::new()
        .name("linetokd-store".to_owned())
        .spawn(move || serve(&weak, &receive))
        .map_err(|e| StoreError::Internal {
            what: format!("could not start the store's writer thread: {e}"),
        })?;
    Ok(send)
}

/// The writer thread: takes whatever jobs are queued, runs them as one
/// batch, answers, and waits for more until the store is gone.
fn serve(weak: &Weak<Inner>, receive: &Receiver<Job>) {
    // Ends when every sender is gone, that is when the store was dropped.
    while let Ok(first) = receive.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receive.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(inner) = weak.upgrade() else {
            // The store is gone; its callers are gone with it.
            return;
        };
        if inner.sqlite().is_none() {
            // PostgreSQL: no batch (each write is its own transaction), so
            // each job is answered as soon as it ran, not after the others.
            drop(inner);
            for job in jobs {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let store = Store { inner, fence: None };
                let answer = job(&store);
                drop(store);
                answer(None);
            }
            continue;
        }
        let store = Store { inner, fence: None };
        let answers = run(&store, jobs, || receive.try_recv().ok());
        // Dropped before answering: the last caller to drop the store after
        // its answer must be the one that closes it.
        drop(store);
        for (answer, failed) in answers {
            answer(failed.as_ref());
        }
    }
}

/// Runs `jobs` in one transaction, or each on its own when no batch can be
/// opened (every job then meets the trouble itself and reports it as its
/// own error, as it would have without batching). A lone job is batched
/// too: its writes then share one sync.
///
/// Jobs that arrived while the batch ran (`more`) join it before the
/// commit, up to [`MAX_BATCH`]: they would otherwise wait for this commit
/// and then pay a sync of their own. Each commit costs an fsync and the
/// WAL writes of every page the batch touched, so the fewer commits per
/// write, the less CPU a write costs.
fn run(
    store: &Store,
    jobs: Vec<Job>,
    mut more: impl FnMut() -> Option<Job>,
) -> Vec<(Answer, Option<StoreError>)> {
    if !begin(store) {
        return jobs.into_iter().map(|job| (job(store), None)).collect();
    }
    // Ends the batch even if something below panics, so that other
    // threads waiting for it are not stuck for good.
    let _end = EndBatch(store);
    let mut answers = Vec::with_capacity(jobs.len());
    for job in jobs {
        answers.push(job(store));
    }
    while answers.len() < MAX_BATCH {
        let Some(job) = more() else { break };
        answers.push(job(store));
    }
    match commit(store) {
        Ok(()) => answers.into_iter().map(|a| (a, None)).collect(),
        Err(e) => answers
            .into_iter()
            .map(|a| (a, Some(copy_error(&e))))
            .collect(),
    }
}

/// Opens a batch: the file check every write makes, then `BEGIN
/// IMMEDIATE`. False when either fails.
fn begin(store: &Store) -> bool {
    if store.check_same_file().is_err() {
        return false;
    }
    let Ok(mut guard) = store.connection() else {
        return false;
    };
    let began = guard.conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    if began {
        guard.batch = Some(thread::current().id());
    }
    began
}

/// Ends the batch: commits, or rolls back what is left when SQLite cannot
/// commit (or already rolled back after an I/O error), and lets other
/// threads at the connection again.
fn commit(store: &Store) -> Result<(), StoreError> {
    // A file replaced while the batch ran: its writes would go where
    // nobody finds them, so none is committed and every job hears why.
    let replaced = store.check_same_file().err();
    let mut guard = store.connection()?;
    let result = if let Some(e) = replaced {
        if !guard.conn.is_autocommit() {
            let _ = guard.conn.execute_batch("ROLLBACK");
        }
        Err(e)
    } else if guard.conn.is_autocommit() {
        // SQLite ends a transaction on its own after some errors (a full
        // disk, an I/O error): nothing of this batch is stored.
        Err(StoreError::Internal {
            what: "SQLite rolled back a batch of writes after an error".to_owned(),
        })
    } else {
        guard
            .conn
            .exec_cached("COMMIT", [])
            .map(|_| ())
            .map_err(|source| {
                // Not committed: leave no transaction open for the next batch.
                let _ = guard.conn.execute_batch("ROLLBACK");
                StoreError::Query {
                    path: store.path().to_path_buf(),
                    what: "committing a batch of writes",
                    source,
                }
            })
    };
    guard.batch = None;
    drop(guard);
    store.inner.batch_ended.notify_all();
    result
}

/// Closes a batch that [`commit`] did not close because something
/// panicked: rolls back what is left and lets other threads at the
/// connection again. After a normal commit it finds nothing to do.
struct EndBatch<'s>(&'s Store);

impl Drop for EndBatch<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.0.inner.sqlite() else {
            return;
        };
        let mut guard = conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !guard.in_my_batch() {
            return;
        }
        if !guard.conn.is_autocommit() {
            let _ = guard.conn.execute_batch("ROLLBACK");
        }
        guard.batch = None;
        drop(guard);
        self.0.inner.batch_ended.notify_all();
    }
}

/// A failed batch's error, once for each of its callers.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Replaced { path } => StoreError::Replaced { path: path.clone() },
        StoreError::Query { path, what, source } => StoreError::Query {
            path: path.clone(),
            what,
            source: match source {
                rusqlite::Error::SqliteFailure(code, message) => {
                    rusqlite::Error::SqliteFailure(*code, message.clone())
                }
                other => rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(other.to_string()),
                ),
            },
        },
        other => StoreError::Internal {
            what: other.to_string(),
        },
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Fail, millis};
    use chrono::DateTime;

    fn at() -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    /// A job that sends its caller's answer down a std channel.
    fn job_into<T: Send + 'static>(
        out: &std::sync::mpsc::Sender<Result<T, StoreError>>,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Job {
        let out = out.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let got = answer.blocking_recv().unwrap_or_else(|_| {
                Err(StoreError::Internal {
                    what: "no answer".to_owned(),
                })
            });
            let _ = out.send(got);
        });
        job(f, reply)
    }

    fn note(store: &Store, key: &str) -> Option<String> {
        store.note(key).unwrap().map(|n| n.value)
    }

    #[test]
    fn a_batch_commits_its_jobs_together_and_each_failure_stays_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.db")).unwrap();
        let (out_a, answers_a) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let (out_b, answers_b) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let (out_c, answers_c) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let (out_d, answers_d) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let (seen_send, seen) = std::sync::mpsc::channel::<Option<String>>();
        let jobs = vec![
            job_into(&out_a, move |store: &Store| {
                store.set_note(at(), "a", "first")?;
                // Another thread's read waits for the batch to commit, so
                // it sees the last job's value, never this one.
                let reader = store.clone();
                std::thread::spawn(move || {
                    let _ = seen_send.send(note(&reader, "a"));
                });
                Ok(())
            }),
            job_into(&out_b, |store: &Store| {
                store.set_note(at(), "b", "kept")?;
                // A failing write rolls back only itself.
                store.write("a write that fails", |conn| {
                    conn.execute(
                        "INSERT INTO daemon_notes (key, value, at) VALUES ('c', 'gone', ?1)",
                        [millis(at())],
                    )?;
                    Err::<(), Fail>(Fail::Corrupt("refused on purpose".to_owned()))
                })
            }),
            job_into(&out_c, |store: &Store| {
                store.set_note(at(), "a", "final")?;
                panic!("a job that panics");
            }),
            job_into(&out_d, |store: &Store| {
                // A write that panics half-way is rolled back too.
                store.write("a write that panics", |conn| {
                    conn.execute(
                        "INSERT INTO daemon_notes (key, value, at) VALUES ('d', 'gone', ?1)",
                        [millis(at())],
                    )?;
                    panic!("a write that panics");
                })
            }),
        ];
        let answers = run(&store, jobs, || None);
        assert!(answers.iter().all(|(_, failed)| failed.is_none()));
        for (answer, failed) in answers {
            answer(failed.as_ref());
        }
        assert!(answers_a.recv().unwrap().is_ok());
        let b = answers_b.recv().unwrap().unwrap_err().to_string();
        assert!(b.contains("refused on purpose"), "{b}");
        let c = answers_c.recv().unwrap().unwrap_err().to_string();
        assert!(c.contains("a job that panics"), "{c}");
        let d = answers_d.recv().unwrap().unwrap_err().to_string();
        assert!(d.contains("a write that panics"), "{d}");
        assert_eq!(seen.recv().unwrap().as_deref(), Some("final"));
        assert_eq!(note(&store, "b").as_deref(), Some("kept"));
        assert_eq!(note(&store, "c"), None);
        assert_eq!(note(&store, "d"), None);
        // Committed: a second connection sees it.
        drop(store);
        let reader = Store::open_read_only(&dir.path().join("b.db")).unwrap();
        assert_eq!(note(&reader, "a").as_deref(), Some("final"));
    }

    /// SQLite ends a transaction on its own after some errors (a full disk,
    /// an I/O error; here a trigger's `RAISE(ROLLBACK)`). The jobs after it
    /// in the batch must not commit on their own while being told they
    /// failed.
    #[test]
    fn after_sqlite_rolls_a_batch_back_no_later_job_commits_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).unwrap();
        let (out, answers) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let jobs = vec![
            job_into(&out, |store: &Store| store.set_note(at(), "a", "first")),
            job_into(&out, |store: &Store| {
                store.write("a trigger that rolls everything back", |conn| {
                    conn.execute_batch(
                        "CREATE TEMP TRIGGER boom BEFORE INSERT ON daemon_notes \
                         WHEN new.key = 'boom' BEGIN SELECT RAISE(ROLLBACK, 'boom'); END",
                    )?;
                    Ok(())
                })?;
                store.set_note(at(), "boom", "x")
            }),
            job_into(&out, |store: &Store| store.set_note(at(), "c", "after")),
        ];
        let results = run(&store, jobs, || None);
        assert!(results.iter().all(|(_, failed)| failed.is_some()));
        for (answer, failed) in results {
            answer(failed.as_ref());
        }
        for _ in 0..3 {
            assert!(answers.recv().unwrap().is_err());
        }
        assert_eq!(note(&store, "a"), None);
        assert_eq!(
            note(&store, "c"),
            None,
            "the job after the rollback committed alone"
        );
    }

    /// The database file renamed away while a batch runs: nothing of the
    /// batch is committed to the file nobody will open again, and every
    /// job hears that it was replaced (fatal).
    #[test]
    fn a_file_replaced_during_a_batch_commits_nothing_and_fails_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let moved = dir.path().join("moved.db");
        let store = Store::open(&path).unwrap();
        let (out, answers) = std::sync::mpsc::channel::<Result<(), StoreError>>();
        let (from, to) = (path.clone(), moved.clone());
        let jobs = vec![
            job_into(&out, |store: &Store| store.set_note(at(), "a", "x")),
            job_into(&out, move |store: &Store| {
                std::fs::rename(&from, &to).unwrap();
                store.set_note(at(), "b", "y")
            }),
        ];
        let results = run(&store, jobs, || None);
        for (answer, failed) in results {
            assert!(
                failed.as_ref().is_some_and(StoreError::is_fatal),
                "{failed:?}"
            );
            answer(failed.as_ref());
        }
        for _ in 0..2 {
            assert!(answers.recv().unwrap().unwrap_err().is_fatal());
        }
        // Rolled back: the connection (still on the moved file) has neither.
        assert_eq!(note(&store, "a"), None);
        assert_eq!(note(&store, "b"), None);
        assert!(moved.exists());
    }

    /// Opens `path` as a writer, retrying while the lock is held for a
    /// moment by a child another test is starting: the writer lock is an
    /// `flock`, which a child forked between the lock file's open and its
    /// `exec` shares until that `exec` closes it. A writer handle of ours
    /// kept alive would hold it for good, and the retries would run out.
    fn open_when_free(path: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened => return opened.unwrap(),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_never_outlives_the_last_store_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        for round in 0..20 {
            let store = open_when_free(&path);
            let key = format!("round {round}");
            store
                .blocking(move |s| s.set_note(at(), &key, "x"))
                .await
                .unwrap();
            drop(store);
            // The writer lock went with the last handle: the next open of
            // the same file is not refused as a second daemon.
            drop(open_when_free(&path));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_database_fails_every_job_as_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = Store::open(&path).unwrap();
        std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
        let e = store
            .blocking(|s| s.set_note(at(), "k", "v"))
            .await
            .unwrap_err();
        assert!(e.is_fatal(), "{e}");
    }
}
