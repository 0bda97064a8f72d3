//! Coalescing: the commands that requests issue on one connection at about
//! the same moment go to Redis as one pipeline.
//!
//! Without it, a busy server writes each save to Redis in its own system
//! call, and Redis reads, runs and answers each one on its own; on loopback
//! those per-command system calls cost more CPU than the commands
//! themselves. With it, the first command queued on an idle [`Batcher`]
//! schedules a flush task; every command queued before that task runs joins
//! the same pipeline (one `write`, one `read` on each side). Nothing waits
//! on a timer: the flush task yields once to the scheduler, so at low load a
//! pipeline holds one command and goes out at once, and under load the
//! pipelines fill themselves. Pipelines
//! do not wait for one another: a command queued while one is in flight
//! starts the next.
//!
//! A caller only ever waits for its own answer, so dropping a request (its
//! client went away) cancels nothing that others wait for; its command may
//! still run, as it could once written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::oneshot;

/// The most commands one pipeline carries; more queued start another.
pub(super) const MAX_BATCH: usize = 128;

/// The replies to a group of commands, in order (the first server error
/// among them is an `Err` carrying its code), and the `CLIENT ID` of the
/// connection that answered when it was asked for.
pub(super) type Answer = RedisResult<(Vec<Value>, Option<u64>)>;

/// Commands that go out together, adjacent and in order, and who waits for
/// their replies.
struct Job {
    cmds: Vec<Cmd>,
    with_id: bool,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A flush task is scheduled and has not yet taken the queue.
    scheduled: bool,
}

/// What coalescing did since the store connected (all connections):
/// `commands / pipelines` is the mean number of commands per write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescingStats {
    /// Pipelines written.
    pub pipelines: u64,
    /// Commands they carried (each store operation is one or two).
    pub commands: u64,
}

/// Queues commands for one connection and writes them as pipelines.
pub(super) struct Batcher {
    conn: ConnectionManager,
    queue: Mutex<Queue>,
    pipelines: AtomicU64,
    commands: AtomicU64,
}

impl Batcher {
    /// A batcher writing to `conn`.
    pub(super) fn new(conn: ConnectionManager) -> Arc<Self> {
        Arc::new(Batcher {
            conn,
            queue: Mutex::new(Queue::default()),
            pipelines: AtomicU64::new(0),
            commands: AtomicU64::new(0),
        })
    }

    /// Adds this connection's counts to `into`.
    pub(super) fn add_stats(&self, into: &mut CoalescingStats) {
        into.pipelines += self.pipelines.load(Ordering::Relaxed);
        into.commands += self.commands.load(Ordering::Relaxed);
    }

    /// Runs `cmds`, adjacent and in order, in the next pipeline; with
    /// `with_id`, that pipeline ends with `CLIENT ID` and its answer comes
    /// back too (all replies of one pipeline come over one connection).
    pub(super) async fn query(self: &Arc<Self>, cmds: Vec<Cmd>, with_id: bool) -> Answer {
        if tokio::runtime::Handle::try_current().is_err() {
            // Polled outside a Tokio runtime: no flush task can be spawned.
            return query_now(&mut self.conn.clone(), cmds, with_id).await;
        }
        let (reply, answer) = oneshot::channel();
        let schedule = {
            let mut q = self.queue.lock();
            q.jobs.push(Job {
                cmds,
                with_id,
                reply,
            });
            !std::mem::replace(&mut q.scheduled, true)
        };
        if schedule {
            self.spawn_flush();
        }
        answer.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                redis::ErrorKind::Io,
                "the pipeline carrying this command was dropped",
            )))
        })
    }

    /// Schedules a flush task. (Its future is named here as a boxed `dyn`,
    /// which keeps `flush`, which may call this, from being a recursive
    /// type.)
    fn spawn_flush(self: &Arc<Self>) {
        let this = self.clone();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(async move { this.flush().await });
        tokio::spawn(task);
    }

    /// Takes what is queued (at most [`MAX_BATCH`]) and sends it.
    async fn flush(self: Arc<Self>) {
        // A task spawned by a running task runs right after it (Tokio's
        // LIFO slot); yielding once lets the other tasks that are ready
        // now, and those woken by the I/O events now pending, queue their
        // commands first.
        tokio::task::yield_now().await;
        let jobs = {
            let mut q = self.queue.lock();
            let n = q.jobs.len().min(MAX_BATCH);
            let jobs: Vec<Job> = q.jobs.drain(..n).collect();
            if q.jobs.is_empty() {
                q.scheduled = false;
            } else {
                self.spawn_flush();
            }
            jobs
        };
        if jobs.is_empty() {
            return;
        }
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        let n: usize = jobs.iter().map(|j| j.cmds.len()).sum();
        self.commands.fetch_add(n as u64, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let (groups, replies): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|j| ((j.cmds, j.with_id), j.reply))
            .unzip();
        let answers = exchange(&mut conn, groups).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

/// Runs `cmds` as one pipeline on `conn`, without queueing (coalescing off,
/// or a Cluster connection).
pub(super) async fn query_now<C: ConnectionLike>(
    conn: &mut C,
    cmds: Vec<Cmd>,
    with_id: bool,
) -> Answer {
    let mut answers = exchange(conn, vec![(cmds, with_id)]).await;
    answers.pop().unwrap_or_else(|| {
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "a pipeline returned no answer",
        )))
    })
}

/// Writes groups of commands (each with whether it wants `CLIENT ID`) as
/// one pipeline; returns one answer per group, in order.
async fn exchange<C: ConnectionLike>(conn: &mut C, groups: Vec<(Vec<Cmd>, bool)>) -> Vec<Answer> {
    let with_id = groups.iter().any(|(_, id)| *id);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut sizes = Vec::with_capacity(groups.len());
    for (cmds, _) in groups {
        sizes.push(cmds.len());
        for cmd in cmds {
            pipe.add_command(cmd);
        }
    }
    if with_id {
        pipe.cmd("CLIENT").arg("ID");
    }
    let all = |e: RedisError| sizes.iter().map(|_| Err(e.clone())).collect();
    let mut values = match pipe.query_async::<Vec<Value>>(conn).await {
        Ok(values) => values,
        Err(e) => return all(e),
    };
    let id = if with_id {
        match values.pop() {
            Some(Value::Int(id)) => u64::try_from(id).ok(),
            _ => None,
        }
    } else {
        None
    };
    if values.len() != sizes.iter().sum::<usize>() {
        return all(RedisError::from((
            redis::ErrorKind::Parse,
            "a pipeline's reply count does not match its commands",
        )));
    }
    let mut values = values.into_iter();
    sizes
        .iter()
        .map(|&n| {
            let mine: Vec<Value> = values.by_ref().take(n).collect();
            let error = mine.iter().find_map(|v| match v {
                Value::ServerError(e) => Some(e.clone()),
                _ => None,
            });
            match error {
                Some(e) => Err(RedisError::from(e)),
                None => Ok((mine, id)),
            }
        })
        .collect()
}
