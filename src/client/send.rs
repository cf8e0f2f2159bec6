//! Sending the run: a fixed set of workers claim logical requests from a shared counter, keep a
//! connection alive between attempts, queue retries behind their backoff, and stop the run once
//! attempts in a row get no answer (nor `/health`, when timeouts are among them).
//!
//! Invariants: every attempt made is recorded once, and all come back sorted by request and
//! attempt; once the run stops (for its first cause only), workers take no more work and drop
//! their pending retries.
//!
//! Decisions worth knowing:
//! - A worker never sits idle through a backoff: a retry goes into the worker's own queue with
//!   its due time (now + backoff), and the worker's loop sends the earliest due retry if one is
//!   due, otherwise claims the next fresh logical request, and sleeps (until the earliest due
//!   retry) only when no fresh request is left ([`next_step`]). So a backoff is a minimum pause:
//!   a retry that falls due while its worker is busy goes out when that attempt ends. Attempts
//!   of different logical requests interleave on a worker, also with `--concurrency 1`.
//!   `--interval` pauses before each fresh request a worker claims (not its first); a retry
//!   waits for its backoff instead.

use super::wire::{
    classify_status, connect, describe_io_error, io_failure, is_timeout, receive,
    write_getbalance_request, AttemptOutcome, ReceiveFailure, RequestId, ResponseAssembler, Target,
    TransportError,
};
use super::{format_duration, MAX_RESPONSE_BYTES, READ_CHUNK, USER_AGENT};
use crate::chaos::{mix64, Outcome, Rng};
use crate::cli::ClientOptions;
use crate::sys;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A keep-alive connection idle longer than this is replaced before the next attempt: the server
/// closes idle connections after 5 s, and a request written into one it is closing is lost.
pub const MAX_IDLE_REUSE: Duration = Duration::from_secs(2);
/// Attempts in a row without an answer (connect failures and timeouts, across all workers, in
/// the order they end; see [`NoAnswerStreak`]) after which the run stops early, at the least.
/// A server that is gone (killed, firewalled) fails every connect, and without a stop the
/// client would try on for count × attempts × --timeout (20 minutes with the defaults) to
/// print a report of failures. A handful in a row can be a blip (SYNs lost, a listen queue
/// full for a moment), so a lone worker stops only after this many.
pub const MIN_UNREACHABLE_STREAK: u64 = 10;
/// Attempts without an answer in a row per worker after which the run stops early (when more
/// than [`MIN_UNREACHABLE_STREAK`]): every worker may be connecting when a blip hits, so one
/// failure each proves nothing, while three rounds of every worker failing do. Connect
/// timeouts run in parallel, so that is about three --timeouts of wall time.
pub const UNREACHABLE_STREAK_PER_WORKER: u64 = 3;
/// How often a waiting worker (backoff, --interval) looks whether the run has stopped: a
/// backoff may be long, and a stopped run must not wait it out.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often the progress line is redrawn.
pub const PROGRESS_PERIOD: Duration = Duration::from_millis(200);

/// Whether an attempt with this outcome is tried again (budget permitting). A transport error
/// got no answer at all, so it is retried like a timeout whenever retries are on; an empty
/// `retry_on` (`--retry-on none`) means no retries of any kind, as documented.
pub fn is_retried(outcome: &AttemptOutcome, retry_on: &[Outcome]) -> bool {
    match outcome {
        AttemptOutcome::Server(outcome) => retry_on.contains(outcome),
        AttemptOutcome::OtherStatus(_) => false,
        AttemptOutcome::Transport(_) => !retry_on.is_empty(),
    }
}

/// The pause before attempt `attempt + 1` ("full jitter"): uniform in
/// `[0, min(max_backoff, backoff * 2^(attempt-1))]`, where `uniform` is a draw in `[0, 1)`.
pub fn backoff_delay(
    attempt: u32,
    backoff: Duration,
    max_backoff: Duration,
    uniform: f64,
) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let ceiling = (backoff.as_secs_f64() * 2f64.powi(exponent)).min(max_backoff.as_secs_f64());
    let fraction = if uniform.is_finite() {
        uniform.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let seconds = ceiling * fraction;
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds)
    } else {
        Duration::ZERO
    }
}

struct Connection {
    stream: TcpStream,
    last_used: Instant,
    /// The socket's read timeout as last set, so it is set again only when it changes.
    read_timeout: Option<Duration>,
}

impl Connection {
    /// Takes over a connected stream; its write timeout is set here, once, since every
    /// attempt on it has the same one.
    fn new(stream: TcpStream, timeout: Duration) -> io::Result<Connection> {
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        Ok(Connection {
            stream,
            last_used: Instant::now(),
            read_timeout: None,
        })
    }
}

/// What one worker reuses from attempt to attempt, so that an attempt on a kept connection
/// allocates nothing: the request text, the read buffer and the response assembler.
struct Scratch {
    request: String,
    chunk: Vec<u8>,
    assembler: ResponseAssembler,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            request: String::new(),
            chunk: vec![0; READ_CHUNK],
            assembler: ResponseAssembler::new(MAX_RESPONSE_BYTES, false),
        }
    }
}

/// Whether a connection last used at `last_used` may carry another request at `now`.
fn is_fresh(last_used: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last_used) <= MAX_IDLE_REUSE
}

/// Whether a kept connection can carry the next request: the server has neither closed it nor
/// sent anything since its last answer. A close (a server's or a proxy's idle limit, a reset)
/// would otherwise be charged to the next request as a transport error the server never saw,
/// and late bytes (an answer the server sent twice) would be read as the next request's answer.
/// A close that comes after this look still fails the attempt, as it would for any client.
/// One `recv` that does not wait; a byte it takes is lost, but so is the connection then.
fn is_quiet(stream: &TcpStream) -> bool {
    matches!(
        sys::receive_without_waiting(stream, &mut [0u8; 1]),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock
    )
}

/// One classified attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The logical request, 1..=count.
    pub request: u64,
    /// 1 for the first try.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// The request was written completely (so the server may have logged it).
    pub sent: bool,
    /// From the start of the attempt (connecting included) to its classification.
    pub latency: Duration,
}

/// Counters the progress line reads while workers run.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    attempts: AtomicU64,
    by_outcome: [AtomicU64; Outcome::COUNT],
    other: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    fn record(&self, outcome: &AttemptOutcome) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match outcome {
            AttemptOutcome::Server(outcome) => {
                self.by_outcome[outcome.index()].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn line(&self, total: u64, elapsed: Duration) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let attempts = self.attempts.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            attempts as f64 / seconds
        } else {
            0.0
        };
        let mut line = format!("{done}/{total} requests  {rate:.0} attempts/s ");
        for outcome in Outcome::ALL {
            let count = self.by_outcome[outcome.index()].load(Ordering::Relaxed);
            let _ = write!(line, " {} {count}", outcome.name());
        }
        let _ = write!(line, "  other {}", self.other.load(Ordering::Relaxed));
        if done > 0 && done < total {
            let left = seconds * (total - done) as f64 / done as f64;
            let _ = write!(line, "  ETA {left:.0}s");
        }
        line
    }
}

/// Connect failures in a row that stop a run with `workers` workers: the larger of
/// [`MIN_UNREACHABLE_STREAK`] and [`UNREACHABLE_STREAK_PER_WORKER`] per worker.
pub fn unreachable_streak(workers: usize) -> u64 {
    let per_workers = UNREACHABLE_STREAK_PER_WORKER.saturating_mul(workers as u64);
    per_workers.max(MIN_UNREACHABLE_STREAK)
}

/// The least time a streak of attempts without an answer must span before it stops the run
/// (or, for timeouts, starts a `/health` probe), or the attempt timeout when that is longer.
/// A refused connect takes microseconds, so a count alone is reached within a millisecond of a
/// restart's first refusal: a server restarted with a gap of a tenth of a second would be
/// called unreachable and the rest of the run thrown away.
pub const MIN_STREAK_SPAN: Duration = Duration::from_secs(1);

/// How long a worker whose connect failed waits before its next attempt: a refusing server
/// answers in microseconds, and without a pause a worker would burn through thousands of
/// requests during a restart's gap (or the [`MIN_STREAK_SPAN`] before an early stop).
pub const CONNECT_FAILURE_PAUSE: Duration = Duration::from_millis(100);

/// The least time `GET /health` is given when a streak holds timeouts, connecting included
/// (or the attempt timeout, when longer): the kernel resends a dropped SYN after 1 s and again
/// 2 s later, so 3 s see a connect through a listen queue that was full for a moment (1 s,
/// the earlier window, gave up just before the first resend).
pub const HEALTH_PROBE_WINDOW: Duration = Duration::from_secs(3);

/// Why the workers stopped before sending every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCause {
    /// Attempts in a row without an answer when the run stopped (at least the bound).
    pub failures_in_a_row: u64,
    /// The last of them: `connection refused`, `connect timeout`, `no route to host`, …, or
    /// `timeout`.
    pub failure: &'static str,
    /// `None` when every one of them failed to connect (the server is unreachable). When
    /// some timed out instead (a frozen server whose kernel still accepts connections), why
    /// `GET /health` did not answer either: the server stopped answering.
    pub health_failure: Option<String>,
}

/// Attempts in a row, across all workers in the order they ended, that got no answer at all:
/// connect failures and timeouts. Anything the server answered (any status, even a reset or a
/// malformed answer) ends the streak. Pure, so its rules are tested without sockets.
#[derive(Debug)]
pub(super) struct NoAnswerStreak {
    /// [`unreachable_streak`] of the run.
    bound: u64,
    /// [`MIN_STREAK_SPAN`], or the attempt timeout when longer.
    min_span: Duration,
    count: u64,
    /// When the streak's first attempt ended.
    since: Option<Instant>,
    /// Whether a timeout is among them; else every one failed to connect.
    timed_out: bool,
    /// A worker is asking `/health`; the others do not ask too.
    probing: bool,
    /// How many streaks ended with an answer: one that ends during a probe shows the server
    /// answering again, whatever the probe met.
    ended: u64,
}

/// What the worker that noted an attempt does about the streak.
#[derive(Debug, PartialEq, Eq)]
enum StreakStep {
    Continue,
    /// Ask `GET /health`: the streak holds timeouts, which a healthy server with a high
    /// timeout weight gives too, so only a `/health` that does not answer either stops the run.
    Probe,
    /// Every attempt of the streak failed to connect: the server is unreachable.
    Stop(StopCause),
}

impl NoAnswerStreak {
    fn new(workers: usize, timeout: Duration) -> NoAnswerStreak {
        NoAnswerStreak {
            bound: unreachable_streak(workers),
            min_span: MIN_STREAK_SPAN.max(timeout),
            count: 0,
            since: None,
            timed_out: false,
            probing: false,
            ended: 0,
        }
    }

    /// Notes an attempt that ended at `now`: `no_answer` names the failure when it got no
    /// answer (see [`no_answer_name`]).
    fn note(&mut self, no_answer: Option<&'static str>, now: Instant) -> StreakStep {
        let Some(failure) = no_answer else {
            self.restart();
            return StreakStep::Continue;
        };
        self.count += 1;
        let since = *self.since.get_or_insert(now);
        self.timed_out |= failure == Outcome::Timeout.name();
        if self.count < self.bound || now.saturating_duration_since(since) < self.min_span {
            return StreakStep::Continue;
        }
        if !self.timed_out {
            return StreakStep::Stop(StopCause {
                failures_in_a_row: self.count,
                failure,
                health_failure: None,
            });
        }
        if self.probing {
            return StreakStep::Continue;
        }
        self.probing = true;
        StreakStep::Probe
    }

    /// `/health` answered: the server is alive, whatever its attempts time out with.
    /// What a finished `/health` probe, started after `ended_before` streaks had ended, means
    /// for the run: `None` to go on, or why it stops.
    fn probe_finished(
        &mut self,
        health: Result<(), String>,
        ended_before: u64,
        failure: &'static str,
    ) -> Option<StopCause> {
        match health {
            // Other attempts were answered meanwhile (a server frozen for a moment, a probe
            // lost in a full accept queue): the server is back, whatever the probe met.
            Err(_) if self.ended != ended_before => {}
            Err(reason) => {
                return Some(StopCause {
                    failures_in_a_row: self.count,
                    failure,
                    health_failure: Some(reason),
                })
            }
            Ok(()) => {}
        }
        self.probing = false;
        self.restart();
        None
    }

    fn restart(&mut self) {
        self.ended += 1;
        self.count = 0;
        self.since = None;
        self.timed_out = false;
    }
}

/// The failure's name when an attempt got no answer at all (a timeout, or a connect failure),
/// `None` when something answered.
fn no_answer_name(outcome: &AttemptOutcome) -> Option<&'static str> {
    match outcome {
        AttemptOutcome::Server(Outcome::Timeout) => Some(Outcome::Timeout.name()),
        AttemptOutcome::Transport(error) if error.is_connect_failure() => Some(error.name()),
        _ => None,
    }
}

/// Whether anything answers `GET /health` within `timeout`, connecting included: any response
/// will do, even one not finished in time (a `503` while the server's log file is stuck is an
/// answer too). Why not, otherwise.
fn probe_health(target: &Target, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    // While the listen queue is full the kernel drops the SYN and resends it after 1 s, then
    // 2 s later: one connect given the whole window (3 s at least) sees those resends.
    let mut stream = connect(target.address, timeout).map_err(|e| describe_io_error(&e))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n",
        target.host_header
    );
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| describe_io_error(&e))?;
    let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
    let mut chunk = vec![0; READ_CHUNK];
    let left = deadline.saturating_duration_since(Instant::now());
    match receive(&mut stream, &mut assembler, left, &mut chunk, &mut None) {
        Ok(_) => Ok(()),
        // An answer begun is a server alive, as it is for the no-answer streak.
        Err(ReceiveFailure::Transport(TransportError::TimeoutMidResponse)) => Ok(()),
        Err(ReceiveFailure::Timeout) => {
            Err(format!("no answer within {}", format_duration(timeout)))
        }
        Err(ReceiveFailure::Transport(error)) => Err(error.name().to_string()),
    }
}

/// What the workers share.
struct RunContext<'a> {
    options: &'a ClientOptions,
    target: &'a Target,
    run_id: &'a str,
    seed: u64,
    next_request: AtomicU64,
    progress: Progress,
    first_connection: Mutex<Option<TcpStream>>,
    streak: Mutex<NoAnswerStreak>,
    /// Set once, when the server is found unreachable or not answering; workers then take no
    /// more work.
    stopped: OnceLock<StopCause>,
}

impl RunContext<'_> {
    /// Counts an attempt towards the streak of attempts without an answer, or ends the
    /// streak; stops the run when the streak says so, after asking `/health` in this worker
    /// when the streak holds timeouts.
    fn note_outcome(&self, outcome: &AttemptOutcome) {
        let no_answer = no_answer_name(outcome);
        let (step, ended_before) = match self.streak.lock() {
            Ok(mut streak) => (streak.note(no_answer, Instant::now()), streak.ended),
            // A worker never panics holding it; should one, the run just goes on unguarded.
            Err(_) => return,
        };
        let cause = match step {
            StreakStep::Continue => return,
            StreakStep::Stop(cause) => cause,
            StreakStep::Probe => {
                // At least the streak's span: a probe that gives up on a loaded but healthy
                // server would stop a good run, while a frozen one costs this once.
                let timeout = self.options.timeout.max(HEALTH_PROBE_WINDOW);
                let health = probe_health(self.target, timeout);
                let Ok(mut streak) = self.streak.lock() else {
                    return;
                };
                match streak.probe_finished(health, ended_before, no_answer.unwrap_or("")) {
                    Some(cause) => cause,
                    None => return,
                }
            }
        };
        // Only the first cause is kept: the stop is for good, whatever ends after it.
        let _ = self.stopped.set(cause);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.get().is_some()
    }

    /// Sleeps for `duration`, or less once the run has stopped.
    fn pause(&self, duration: Duration) {
        let started = Instant::now();
        while !self.is_stopped() {
            let left = duration.saturating_sub(started.elapsed());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_POLL));
        }
    }
}

/// What sending produced.
#[derive(Debug)]
pub(super) struct Sent {
    /// Every attempt, sorted by request id.
    pub(super) attempts: Vec<AttemptRecord>,
    /// Set when the workers stopped early because the server could no longer be reached.
    pub(super) stopped: Option<StopCause>,
    /// The logical requests whose pending retry was given up when the run stopped.
    pub(super) retries_dropped: Vec<u64>,
}

/// Sends every logical request with its retries, until the server can no longer be reached
/// (see [`unreachable_streak`]). `first_connection` is an open connection for the first
/// worker, if there is one.
pub(super) fn send_all(
    options: &ClientOptions,
    target: &Target,
    run_id: &str,
    first_connection: Option<TcpStream>,
) -> Sent {
    let workers = options
        .concurrency
        .max(1)
        .min(usize::try_from(options.count.max(1)).unwrap_or(usize::MAX));
    let context = RunContext {
        options,
        target,
        run_id,
        seed: mix64(u64::from_str_radix(run_id, 16).unwrap_or(0)),
        next_request: AtomicU64::new(0),
        progress: Progress::default(),
        first_connection: Mutex::new(first_connection),
        streak: Mutex::new(NoAnswerStreak::new(workers, options.timeout)),
        stopped: OnceLock::new(),
    };
    let show_progress = !options.quiet && io::stderr().is_terminal();
    let started = Instant::now();
    let (mut records, retries_dropped) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let context = &context;
                scope.spawn(move || run_worker(context, worker))
            })
            .collect();
        if show_progress {
            scope.spawn(|| draw_progress(&context, started));
        }
        let mut all = Vec::new();
        let mut dropped = Vec::new();
        for handle in handles {
            // A worker never panics on input; should one panic anyway, its attempts are lost
            // and reconciliation will say so (unknown entries), rather than crashing the run.
            if let Ok((records, retries_dropped)) = handle.join() {
                all.extend(records);
                dropped.extend(retries_dropped);
            }
        }
        context.progress.finished.store(true, Ordering::Relaxed);
        (all, dropped)
    });
    if show_progress {
        let mut stderr = io::stderr();
        let _ = writeln!(
            stderr,
            "\r{}\x1b[K",
            context.progress.line(options.count, started.elapsed())
        );
    }
    records.sort_by_key(|record| (record.request, record.attempt));
    Sent {
        attempts: records,
        stopped: context.stopped.get().cloned(),
        retries_dropped,
    }
}

fn draw_progress(context: &RunContext<'_>, started: Instant) {
    let mut stderr = io::stderr();
    while !context.progress.finished.load(Ordering::Relaxed) {
        let line = context
            .progress
            .line(context.options.count, started.elapsed());
        let _ = write!(stderr, "\r{line}\x1b[K");
        let _ = stderr.flush();
        std::thread::sleep(PROGRESS_PERIOD);
    }
}

/// A retry waiting in its worker's queue for its backoff to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRetry {
    /// When the backoff has passed: the retry may go out from then on.
    due: Instant,
    request: u64,
    /// The attempt number it goes out as.
    attempt: u32,
}

/// What a worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextStep {
    /// Send the pending retry at this index of the queue.
    Retry(usize),
    /// Claim the next fresh logical request from the shared counter.
    Fresh,
    /// Nothing can go out before this instant.
    SleepUntil(Instant),
    /// No fresh request left and no retry pending.
    Finished,
}

/// The worker's choice at `now`, given its queue of `pending` retries and whether fresh
/// requests may be left. A due retry comes first (the earliest due, then the lowest request,
/// so the choice is deterministic), which keeps the queue short and a retry's wait close to
/// its backoff; else a fresh request, so the worker works through the backoff; it sleeps only
/// when there is nothing else to do.
fn next_step(pending: &[PendingRetry], fresh_left: bool, now: Instant) -> NextStep {
    let earliest = pending
        .iter()
        .enumerate()
        .min_by_key(|(_, retry)| (retry.due, retry.request));
    match earliest {
        Some((index, retry)) if retry.due <= now => NextStep::Retry(index),
        _ if fresh_left => NextStep::Fresh,
        Some((_, retry)) => NextStep::SleepUntil(retry.due),
        None => NextStep::Finished,
    }
}

/// One worker's attempts, and the requests whose pending retry it gave up when the run stopped.
fn run_worker(context: &RunContext<'_>, worker: usize) -> (Vec<AttemptRecord>, Vec<u64>) {
    let options = context.options;
    let mut rng = Rng::with_seed(mix64(context.seed ^ worker as u64));
    let first = match context.first_connection.lock() {
        Ok(mut first) => first.take(),
        Err(_) => None,
    };
    // Should setting its write timeout fail, the first attempt simply opens another one.
    let mut connection = first.and_then(|stream| Connection::new(stream, options.timeout).ok());
    let mut scratch = Scratch::new();
    let mut records = Vec::new();
    let mut pending: Vec<PendingRetry> = Vec::new();
    let mut fresh_left = true;
    let mut first_request = true;
    loop {
        if context.is_stopped() {
            // The server is gone: its retries would only fail the same way.
            let dropped = pending.iter().map(|retry| retry.request).collect();
            return (records, dropped);
        }
        let (request, attempt) = match next_step(&pending, fresh_left, Instant::now()) {
            NextStep::Retry(index) => {
                let retry = pending.swap_remove(index);
                (retry.request, retry.attempt)
            }
            NextStep::Fresh => {
                let request = context.next_request.fetch_add(1, Ordering::Relaxed) + 1;
                if request > options.count {
                    fresh_left = false;
                    continue;
                }
                if !first_request && !options.interval.is_zero() {
                    context.pause(options.interval);
                    if context.is_stopped() {
                        // Claimed but never sent: the report counts it among the unsent.
                        continue;
                    }
                }
                first_request = false;
                (request, 1)
            }
            NextStep::SleepUntil(due) => {
                context.pause(due.saturating_duration_since(Instant::now()));
                continue;
            }
            NextStep::Finished => break,
        };
        let record = perform_attempt(context, &mut connection, &mut scratch, request, attempt);
        context.progress.record(&record.outcome);
        context.note_outcome(&record.outcome);
        if matches!(&record.outcome, AttemptOutcome::Transport(error) if error.is_connect_failure())
        {
            context.pause(CONNECT_FAILURE_PAUSE);
        }
        let again = attempt <= options.retries && is_retried(&record.outcome, &options.retry_on);
        records.push(record);
        if again {
            let delay = backoff_delay(
                attempt,
                options.backoff,
                options.max_backoff,
                rng.next_f64(),
            );
            pending.push(PendingRetry {
                due: Instant::now() + delay,
                request,
                attempt: attempt.saturating_add(1),
            });
        } else {
            context.progress.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    (records, Vec::new())
}

fn perform_attempt(
    context: &RunContext<'_>,
    connection: &mut Option<Connection>,
    scratch: &mut Scratch,
    request: u64,
    attempt: u32,
) -> AttemptRecord {
    let started = Instant::now();
    let id = RequestId {
        run_id: context.run_id,
        request,
        attempt,
    };
    let (outcome, sent) = exchange(
        context.target,
        context.options.timeout,
        connection,
        scratch,
        id,
    );
    AttemptRecord {
        request,
        attempt,
        outcome,
        sent,
        latency: started.elapsed(),
    }
}

/// One attempt on the worker's connection (opened when missing or stale); the connection is
/// kept only after a complete keep-alive response with nothing after it.
fn exchange(
    target: &Target,
    timeout: Duration,
    connection: &mut Option<Connection>,
    scratch: &mut Scratch,
    id: RequestId<'_>,
) -> (AttemptOutcome, bool) {
    let reusable = connection
        .take()
        .filter(|open| is_fresh(open.last_used, Instant::now()) && is_quiet(&open.stream));
    let mut open = match reusable {
        Some(open) => open,
        None => match connect(target.address, timeout)
            .and_then(|stream| Connection::new(stream, timeout))
        {
            Ok(open) => open,
            Err(error) if is_timeout(&error) => {
                return (
                    AttemptOutcome::Transport(TransportError::ConnectTimeout),
                    false,
                )
            }
            Err(error) => return (AttemptOutcome::Transport(io_failure(&error)), false),
        },
    };
    write_getbalance_request(&mut scratch.request, &target.host_header, id);
    if let Err(error) = open.stream.write_all(scratch.request.as_bytes()) {
        return (AttemptOutcome::Transport(io_failure(&error)), false);
    }
    scratch.assembler.reset();
    let received = receive(
        &mut open.stream,
        &mut scratch.assembler,
        timeout,
        &mut scratch.chunk,
        &mut open.read_timeout,
    );
    match received {
        Ok(response) => {
            if response.keep_alive && !response.trailing_bytes {
                open.last_used = Instant::now();
                *connection = Some(open);
            }
            (classify_status(response.status), true)
        }
        // Dropping the stream here closes it, which is how the server learns we gave up.
        Err(ReceiveFailure::Timeout) => (AttemptOutcome::Server(Outcome::Timeout), true),
        Err(ReceiveFailure::Transport(error)) => (AttemptOutcome::Transport(error), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_support::{answer_each, loopback, read_head};
    use std::net::TcpListener;

    #[test]
    fn retry_policy_follows_retry_on_and_retries_transport_errors_unless_none() {
        let timeout_only = [Outcome::Timeout];
        let cases = [
            (AttemptOutcome::Server(Outcome::Timeout), true),
            (AttemptOutcome::Server(Outcome::ServerError), false),
            (AttemptOutcome::Server(Outcome::Balance), false),
            (AttemptOutcome::OtherStatus(404), false),
            (
                AttemptOutcome::Transport(TransportError::ConnectionReset),
                true,
            ),
        ];
        for (outcome, expected) in cases {
            assert_eq!(is_retried(&outcome, &timeout_only), expected, "{outcome:?}");
        }
        let with_500 = [Outcome::Timeout, Outcome::ServerError];
        assert!(is_retried(
            &AttemptOutcome::Server(Outcome::ServerError),
            &with_500
        ));
        assert!(!is_retried(&AttemptOutcome::Server(Outcome::Timeout), &[]));
        // `--retry-on none`: nothing is retried, transport errors included.
        for error in [
            TransportError::ConnectionReset,
            TransportError::ClosedBeforeResponse,
            TransportError::Malformed("garbage".into()),
        ] {
            assert!(!is_retried(&AttemptOutcome::Transport(error), &[]));
        }
        // Retries on, for any outcome: transport errors are retried like timeouts.
        assert!(is_retried(
            &AttemptOutcome::Transport(TransportError::ConnectionRefused),
            &[Outcome::ServerError]
        ));
    }

    #[test]
    fn backoff_is_full_jitter_under_a_capped_exponential() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let cases = [
            // (attempt, uniform draw, expected delay in ms)
            (1, 0.0, 0.0),
            (1, 0.5, 50.0),
            (2, 0.5, 100.0),
            (3, 0.999, 399.6),
            (5, 1.0, 1600.0),
            (6, 1.0, 2000.0),
            (200, 0.5, 1000.0),
            (u32::MAX, 0.25, 500.0),
            (1, f64::NAN, 0.0),
        ];
        for (attempt, uniform, expected) in cases {
            let delay = backoff_delay(attempt, base, cap, uniform).as_secs_f64() * 1000.0;
            assert!(
                (delay - expected).abs() < 1e-6,
                "attempt {attempt}: {delay}"
            );
        }
        let mut rng = Rng::with_seed(42);
        for attempt in 1..=10 {
            let ceiling = (100.0 * 2f64.powi(attempt as i32 - 1)).min(2000.0);
            let delay = backoff_delay(attempt, base, cap, rng.next_f64()).as_secs_f64() * 1000.0;
            assert!(
                (0.0..=ceiling).contains(&delay),
                "attempt {attempt}: {delay}"
            );
        }
        assert_eq!(backoff_delay(3, Duration::ZERO, cap, 0.7), Duration::ZERO);
    }

    #[test]
    fn idle_connections_past_the_reuse_limit_are_replaced() {
        let now = Instant::now() + Duration::from_secs(60);
        assert!(is_fresh(now - MAX_IDLE_REUSE, now));
        assert!(!is_fresh(
            now - MAX_IDLE_REUSE - Duration::from_millis(1),
            now
        ));
        assert!(is_fresh(now, now - Duration::from_secs(1)));
    }

    fn retry(due: Instant, request: u64, attempt: u32) -> PendingRetry {
        PendingRetry {
            due,
            request,
            attempt,
        }
    }

    #[test]
    fn a_worker_sends_a_due_retry_first_then_fresh_work_and_sleeps_only_when_none_is_left() {
        let now = Instant::now() + Duration::from_secs(60);
        let ms = Duration::from_millis;
        let queue = [
            retry(now + ms(30), 4, 2),
            retry(now - ms(5), 7, 3),
            retry(now - ms(20), 9, 2),
            retry(now + ms(10), 2, 4),
        ];
        let cases: [(&[PendingRetry], bool, NextStep); 9] = [
            // The earliest due retry wins, fresh requests left or not.
            (&queue, true, NextStep::Retry(2)),
            (&queue, false, NextStep::Retry(2)),
            // Due exactly now counts as due.
            (&[retry(now, 5, 2)], true, NextStep::Retry(0)),
            // Equal due times: the lower request, whatever the queue order.
            (
                &[retry(now - ms(1), 8, 2), retry(now - ms(1), 3, 2)],
                true,
                NextStep::Retry(1),
            ),
            // Nothing due: fresh work instead of waiting out the backoff.
            (&queue[..1], true, NextStep::Fresh),
            (&[queue[0], queue[3]], true, NextStep::Fresh),
            (&[], true, NextStep::Fresh),
            // No fresh work left: sleep until the earliest retry falls due.
            (
                &[queue[0], queue[3]],
                false,
                NextStep::SleepUntil(now + ms(10)),
            ),
            (&[], false, NextStep::Finished),
        ];
        for (pending, fresh_left, expected) in cases {
            assert_eq!(
                next_step(pending, fresh_left, now),
                expected,
                "{pending:?} fresh left {fresh_left}"
            );
        }
    }

    /// The id of attempt `attempt` of request 1 of run `ab`, the one request these tests send.
    fn first_request(attempt: u32) -> RequestId<'static> {
        RequestId {
            run_id: "ab",
            request: 1,
            attempt,
        }
    }

    #[test]
    fn an_attempt_answered_with_early_hints_gets_the_final_answer_on_a_kept_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = loopback(listener.local_addr().unwrap().port());
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut buffer = Vec::new();
            while read_head(&mut stream, &mut buffer).is_some() {
                let reply = "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n\
                             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        });
        let mut connection = None;
        let mut scratch = Scratch::new();
        for attempt in 1..=3 {
            let id = first_request(attempt);
            let timeout = Duration::from_secs(2);
            let outcome = exchange(&target, timeout, &mut connection, &mut scratch, id);
            assert_eq!(outcome, (AttemptOutcome::Server(Outcome::Balance), true));
            // Kept: the 200 was read to its end, nothing of it is left for the next attempt.
            assert!(connection.is_some(), "attempt {attempt}");
        }
    }

    #[test]
    fn a_kept_connection_the_server_closed_or_wrote_to_since_is_not_reused() {
        // After each answer the server either closes (an idle limit) or sends a stray second
        // answer (a server out of step); the next attempt must get its own answer either way.
        for stray in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let target = loopback(listener.local_addr().unwrap().port());
            std::thread::spawn(move || {
                // A thread per connection: the one held open must not delay the next accept.
                for _ in 0..2 {
                    let Ok((mut stream, _)) = listener.accept() else {
                        return;
                    };
                    std::thread::spawn(move || {
                        let mut buffer = Vec::new();
                        if read_head(&mut stream, &mut buffer).is_none() {
                            return;
                        }
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(reply).is_err() || !stray {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        let _ = stream.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
                        // Held open, so only the stray bytes tell it apart.
                        std::thread::sleep(Duration::from_secs(2));
                    });
                }
            });
            let mut connection = None;
            let mut scratch = Scratch::new();
            for attempt in 1..=2 {
                let id = first_request(attempt);
                let timeout = Duration::from_secs(2);
                let outcome = exchange(&target, timeout, &mut connection, &mut scratch, id);
                assert_eq!(
                    outcome,
                    (AttemptOutcome::Server(Outcome::Balance), true),
                    "stray {stray}, attempt {attempt}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    #[test]
    fn a_response_begun_but_not_finished_in_time_is_no_timeout_draw() {
        // First connection: a head and part of the body, then nothing. Second: nothing at all.
        let part = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart".to_vec();
        let target = answer_each(vec![part, Vec::new()], true);
        let expected = [
            AttemptOutcome::Transport(TransportError::TimeoutMidResponse),
            AttemptOutcome::Server(Outcome::Timeout),
        ];
        for (attempt, expected) in (1..).zip(expected) {
            let id = first_request(attempt);
            let mut connection = None;
            let outcome = exchange(
                &target,
                Duration::from_millis(150),
                &mut connection,
                &mut Scratch::new(),
                id,
            );
            assert_eq!(outcome, (expected, true), "attempt {attempt}");
        }
    }

    #[test]
    fn a_health_answer_begun_but_not_finished_shows_a_server_alive() {
        let part = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok".to_vec();
        let target = answer_each(vec![part], true);
        assert_eq!(probe_health(&target, Duration::from_millis(200)), Ok(()));
    }

    #[test]
    fn the_unreachable_streak_grows_with_the_workers_from_a_floor() {
        let cases = [(1, 10), (2, 10), (3, 10), (4, 12), (64, 192), (1024, 3072)];
        for (workers, streak) in cases {
            assert_eq!(unreachable_streak(workers), streak, "{workers} workers");
        }
        assert_eq!(unreachable_streak(usize::MAX), u64::MAX);
    }

    #[test]
    fn unreachable_routes_are_connect_failures_with_their_own_names() {
        // Before, these were "I/O error"s, which reset the streak: a firewalled server was
        // tried for every request instead of stopping the run.
        let cases = [
            (io::ErrorKind::HostUnreachable, "no route to host"),
            (io::ErrorKind::NetworkUnreachable, "network unreachable"),
            (io::ErrorKind::AddrNotAvailable, "address not available"),
            (io::ErrorKind::ConnectionRefused, "connection refused"),
        ];
        for (kind, name) in cases {
            let error = io_failure(&kind.into());
            assert!(error.is_connect_failure(), "{kind:?}");
            assert_eq!(error.name(), name);
            let outcome = AttemptOutcome::Transport(error);
            assert_eq!(no_answer_name(&outcome), Some(name));
        }
        assert_eq!(
            no_answer_name(&AttemptOutcome::Server(Outcome::Timeout)),
            Some("timeout")
        );
        for answered in [
            AttemptOutcome::Server(Outcome::Forbidden),
            AttemptOutcome::OtherStatus(503),
            AttemptOutcome::Transport(TransportError::ConnectionReset),
            AttemptOutcome::Transport(io_failure(&io::ErrorKind::PermissionDenied.into())),
        ] {
            assert_eq!(no_answer_name(&answered), None, "{answered:?}");
        }
    }

    #[test]
    fn a_streak_stops_the_run_only_when_long_enough_in_count_and_in_time() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let refused = Some("connection refused");
        // One worker: a bound of 10, and a span of at least MIN_STREAK_SPAN (1 s > 200 ms).
        let mut streak = NoAnswerStreak::new(1, Duration::from_millis(200));
        // A restart's gap: twenty refusals within a millisecond do not stop the run.
        for _ in 0..20 {
            assert_eq!(streak.note(refused, at(1)), StreakStep::Continue);
        }
        // An answer ends the streak; the span starts again with the next failure.
        assert_eq!(streak.note(None, at(2)), StreakStep::Continue);
        for millis in 3..12 {
            assert_eq!(streak.note(refused, at(millis)), StreakStep::Continue);
        }
        // Ten in a row, but spanning 9 ms; then one a second after the first: stop.
        assert_eq!(streak.note(refused, at(500)), StreakStep::Continue);
        let unreachable = Some("no route to host");
        assert_eq!(
            streak.note(unreachable, at(1003)),
            StreakStep::Stop(StopCause {
                failures_in_a_row: 11,
                failure: "no route to host",
                health_failure: None,
            })
        );

        // A timeout among them: /health decides, asked by one worker at a time.
        let mut streak = NoAnswerStreak::new(4, Duration::from_secs(2));
        assert_eq!(
            (streak.bound, streak.min_span),
            (12, Duration::from_secs(2))
        );
        let timeout = Some("timeout");
        for millis in 0..12 {
            assert_eq!(streak.note(timeout, at(millis)), StreakStep::Continue);
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(refused, at(2000)), StreakStep::Probe);
        assert_eq!(streak.note(timeout, at(2001)), StreakStep::Continue);
        assert_eq!(streak.probe_finished(Ok(()), ended_before, "timeout"), None);
        assert_eq!(streak.count, 0);
        // The next probe only after another full streak.
        for millis in 0..12 {
            assert_eq!(
                streak.note(timeout, at(3000 + millis)),
                StreakStep::Continue
            );
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(timeout, at(5000)), StreakStep::Probe);
        // The probe failed, but an attempt was answered while it ran (a server frozen for a
        // moment): the run goes on, and a later streak may probe again.
        assert_eq!(streak.note(None, at(5100)), StreakStep::Continue);
        assert_eq!(streak.note(timeout, at(5200)), StreakStep::Continue);
        let lost = Err("timed out".to_string());
        assert_eq!(
            streak.probe_finished(lost.clone(), ended_before, "timeout"),
            None
        );
        assert!(!streak.probing);
        // A probe that fails with nothing answered meanwhile stops the run.
        for millis in 0..12 {
            streak.note(timeout, at(6000 + millis));
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(timeout, at(8000)), StreakStep::Probe);
        assert_eq!(
            streak.probe_finished(lost, ended_before, "timeout"),
            Some(StopCause {
                failures_in_a_row: 13,
                failure: "timeout",
                health_failure: Some("timed out".into()),
            })
        );
    }
}
