//! Connections: the accept loop, a fixed pool of worker threads, and one poller thread per core.
//! The pollers hold idle, slow and hung connections, so those cost a socket and not a thread,
//! and answer requests in place (no hand-off per request, nothing that waits); the workers do
//! what may take a while: request bodies, `/getlogs` and `/stats`, refusals. This module starts
//! them, accepts, and holds what they share; the workers are in `worker`, the pollers in `poller`.
//!
//! Invariants: a fixed number of threads whatever the load; every socket has a deadline; accept
//! errors are survived; past `max_connections` a new connection gets 503 and is closed; the count
//! of open connections is kept by a drop guard, so it cannot drift.
//!
//! Every open connection is in exactly one place at a time: the worker queue, a worker's hands,
//! or its poller (or that poller's inbox). A new connection starts in its poller. Workers never
//! wait for a slow client longer than [`KEEP_ALIVE_LINGER`] between requests: a connection that
//! goes quiet goes back to its poller. No lock is held across I/O.

use crate::clock::{self, UtcTime};
use crate::http::{self, ChunkedDecoder, Response, MAX_HEADER_SECTION, MAX_REQUEST_LINE};
use crate::routes::{App, Disposition, LogStream};
use crate::sys::{self, Epoll, Watch};
use std::collections::VecDeque;
use std::io::{self, PipeWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod poller;
mod worker;

use poller::{run_poller, ParkKind, Parked};
use worker::run_worker;

/// Stack of every server thread: handlers keep their data on the heap, and a small fixed stack
/// keeps thousands of configured workers cheap.
pub const THREAD_STACK_SIZE: usize = 256 * 1024;
/// Read buffer given to a new connection; enough for any ordinary request head.
pub const READ_BUFFER_INITIAL: usize = 4 * 1024;
/// Room past the parser's own limits (empty lines before the request line, line ends), so the
/// parser, not the buffer, decides between 414 and 431.
pub const HEAD_SLACK: usize = 1024;
/// Largest read buffer: a request head that does not fit is refused with 431.
pub const HEAD_LIMIT: usize = MAX_REQUEST_LINE + MAX_HEADER_SECTION + HEAD_SLACK;
/// Answer bytes the kernel holds unsent per connection (`sys::limit_unsent`; checked before
/// each write, so the last write may go past it): a client that stops reading costs about this
/// plus what is in flight to it (42-47 KiB on loopback), not the 4 MiB the kernel would let
/// its send buffer grow to. 32 KiB downloads a 21 MB `/getlogs` over loopback as fast as no
/// cap does, and 600 stalled readers hold 25 MiB of TCP memory instead of 557 MiB (more with a
/// tiny receive window, which cuts the queue into small segments: 1,000 slowhttptest -X readers
/// with 512 B to 1 KiB windows took 79 MiB, both ends counted).
pub const UNSENT_LIMIT: u32 = 32 * 1024;
/// Longest a write to a client may go without progress; a stalled reader loses its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a client's kernel must take of the answers queued for it (all of them, when less are
/// left) within [`QUEUE_PATIENCE`] write timeouts for its connection to be kept. Any reading at
/// all would let a client that takes a few bytes now and then hold its connection for hours.
pub const MIN_QUEUE_PROGRESS: usize = 16 * 1024;
/// Write timeouts the answers queued in the kernel may go without [`MIN_QUEUE_PROGRESS`]
/// before the client is given up on. What the server sees is what the client's kernel takes,
/// which can lag what the client reads by tens of seconds: a closed receive window opens only
/// as whole buffers are freed (up to 64 KiB on loopback), so a client reading 4 KiB/s from a
/// full default buffer may take nothing new for 16 s.
pub const QUEUE_PATIENCE: u32 = 3;
/// Longest a closing connection is drained after its last response (RFC 9112 §9.6), so the
/// client can read that response before the socket goes away.
pub const LINGERING_CLOSE: Duration = Duration::from_secs(2);
/// Longest from a request's first byte to the end of its head; then 408 and close.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request body may take to arrive once its head is complete; then close.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a keep-alive connection may sit without starting a request; then close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker waits for the next request on its connection before parking it. Zero: it takes
/// what has already arrived and otherwise parks the connection at once and serves the next one in
/// the queue. A blocking wait costs a thread switch per request (the worker sleeps until that
/// client's next request, and one sleeping thread per connection is what the scheduler then
/// juggles); a parked connection's next requests are answered by the poller, whose one `epoll_wait`
/// reports many ready connections, without any thread switch. Measured (before the poller answered
/// in place, when it handed each ready connection back to a worker) with `wrk -t1 -c64` on one core
/// (medians of 3): a 20 ms linger with 32 workers gave 65k req/s, 15.1 µs of CPU per request, 0.81
/// thread switches per request and a p99 of 8.6 ms (11 ms with 10,000 hung connections held); no
/// linger with 8 workers 64k req/s, 15.5 µs, 0.49 switches and a p99 of 2.4 ms (5.0 ms with 10,000
/// hung). Throughput and CPU stay the same; the tail is what the blocking linger cost. A nonzero
/// linger is still supported: the worker then blocks that long.
pub const KEEP_ALIVE_LINGER: Duration = Duration::ZERO;
/// Pause after an accept error that signals exhausted resources (files, buffers, memory), so the
/// acceptor does not spin while they are scarce.
pub const ACCEPT_RESOURCE_BACKOFF: Duration = Duration::from_millis(20);
/// At most one accept or poller error line per this interval on stderr.
pub const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest single epoll wait: the poller rechecks its state at least this often.
pub const POLL_WAIT_CAP: Duration = Duration::from_secs(1);
/// File descriptors kept aside from connections: listener, log file, stdio (about 5), the socket
/// of a connection being turned away, and headroom.
pub const FILE_DESCRIPTOR_RESERVE: u64 = 64;
/// File descriptors each poller keeps open: its epoll instance and the two ends of its wake pipe.
pub const POLLER_DESCRIPTORS: usize = 3;
/// The least kept aside under a small open-file limit, where the full reserve (a quarter of the
/// limit at most) would leave almost nothing for connections.
pub const FILE_DESCRIPTOR_RESERVE_MINIMUM: u64 = 16;
/// Reads of up to [`READ_BUFFER_INITIAL`] bytes a hung connection gets per readiness report, so
/// one flooding client cannot monopolise the poller (level-triggered epoll reports it again).
pub const HUNG_READS_PER_EVENT: usize = 16;
/// Requests the poller answers on one connection per turn; a long pipeline then waits for the
/// other ready connections, so one client cannot hold up the others.
pub const REQUESTS_PER_TURN: usize = 16;
/// A worker's response buffer above this capacity is given back after the response.
pub const OUT_BUFFER_RETAINED: usize = 256 * 1024;
/// How long shutdown waits for the acceptor after waking it; past that it is left behind.
pub const ACCEPTOR_JOIN_GRACE: Duration = Duration::from_secs(2);
/// The body of the 503 sent past `max_connections`.
pub const BUSY_BODY: &[u8] = b"server busy: too many connections\n";
/// Connections past `max_connections` whose 503 waits for their request line (to tell a HEAD,
/// which gets no content) and is followed by a lingering close (what they still send is read and
/// dropped, so the 503 is not lost to a reset), at most. They are past the limit already, so
/// only a few; beyond this the 503 goes at once and a plain close follows.
pub const MAX_TURNED_AWAY: usize = 256;
/// A busy server suggests a retry soon, as RFC 9110 §10.2.3 allows for 503.
const RETRY_AFTER: (&str, &str) = ("Retry-After", "1");

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The epoll token of the wake pipe; slab tokens never reach it (index below 2^32 - 1).
const WAKE_TOKEN: u64 = u64::MAX;

// Linux errno values for accept failures that mean "out of resources, try again later".
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// How the server listens and how many resources it may use.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Worker threads: everything that may block.
    pub threads: usize,
    /// Poller threads: each holds its share of the connections and answers every request that
    /// needs no worker (1 to [`MAX_POLLERS`]).
    pub pollers: usize,
    pub max_connections: usize,
}

/// The most poller threads: past this many cores the acceptor and the log are the limit.
pub const MAX_POLLERS: usize = 64;

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// Zero threads, pollers or connections were asked for.
    InvalidConfig(&'static str),
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    /// The epoll instance or its wake pipe could not be created.
    Poller(io::Error),
    /// A thread could not be started.
    Spawn(io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::InvalidConfig(what) => write!(f, "invalid server configuration: {what}"),
            ServerError::Bind { address, source } => {
                write!(f, "cannot listen on {address}: {source}")
            }
            ServerError::Poller(source) => write!(f, "cannot create the poller: {source}"),
            ServerError::Spawn(source) => write!(f, "cannot start a server thread: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::InvalidConfig(_) => None,
            ServerError::Bind { source, .. }
            | ServerError::Poller(source)
            | ServerError::Spawn(source) => Some(source),
        }
    }
}

/// The deadlines the server applies; tests shorten them, the binary uses [`Timeouts::STANDARD`].
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    linger: Duration,
    idle: Duration,
    header: Duration,
    body: Duration,
    write: Duration,
}

impl Timeouts {
    const STANDARD: Timeouts = Timeouts {
        linger: KEEP_ALIVE_LINGER,
        idle: IDLE_TIMEOUT,
        header: HEADER_TIMEOUT,
        body: BODY_TIMEOUT,
        write: WRITE_TIMEOUT,
    };
}

/// A server whose threads are running.
pub struct RunningServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    pollers: Vec<JoinHandle<()>>,
    /// `shutdown` ran; the drop that follows has nothing left to do.
    stopped: bool,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .field("workers", &self.workers.len())
            .field("pollers", &self.pollers.len())
            .field("max_connections", &self.shared.max_connections)
            .finish()
    }
}

/// Binds, spawns the threads and returns at once.
pub fn start(config: &ServerConfig, app: Arc<App>) -> Result<RunningServer, ServerError> {
    start_with_timeouts(config, app, Timeouts::STANDARD)
}

fn start_with_timeouts(
    config: &ServerConfig,
    app: Arc<App>,
    timeouts: Timeouts,
) -> Result<RunningServer, ServerError> {
    if config.threads == 0 {
        return Err(ServerError::InvalidConfig("at least one thread is needed"));
    }
    if config.pollers == 0 || config.pollers > MAX_POLLERS {
        return Err(ServerError::InvalidConfig(
            "the poller count must be 1 to 64",
        ));
    }
    if config.max_connections == 0 {
        return Err(ServerError::InvalidConfig(
            "at least one connection must be allowed",
        ));
    }
    let bind_error = |source| ServerError::Bind {
        address: config.listen,
        source,
    };
    let listener = listen(config.listen).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let max_connections = match sys::raise_open_file_limit() {
        Ok(limit) => {
            let kept_by_threads = config.threads + POLLER_DESCRIPTORS * config.pollers;
            let allowed =
                connections_within_file_limit(config.max_connections, kept_by_threads, limit);
            if allowed < config.max_connections {
                say!(
                    "unreliable: warning: the open-file limit ({limit}) allows only {allowed} \
                     connections, not {}",
                    config.max_connections
                );
            }
            allowed
        }
        Err(error) => {
            say!("unreliable: warning: cannot read the open-file limit: {error}");
            config.max_connections
        }
    };
    let mut inboxes = Vec::with_capacity(config.pollers);
    let mut poller_ends = Vec::with_capacity(config.pollers);
    for _ in 0..config.pollers {
        let epoll = Epoll::new().map_err(ServerError::Poller)?;
        let (wake_reader, wake_writer) = io::pipe().map_err(ServerError::Poller)?;
        epoll
            .add(wake_reader.as_raw_fd(), WAKE_TOKEN, Watch::Level)
            .map_err(ServerError::Poller)?;
        inboxes.push(Inbox {
            parking: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            wake_writer,
        });
        poller_ends.push((epoll, wake_reader));
    }

    let shared = Arc::new(Shared {
        app,
        timeouts,
        max_connections,
        shutting_down: AtomicBool::new(false),
        open_connections: Arc::new(AtomicUsize::new(0)),
        turned_away: Arc::new(AtomicUsize::new(0)),
        queue: Mutex::new(VecDeque::new()),
        queue_ready: Condvar::new(),
        queue_length: AtomicUsize::new(0),
        sleeping_workers: AtomicUsize::new(0),
        inboxes,
        next_poller: AtomicUsize::new(0),
    });
    let mut server = RunningServer {
        local_addr,
        shared: Arc::clone(&shared),
        acceptor: None,
        workers: Vec::with_capacity(config.threads),
        pollers: Vec::with_capacity(config.pollers),
        stopped: false,
    };
    // The acceptor starts last, so no connection arrives before someone can serve it.
    let spawned = (|| {
        for (index, (epoll, wake_reader)) in poller_ends.into_iter().enumerate() {
            let poller_shared = Arc::clone(&shared);
            server.pollers.push(spawn_named(
                format!("unreliable-poller-{index}"),
                move || run_poller(&poller_shared, index, &epoll, wake_reader),
            )?);
        }
        for index in 0..config.threads {
            let worker_shared = Arc::clone(&shared);
            server.workers.push(spawn_named(
                format!("unreliable-worker-{index}"),
                move || run_worker(&worker_shared),
            )?);
        }
        let acceptor_shared = Arc::clone(&shared);
        server.acceptor = Some(spawn_named("unreliable-acceptor".to_string(), move || {
            run_acceptor(&acceptor_shared, &listener)
        })?);
        Ok(())
    })();
    match spawned {
        Ok(()) => Ok(server),
        Err(error) => {
            server.stop();
            Err(ServerError::Spawn(error))
        }
    }
}

fn spawn_named(name: String, body: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name)
        .stack_size(THREAD_STACK_SIZE)
        .spawn(body)
}

/// How many connections fit under the open-file limit `limit`, given what the threads (one per
/// worker, [`POLLER_DESCRIPTORS`] per poller) and the process itself need; never more than asked
/// for, never zero.
fn connections_within_file_limit(requested: usize, kept_by_threads: usize, limit: u64) -> usize {
    // Under `ulimit -n 64` the full reserve would leave a single connection.
    let reserve = (kept_by_threads as u64)
        .saturating_add(FILE_DESCRIPTOR_RESERVE)
        .min((limit / 4).max(FILE_DESCRIPTOR_RESERVE_MINIMUM));
    let available = limit.saturating_sub(reserve).max(1);
    usize::try_from(available).map_or(requested, |available| requested.min(available))
}

impl RunningServer {
    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open right now (queued, being served or parked).
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Acquire)
    }

    /// Stops accepting, lets each worker finish the request in hand, closes parked connections,
    /// and joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.shutting_down.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            // accept() has no timeout: a connection of our own is what wakes it.
            let _ =
                TcpStream::connect_timeout(&wake_address(self.local_addr), Duration::from_secs(1));
            let deadline = Instant::now() + ACCEPTOR_JOIN_GRACE;
            while !acceptor.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if acceptor.is_finished() {
                let _ = acceptor.join();
            } else {
                say!("unreliable: warning: the accept loop did not stop; leaving it behind");
            }
        }
        {
            // Taking the lock orders the flag before any worker's next wait.
            let _queue = lock(&self.shared.queue);
            self.shared.queue_ready.notify_all();
        }
        for inbox in &self.shared.inboxes {
            inbox.wake();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        for poller in self.pollers.drain(..) {
            let _ = poller.join();
        }
        lock(&self.shared.queue).clear();
        for inbox in &self.shared.inboxes {
            lock(&inbox.parking).clear();
        }
        self.shared.queue_length.store(0, Ordering::Release);
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds the listening socket. Connections accepted from it inherit its cap on unsent bytes;
/// `bind` already listens, but no client knows the address before the server prints it.
fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    if let Err(error) = sys::limit_unsent(&listener, UNSENT_LIMIT) {
        say!("unreliable: warning: cannot cap the unsent bytes per connection: {error}");
    }
    Ok(listener)
}

/// Where to connect to reach our own listener: the wildcard addresses are not connectable.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// What all threads share.
struct Shared {
    app: Arc<App>,
    timeouts: Timeouts,
    max_connections: usize,
    shutting_down: AtomicBool,
    open_connections: Arc<AtomicUsize>,
    /// Connections past `max_connections` waiting for their 503 or in its lingering close.
    turned_away: Arc<AtomicUsize>,
    queue: Mutex<VecDeque<Connection>>,
    queue_ready: Condvar,
    /// The queue's length, readable without the lock: "is anybody else waiting?".
    queue_length: AtomicUsize,
    /// Workers asleep on `queue_ready`; changed and read only under the `queue` lock, so an
    /// enqueue that sees none can skip the wake (a syscall) without losing one.
    sleeping_workers: AtomicUsize,
    /// One per poller, indexed by [`Connection::poller`].
    inboxes: Vec<Inbox>,
    /// Round-robin share of new connections among the pollers.
    next_poller: AtomicUsize,
}

/// How connections reach one poller.
struct Inbox {
    /// Connections handed to the poller and not yet registered by it.
    parking: Mutex<Vec<Parked>>,
    /// A wake byte is in the pipe or about to be: further wakes can skip the write, which also
    /// keeps the (blocking) pipe from ever filling. Set only by the parker that then writes the
    /// byte; cleared only by the poller, after it drained the pipe.
    wake_pending: AtomicBool,
    wake_writer: PipeWriter,
}

impl Inbox {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed write can only mean the poller is gone, which is shutdown.
            let _ = (&self.wake_writer).write(&[1]);
        }
    }
}

/// A lock that survives a panic elsewhere: the data under these locks is always consistent
/// (plain pushes and pops), so a poisoned lock is safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn others_waiting(&self) -> bool {
        self.queue_length.load(Ordering::Relaxed) > 0
    }

    fn enqueue(&self, connection: Connection) {
        let mut queue = lock(&self.queue);
        queue.push_back(connection);
        self.queue_length.store(queue.len(), Ordering::Relaxed);
        let anyone_asleep = self.sleeping_workers.load(Ordering::Relaxed) > 0;
        drop(queue);
        if anyone_asleep {
            self.queue_ready.notify_one();
        }
    }

    /// The next connection to serve; `None` once the server is shutting down.
    fn next_connection(&self) -> Option<Connection> {
        let mut queue = lock(&self.queue);
        loop {
            if self.is_shutting_down() {
                return None;
            }
            if let Some(connection) = queue.pop_front() {
                self.queue_length.store(queue.len(), Ordering::Relaxed);
                return Some(connection);
            }
            self.sleeping_workers.fetch_add(1, Ordering::Relaxed);
            queue = self
                .queue_ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            self.sleeping_workers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn park(&self, connection: Connection, kind: ParkKind, deadline: Instant) {
        if self.is_shutting_down() {
            return;
        }
        // The index is always in range (set from `next_poller` modulo the count).
        let Some(inbox) = self.inboxes.get(connection.poller) else {
            return;
        };
        lock(&inbox.parking).push(Parked {
            connection,
            kind,
            deadline,
        });
        inbox.wake();
    }

    /// The poller a new connection will live in: its keep-alive requests are answered there.
    fn assign_poller(&self) -> usize {
        self.next_poller.fetch_add(1, Ordering::Relaxed) % self.inboxes.len()
    }
}

/// Decrements the open-connection count when the connection is dropped, on whatever path.
struct ConnectionSlot {
    open_connections: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    fn take(open_connections: &Arc<AtomicUsize>) -> ConnectionSlot {
        open_connections.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot {
            open_connections: Arc::clone(open_connections),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client connection and what has been read from it but not yet answered.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// `buffer[..filled]` is unanswered input; the rest is room for the next read.
    buffer: Vec<u8>,
    filled: usize,
    /// When the first byte of the request being read arrived.
    request_started: Option<Instant>,
    /// The read timeout last set on the socket, so it is only changed when it must be.
    read_timeout: Option<Duration>,
    /// The body of the request at the front of the buffer, while it is being read.
    body: Option<PendingBody>,
    /// The poller saw input waiting: read it before parking again, or a connection could bounce
    /// between queue and poller without progress for as long as others are queued.
    readable: bool,
    /// The socket is in the poller's epoll set (its reports are ignored while a worker has it:
    /// the token is stale). Parking it again takes one call; closing the socket removes it.
    registered: bool,
    /// The poller that holds this connection whenever it is parked.
    poller: usize,
    /// The peer's close (or half-close) was reported. An edge watch reports it once, maybe while
    /// answers are still owed; the turns that answer them must still read on to the EOF.
    peer_closed: bool,
    /// The rest of a response or of `100 Continue` the send buffer could not take (the client
    /// is not reading fast enough): the poller writes it as room opens up, then goes on as its
    /// [`AfterSent`] says.
    unsent: Option<UnsentAnswer>,
    /// What the kernel held for the client when its progress was last seen (see
    /// `Poller::await_kernel_queue`).
    kernel_queue_note: Option<KernelQueueNote>,
    _slot: ConnectionSlot,
}

/// Bytes the kernel held for a client when it was last seen taking them, and the deadlines
/// passed since without it taking [`MIN_QUEUE_PROGRESS`]; to be compared at `deadline` (a note
/// made for another deadline is out of date).
#[derive(Debug, Clone, Copy)]
struct KernelQueueNote {
    deadline: Instant,
    queued: usize,
    quiet_deadlines: u32,
}

/// A request body being read and thrown away; its head waits at the front of the buffer.
struct PendingBody {
    head_length: usize,
    remaining: BodyRemaining,
    /// When the whole body must have arrived; then the connection is closed.
    deadline: Instant,
}

enum BodyRemaining {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The rest of a response and what was to happen after it.
struct UnsentAnswer {
    bytes: Vec<u8>,
    /// More of the body is still to be formatted (a long `/getlogs`), after `bytes`: a worker's
    /// job, since it can take a while.
    rest: Option<LogStream>,
    then: AfterSent,
}

/// What a connection goes on with once its unsent bytes are out.
#[derive(Debug, Clone, Copy)]
enum AfterSent {
    /// They were a response: the connection goes on as after any answer.
    Answer {
        disposition: Disposition,
        keep_alive: bool,
        head_length: usize,
    },
    /// They were `100 Continue`: the request's body is read next (by a worker).
    Body,
}

impl Connection {
    fn new(stream: TcpStream, peer: SocketAddr, poller: usize, slot: ConnectionSlot) -> Connection {
        Connection {
            stream,
            peer,
            poller,
            buffer: vec![0; READ_BUFFER_INITIAL],
            filled: 0,
            request_started: None,
            read_timeout: None,
            body: None,
            readable: false,
            registered: false,
            peer_closed: false,
            unsent: None,
            kernel_queue_note: None,
            _slot: slot,
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }

    /// Makes sure there is room after `filled`, growing the buffer up to [`HEAD_LIMIT`].
    fn make_room(&mut self) -> bool {
        if self.filled < self.buffer.len() {
            return true;
        }
        if self.buffer.len() >= HEAD_LIMIT {
            return false;
        }
        let grown = (self.buffer.len() * 2).clamp(READ_BUFFER_INITIAL, HEAD_LIMIT);
        self.buffer.resize(grown, 0);
        true
    }

    /// Reads once into the free part of the buffer (which must have room).
    fn read_some(&mut self) -> io::Result<usize> {
        let read = self.stream.read(&mut self.buffer[self.filled..])?;
        if read > 0 && self.filled == 0 {
            self.request_started = Some(Instant::now());
        }
        self.filled += read;
        Ok(read)
    }

    /// Like [`Connection::read_some`], but takes only what has already arrived. `seen` is when
    /// the poller learnt it had arrived, which then dates a request's first byte without a
    /// clock read of its own; `None` reads the clock.
    fn read_some_without_waiting(&mut self, seen: Option<Instant>) -> io::Result<usize> {
        let read = sys::receive_without_waiting(&self.stream, &mut self.buffer[self.filled..])?;
        if read > 0 && self.filled == 0 {
            self.request_started = Some(seen.unwrap_or_else(Instant::now));
        }
        self.filled += read;
        Ok(read)
    }

    /// Notes what the kernel holds for the client when a write stalls: at `deadline`, less
    /// means the client is still reading.
    fn note_kernel_queue(&mut self, deadline: Instant) {
        self.kernel_queue_note = Some(KernelQueueNote {
            deadline,
            queued: sys::unsent_bytes(&self.stream).unwrap_or(0),
            quiet_deadlines: 0,
        });
    }

    /// For a connection the server is done with: when answers are still queued in the kernel,
    /// shuts its write side (the client sees the end once it has read them) and notes the queue
    /// for the flushing deadline it returns; `None` when nothing is queued and it can close.
    fn start_flushing(&mut self, write_timeout: Duration) -> Option<Instant> {
        if sys::unsent_bytes(&self.stream).unwrap_or(0) == 0 {
            return None;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + write_timeout;
        self.note_kernel_queue(deadline);
        Some(deadline)
    }

    /// Drops `count` bytes after the first `keep` (the answered part, or a discarded body).
    fn remove_after(&mut self, keep: usize, count: usize) {
        self.buffer.copy_within(keep + count..self.filled, keep);
        self.filled -= count;
    }

    fn header_deadline(&self, header_timeout: Duration) -> Instant {
        self.request_started.unwrap_or_else(Instant::now) + header_timeout
    }

    /// Gives back memory a parked connection does not need.
    fn shrink_for_parking(&mut self, kind: ParkKind) {
        if matches!(
            kind,
            ParkKind::Hung | ParkKind::Closing | ParkKind::Flushing
        ) {
            self.buffer = Vec::new();
            self.filled = 0;
        } else if self.filled <= READ_BUFFER_INITIAL && self.buffer.len() > READ_BUFFER_INITIAL {
            self.buffer.truncate(READ_BUFFER_INITIAL);
            self.buffer.shrink_to_fit();
        }
    }
}

/// `WouldBlock` and `TimedOut` both mean "the read timeout passed": platforms disagree on which.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The `Date` header value, formatted at most once per second.
struct DateCache {
    second: u64,
    value: [u8; 29],
}

impl DateCache {
    fn new() -> DateCache {
        DateCache {
            second: u64::MAX,
            value: [b' '; 29],
        }
    }

    fn current(&mut self) -> &[u8; 29] {
        self.at(clock::now_unix_millis())
    }

    /// The value for a time the caller has already read (an answer's, which its log entry
    /// carries too), sparing a clock read per request.
    fn at(&mut self, unix_millis: u64) -> &[u8; 29] {
        if unix_millis / 1000 != self.second {
            self.value = UtcTime::from_unix_millis(unix_millis).http_date();
            self.second = unix_millis / 1000;
        }
        &self.value
    }
}

/// Prints at most one line per [`ERROR_REPORT_INTERVAL`]; counts what it held back.
struct ErrorReporter {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorReporter {
    fn new() -> ErrorReporter {
        ErrorReporter {
            last: None,
            suppressed: 0,
        }
    }

    fn report(&mut self, what: &str, error: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < ERROR_REPORT_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            say!(
                "unreliable: {what}: {error} (continuing; {} more since the last report)",
                self.suppressed
            );
        } else {
            say!("unreliable: {what}: {error} (continuing)");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Writes a complete short response (error or busy) and half-closes. Best effort: the client
/// may already be gone.
fn write_short_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    date: &[u8; 29],
    status: u16,
    body: &[u8],
    extra_headers: &[(&str, &str)],
    head_only: bool,
) {
    out.clear();
    http::write_response(
        out,
        &Response {
            status,
            content_type: TEXT_PLAIN,
            extra_headers,
            body,
            keep_alive: false,
            request_minor_version: 1,
            head_only,
        },
        date,
    );
    let _ = stream.write_all(out);
    let _ = stream.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// Acceptor

fn run_acceptor(shared: &Shared, listener: &TcpListener) {
    let mut reporter = ErrorReporter::new();
    let mut date = DateCache::new();
    let mut scratch = vec![0u8; READ_BUFFER_INITIAL];
    let mut out = Vec::with_capacity(256);
    let mut failed_last_time = false;
    loop {
        let accepted = listener.accept();
        if shared.is_shutting_down() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                failed_last_time = false;
                admit(shared, stream, peer, &mut scratch, &mut out, &mut date);
            }
            Err(error) => {
                reporter.report("accept failed", &error);
                let exhausted = matches!(
                    error.raw_os_error(),
                    Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
                );
                // A transient error (a client that gave up) is retried at once; a repeated one
                // gets the pause too, so no error can make the loop spin.
                if exhausted || failed_last_time {
                    thread::sleep(ACCEPT_RESOURCE_BACKOFF);
                }
                failed_last_time = true;
            }
        }
    }
}

fn admit(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    scratch: &mut [u8],
    out: &mut Vec<u8>,
    date: &mut DateCache,
) {
    // Latency matters more than packet count for small responses. No write timeout: nothing
    // ever waits to write to a client (see `send_without_waiting`).
    let _ = stream.set_nodelay(true);
    if shared.open_connections.load(Ordering::Acquire) >= shared.max_connections {
        turn_away(shared, stream, peer, scratch, out, date);
        return;
    }
    let slot = ConnectionSlot::take(&shared.open_connections);
    // Straight to a poller, which answers the first request like any other; a worker only
    // gets the connection if it needs one. Its idle deadline runs until the first byte.
    let connection = Connection::new(stream, peer, shared.assign_poller(), slot);
    shared.park(
        connection,
        ParkKind::Idle,
        Instant::now() + shared.timeouts.idle,
    );
}

/// Answers 503 past `max_connections` without blocking the acceptor. A poller waits for the
/// request line, answers (RFC 9110 §9.3.2: a HEAD gets no content) and reads and drops what
/// the client still sends until it closes (RFC 9112 §9.6), so closing does not turn into a
/// reset that could swallow the answer. Past [`MAX_TURNED_AWAY`] of those, the 503 goes at once
/// after whatever already arrived is read, and the connection is closed.
fn turn_away(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    scratch: &mut [u8],
    out: &mut Vec<u8>,
    date: &mut DateCache,
) {
    if shared.turned_away.load(Ordering::Acquire) < MAX_TURNED_AWAY {
        let slot = ConnectionSlot::take(&shared.turned_away);
        let connection = Connection::new(stream, peer, shared.assign_poller(), slot);
        shared.park(
            connection,
            ParkKind::TurnedAway,
            Instant::now() + LINGERING_CLOSE,
        );
        return;
    }
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut head_only = false;
    for read in 0..HUNG_READS_PER_EVENT {
        match stream.read(scratch) {
            Ok(0) | Err(_) => break,
            Ok(count) if read == 0 => head_only = http::is_head_request(&scratch[..count]),
            Ok(_) => {}
        }
    }
    write_busy(&mut stream, out, date, head_only);
}

fn write_busy(stream: &mut TcpStream, out: &mut Vec<u8>, date: &mut DateCache, head_only: bool) {
    let date = date.current();
    write_short_response(stream, out, date, 503, BUSY_BODY, &[RETRY_AFTER], head_only);
}

/// Applies a response written in full to its connection, for a worker and a poller alike:
/// `None` to go on with the next request (its head dropped from the buffer), otherwise where the
/// connection is drained from now on: a lingering close (the write side shut) or a hang.
fn settle_answer(
    shared: &Shared,
    connection: &mut Connection,
    disposition: Disposition,
    keep_alive: bool,
    head_length: usize,
) -> Option<(ParkKind, Instant)> {
    match disposition {
        Disposition::KeepOpen if keep_alive => {
            connection.remove_after(0, head_length);
            connection.request_started = (connection.filled > 0).then(Instant::now);
            None
        }
        Disposition::KeepOpen | Disposition::Close => {
            let _ = connection.stream.shutdown(Shutdown::Write);
            Some((ParkKind::Closing, Instant::now() + LINGERING_CLOSE))
        }
        // A hang ends the pipeline: anything after this request is never answered.
        Disposition::Hang => Some((ParkKind::Hung, Instant::now() + shared.app.hang)),
    }
}

/// Writes as much of `bytes` as the socket takes now; how much that was.
fn send_without_waiting(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match sys::send_without_waiting(stream, &bytes[written..]) {
            Ok(sent) => written += sent,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::{Chaos, Weights};
    use crate::http::MAX_BODY;
    use crate::log::RequestLog;

    const HANG: Duration = Duration::from_millis(300);
    /// A pause after which a worker has surely given up waiting and parked the connection.
    const LONGER_THAN_LINGER: Duration = Duration::from_millis(60);
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    fn app(weights: Weights) -> Arc<App> {
        Arc::new(App {
            chaos: Chaos::new(1, weights),
            log: Arc::new(RequestLog::new(1000, false).unwrap()),
            started: Instant::now(),
            started_unix_millis: 1_700_000_000_000,
            hang: HANG,
        })
    }

    /// An app whose log already holds `entries` entries with 200-byte request ids, for a
    /// `/getlogs` answer far larger than the socket buffers (about 350 bytes of JSON each).
    fn app_with_long_log(entries: u64) -> Arc<App> {
        let app = Arc::new(App {
            chaos: Chaos::new(1, Weights::owner_default()),
            log: Arc::new(RequestLog::new(entries as usize, false).unwrap()),
            started: Instant::now(),
            started_unix_millis: 1_700_000_000_000,
            hang: HANG,
        });
        let request_id = "r".repeat(200);
        for _ in 0..entries {
            app.log.record(
                &crate::log::NewEntry {
                    unix_millis: 1_729_727_731_705,
                    client: "127.0.0.1:5000".parse().unwrap(),
                    method: "GET",
                    target: "/getbalance",
                    request_id: Some(request_id.as_bytes()),
                    duration_micros: 1,
                    forced: false,
                },
                |k| app.chaos.outcome(k),
            );
        }
        app
    }

    fn config(threads: usize, max_connections: usize) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            threads,
            // Two, so connections are shared among pollers as on any multi-core machine.
            pollers: 2,
            max_connections,
        }
    }

    fn start_test_server(
        threads: usize,
        max_connections: usize,
        timeouts: Timeouts,
    ) -> RunningServer {
        start_with_timeouts(
            &config(threads, max_connections),
            app(Weights::owner_default()),
            timeouts,
        )
        .unwrap()
    }

    fn short_timeouts() -> Timeouts {
        Timeouts {
            // Nonzero, unlike the standard: keeps the blocking-linger path covered.
            linger: Duration::from_millis(20),
            idle: Duration::from_millis(300),
            header: Duration::from_millis(300),
            body: Duration::from_millis(300),
            write: WRITE_TIMEOUT,
        }
    }

    fn connect(server: &RunningServer) -> TcpStream {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream
    }

    /// Reads one response (head plus `Content-Length` body); returns its status and body.
    /// Bytes past it stay in `pending`.
    fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_string();
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while pending.len() < total {
                    let mut chunk = [0u8; 4096];
                    let read = stream.read(&mut chunk).ok()?;
                    if read == 0 {
                        return None;
                    }
                    pending.extend_from_slice(&chunk[..read]);
                }
                let body = pending[end + 4..total].to_vec();
                pending.drain(..total);
                return Some((status, body));
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            pending.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends `GET /health` on `stream` and checks that it is answered 200.
    fn assert_healthy(stream: &mut TcpStream) {
        let answer = exchange(stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(answer.map(|(status, _)| status), Some(200));
    }

    fn exchange(stream: &mut TcpStream, request: &[u8]) -> Option<(u16, Vec<u8>)> {
        stream.write_all(request).unwrap();
        read_response(stream, &mut Vec::new())
    }

    /// True when the server closed the connection without sending anything more.
    fn closed_silently(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0))
            || matches!(stream.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }

    #[test]
    fn answers_health_unknown_paths_and_malformed_requests() {
        let server = start_test_server(2, 64, Timeouts::STANDARD);
        let cases: [(&[u8], u16); 4] = [
            (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            (b"GET /no-such-path HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        ];
        for (request, status) in cases {
            let mut stream = connect(&server);
            let (got, _) = exchange(&mut stream, request).unwrap();
            assert_eq!(got, status, "{}", String::from_utf8_lossy(request));
        }
        server.shutdown();
    }

    #[test]
    fn malformed_request_gets_a_plain_reason_and_close() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        stream.write_all(b"GARBAGE\r\n\r\n").unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 400"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        assert!(text.ends_with('\n'), "{text}");
        server.shutdown();
    }

    #[test]
    fn keep_alive_and_pipelined_requests_are_answered_in_order() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        for _ in 0..3 {
            assert_healthy(&mut stream);
        }
        stream
            .write_all(
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
                  GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .unwrap();
        let mut pending = Vec::new();
        let statuses: Vec<u16> = (0..3)
            .map(|_| read_response(&mut stream, &mut pending).unwrap().0)
            .collect();
        assert_eq!(statuses, [200, 404, 200]);
        server.shutdown();
    }

    #[test]
    fn request_split_across_packets_is_assembled() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        stream.write_all(b"GET /hea").unwrap();
        // Longer than the linger: the partial request is parked and comes back.
        thread::sleep(LONGER_THAN_LINGER);
        stream.write_all(b"lth HTTP/1.1\r\nHo").unwrap();
        thread::sleep(LONGER_THAN_LINGER);
        let (status, _) = exchange(&mut stream, b"st: x\r\n\r\n").unwrap();
        assert_eq!(status, 200);
        server.shutdown();
    }

    #[test]
    fn request_bodies_are_discarded_and_the_pipeline_continues() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let requests: [&[u8]; 2] = [
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n",
        ];
        for request in requests {
            let mut stream = connect(&server);
            stream.write_all(request).unwrap();
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut pending = Vec::new();
            assert!(read_response(&mut stream, &mut pending).is_some());
            let (status, _) = read_response(&mut stream, &mut pending).unwrap();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(request));
        }
        server.shutdown();
    }

    #[test]
    fn expect_continue_gets_100_before_the_body_is_sent() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        stream
            .write_all(
                b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
                  Expect: 100-continue\r\n\r\n",
            )
            .unwrap();
        let mut pending = Vec::new();
        let (status, _) = read_response(&mut stream, &mut pending).unwrap();
        assert_eq!(status, 100);
        stream.write_all(b"body").unwrap();
        assert!(read_response(&mut stream, &mut pending).is_some());
        server.shutdown();
    }

    #[test]
    fn a_client_that_stops_reading_is_sent_little_more_than_the_unsent_limit() {
        // A client that never reads: what the kernel takes for it is its receive window plus
        // the cap, not the 4 MiB the kernel lets an uncapped send buffer grow to on loopback.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        sys::set_receive_buffer(&client, 64 * 1024).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let chunk = [b'z'; 16 * 1024];
        let mut taken = 0;
        // Twice, in case acknowledgements make room after the first refusal.
        for _ in 0..2 {
            while let Ok(written) = sys::send_without_waiting(&accepted, &chunk) {
                taken += written;
                assert!(taken < 1024 * 1024, "{taken} bytes taken and counting");
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(taken > UNSENT_LIMIT as usize, "{taken}");
        assert!(
            taken < 512 * 1024,
            "{taken} bytes taken for a client that reads nothing"
        );
        drop(client);
    }

    #[test]
    fn a_100_continue_the_send_buffer_cut_short_is_finished_by_the_poller_then_the_body_read() {
        // The connection as `start_body` leaves it when the socket took only part of `100
        // Continue` (a client that stopped reading): its rest waits in the poller, no worker
        // holds it, and once it is out the body is read and the request answered.
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let head: &[u8] =
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
        let slot = ConnectionSlot::take(&server.shared.open_connections);
        let mut connection = Connection::new(stream, peer, 0, slot);
        connection.buffer[..head.len()].copy_from_slice(head);
        connection.filled = head.len();
        connection.request_started = Some(Instant::now());
        connection.body = Some(PendingBody {
            head_length: head.len(),
            remaining: BodyRemaining::Length(4),
            deadline: Instant::now() + BODY_TIMEOUT,
        });
        const SENT: usize = 9;
        connection.unsent = Some(UnsentAnswer {
            bytes: CONTINUE[SENT..].to_vec(),
            rest: None,
            then: AfterSent::Body,
        });
        // A client may send the body without waiting for `100 Continue` (RFC 9110 §10.1.1): it is
        // there before the poller's first look, and no later report of input will come.
        client.write_all(b"body").unwrap();
        server.shared.park(
            connection,
            ParkKind::Sending,
            Instant::now() + WRITE_TIMEOUT,
        );
        let mut interim = vec![0u8; CONTINUE.len() - SENT];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(interim, &CONTINUE[SENT..]);
        let (status, _) = read_response(&mut client, &mut Vec::new()).unwrap();
        assert_eq!(status, 405, "the request after its body, answered");
        assert_healthy(&mut client);
        server.shutdown();
    }

    #[test]
    fn body_above_the_limit_gets_413() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        let request = format!(
            "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (status, _) = exchange(&mut stream, request.as_bytes()).unwrap();
        assert_eq!(status, 413);
        server.shutdown();
    }

    #[test]
    fn body_that_stops_arriving_closes_the_connection() {
        let server = start_test_server(1, 64, short_timeouts());
        let mut stream = connect(&server);
        stream
            .write_all(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let started = Instant::now();
        assert!(closed_silently(&mut stream));
        assert!(started.elapsed() >= Duration::from_millis(250));
        server.shutdown();
    }

    #[test]
    fn slow_bodies_are_parked_and_do_not_hold_the_only_worker() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut slow = Vec::new();
        for request in [
            &b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"[..],
            b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            let mut stream = connect(&server);
            stream.write_all(request).unwrap();
            slow.push(stream);
        }
        thread::sleep(LONGER_THAN_LINGER);
        let mut other = connect(&server);
        assert_healthy(&mut other);
        // The parked bodies resume where they stopped, and their pipelines go on.
        let rest: [&[u8]; 2] = [b"defghij", b"cde\r\n0\r\n\r\n"];
        for (stream, rest) in slow.iter_mut().zip(rest) {
            let mut pending = Vec::new();
            stream.write_all(rest).unwrap();
            stream
                .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(stream, &mut pending).unwrap().0, 405);
            assert_eq!(read_response(stream, &mut pending).unwrap().0, 404);
        }
        server.shutdown();
    }

    #[test]
    fn a_stalled_reader_does_not_delay_shutdown() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let stuck = connect(&server);
        let mut writer = stuck.try_clone().unwrap();
        let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(8000));
        // About 8 MB of 404s echoing the path, never read: the worker's writes stall.
        let sender = thread::spawn(move || {
            let _ = writer.write_all(request.repeat(1000).as_bytes());
        });
        wait_until_writes_stall(&server, &stuck);
        let started = Instant::now();
        server.shutdown();
        assert!(
            started.elapsed() < WRITE_TIMEOUT / 2,
            "shutdown waited {:?}",
            started.elapsed()
        );
        drop(stuck);
        sender.join().unwrap();
    }

    #[test]
    fn a_reader_that_stalls_past_the_write_timeout_is_reset_and_its_answer_freed() {
        // A /getlogs of about 35 MB, far more than the socket buffers take, asked for once and
        // never read.
        let (server, mut stuck) = asked_for_the_log(100_000);
        assert_given_up_and_reset(&server, &mut stuck);
        server.shutdown();
    }

    #[test]
    fn a_reader_that_stalls_but_keeps_sending_is_still_given_up_on() {
        // As above, but the client sends a request now and then: input is not progress of the
        // answer, so it must not move the write deadline.
        let (server, mut stuck) = asked_for_the_log(100_000);
        let mut chatty = stuck.try_clone().unwrap();
        let sending = Arc::new(AtomicBool::new(true));
        let still_sending = Arc::clone(&sending);
        let sender = thread::spawn(move || {
            while still_sending.load(Ordering::Relaxed) {
                let sent = chatty.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
                if let Err(error) = sent {
                    return Some(error.kind());
                }
                thread::sleep(Duration::from_millis(100));
            }
            None
        });
        let read = wait_until_given_up(&server, &mut stuck);
        sending.store(false, Ordering::Relaxed);
        let write = sender.join().unwrap();
        // The reset is reported once, to whichever call on the socket comes first.
        let reset = Some(io::ErrorKind::ConnectionReset);
        assert!(read.err() == reset || write == reset, "{read:?} {write:?}");
        server.shutdown();
    }

    #[test]
    fn an_answer_that_fit_in_the_kernel_but_is_never_read_is_reset_not_left_behind() {
        // About 600 KB: on loopback the kernel takes all of it at once (its send buffer starts
        // near 1.3 MB), so no write ever stalls and the connection goes idle with the answer
        // still queued. Closed plainly at the idle deadline, the kernel would keep it.
        let (server, mut stuck) = asked_for_the_log(1_700);
        assert_given_up_and_reset(&server, &mut stuck);
        server.shutdown();
    }

    #[test]
    fn an_idle_connection_whose_answer_is_still_being_read_is_kept() {
        let (server, mut slow) = asked_for_the_log(1_700);
        // Reads 64 KB every 100 ms: the answer is all in the kernel at once and the connection
        // idle, and reading it takes longer than the idle timeout; the queue keeps moving.
        let mut answer = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !answer.ends_with(b"0\r\n\r\n") {
            assert!(Instant::now() < deadline, "the answer never ended");
            match slow.read(&mut chunk) {
                Ok(0) => panic!("closed after {} bytes", answer.len()),
                Ok(read) => answer.extend_from_slice(&chunk[..read]),
                Err(error) => panic!("after {} bytes: {error}", answer.len()),
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(answer.len() > 500_000, "{} bytes", answer.len());
        server.shutdown();
    }

    #[test]
    fn a_stalled_answer_read_steadily_is_kept_over_many_write_timeouts() {
        // About 35 MB, read at 1.3 MB/s for five write timeouts. The client is reading: that is
        // not a stall to give up on, whether it shows as room for more writes or, when room is
        // slow to open, as the kernel's queue shrinking.
        // A small receive buffer, or the client's kernel would take megabytes for it and the
        // server's queue would not move while it reads.
        let (server, mut slow) = asked_for_the_log_with(100_000, |client| {
            sys::set_receive_buffer(client, 64 * 1024).unwrap()
        });
        let mut chunk = vec![0u8; 64 * 1024];
        let mut read_in_all = 0;
        let reading = Instant::now();
        while reading.elapsed() < Duration::from_millis(1_500) {
            match slow.read(&mut chunk) {
                Ok(0) => panic!("closed after {read_in_all} bytes"),
                Ok(read) => read_in_all += read,
                Err(error) => panic!("after {read_in_all} bytes: {error}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Still served: the rest comes when the client reads faster.
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..8 {
            match slow.read(&mut chunk) {
                Ok(0) => panic!("closed after {read_in_all} bytes"),
                Ok(read) => read_in_all += read,
                Err(error) => panic!("after {read_in_all} bytes: {error}"),
            }
        }
        server.shutdown();
    }

    #[test]
    fn a_client_that_half_closes_and_never_reads_is_reset_not_left_behind() {
        // The client's close ends the connection for the server, but the answer (about 600 KB,
        // all taken by the kernel) is still queued for it: closed plainly, it would stay there.
        let (server, mut stuck) = asked_for_the_log(1_700);
        stuck.shutdown(Shutdown::Write).unwrap();
        assert_given_up_and_reset(&server, &mut stuck);
        server.shutdown();
    }

    #[test]
    fn a_client_that_half_closes_still_gets_its_whole_answer() {
        let (server, mut slow) = asked_for_the_log(1_700);
        slow.shutdown(Shutdown::Write).unwrap();
        // Slower than the write timeout (300 ms) allows for the whole answer: it is kept while
        // the queue moves, then closed in order (no reset).
        let mut answer = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "the answer never ended");
            match slow.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => answer.extend_from_slice(&chunk[..read]),
                Err(error) => panic!("after {} bytes: {error}", answer.len()),
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert!(answer.ends_with(b"0\r\n\r\n"), "{} bytes", answer.len());
        assert!(answer.len() > 500_000, "{} bytes", answer.len());
        server.shutdown();
    }

    /// A server whose log has `entries` entries of about 350 bytes in `/getlogs`, quick to give
    /// up on a client (idle and write timeouts of 300 ms), and a client that has asked for the
    /// whole log.
    fn asked_for_the_log(entries: u64) -> (RunningServer, TcpStream) {
        asked_for_the_log_with(entries, |_| {})
    }

    /// As [`asked_for_the_log`], with `prepare` applied to the client before it asks.
    fn asked_for_the_log_with(
        entries: u64,
        prepare: impl FnOnce(&TcpStream),
    ) -> (RunningServer, TcpStream) {
        let timeouts = Timeouts {
            idle: Duration::from_millis(300),
            write: Duration::from_millis(300),
            ..Timeouts::STANDARD
        };
        let server =
            start_with_timeouts(&config(1, 64), app_with_long_log(entries), timeouts).unwrap();
        let mut client = connect(&server);
        prepare(&client);
        client
            .write_all(b"GET /getlogs HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        (server, client)
    }

    /// Waits until the server gives up on `stuck`, a client whose answer piles up in the
    /// server's send queue, and checks that it was reset. A plain close would leave the answer
    /// queued in the kernel for as long as the client keeps its end (an orphaned socket, no
    /// descriptor in the server): a reset frees it.
    fn assert_given_up_and_reset(server: &RunningServer, stuck: &mut TcpStream) {
        let read = wait_until_given_up(server, stuck);
        assert_eq!(read, Err(io::ErrorKind::ConnectionReset));
    }

    /// Waits until the server's side of `stuck` is gone (its queued answer seen first), then
    /// reads to the end: how the reading ended.
    fn wait_until_given_up(
        server: &RunningServer,
        stuck: &mut TcpStream,
    ) -> Result<(), io::ErrorKind> {
        let (server_port, client_port) = (
            server.local_addr().port(),
            stuck.local_addr().unwrap().port(),
        );
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut seen_queued = false;
        loop {
            match server_send_queue(server_port, client_port) {
                Some(queued) if queued > 0 => seen_queued = true,
                None if seen_queued => break,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the answer is still queued for a client given up on (seen queued: {seen_queued})"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match stuck.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.kind()),
            }
        }
    }

    /// Bytes queued for sending on the server's side of the loopback connection from
    /// `client_port` (from `/proc/net/tcp`).
    fn server_send_queue(server_port: u16, client_port: u16) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let port_of = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5
                || port_of(fields[1]) != Some(server_port)
                || port_of(fields[2]) != Some(client_port)
            {
                return None;
            }
            u64::from_str_radix(fields[4].split(':').next()?, 16).ok()
        })
    }

    /// Waits until the server's writes to `stream` (a client that never reads) have stalled:
    /// its send queue is full and stays put.
    fn wait_until_writes_stall(server: &RunningServer, stream: &TcpStream) {
        let (server_port, client_port) = (
            server.local_addr().port(),
            stream.local_addr().unwrap().port(),
        );
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        let mut last = None;
        let mut unchanged = 0;
        while unchanged < 6 {
            assert!(Instant::now() < deadline, "the writes never stalled");
            thread::sleep(Duration::from_millis(50));
            let queued = server_send_queue(server_port, client_port).filter(|&bytes| bytes > 0);
            unchanged = if queued.is_some() && queued == last {
                unchanged + 1
            } else {
                0
            };
            last = queued;
        }
    }

    #[test]
    fn a_stalled_reader_loses_its_connection_once_its_queue_stops_moving() {
        let timeouts = Timeouts {
            write: Duration::from_millis(300),
            ..Timeouts::STANDARD
        };
        let server = start_test_server(1, 64, timeouts);
        let stuck = connect(&server);
        let mut writer = stuck.try_clone().unwrap();
        let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(8000));
        let sender = thread::spawn(move || {
            let _ = writer.write_all(request.repeat(1000).as_bytes());
        });
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while server.open_connections() == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let admitted = Instant::now();
        // The client neither reads nor closes; the server drops it all the same, once neither
        // its writes nor the kernel's queue have made progress for QUEUE_PATIENCE timeouts.
        while server.open_connections() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.open_connections(), 0);
        // Patience less one: `admitted` is seen by polling, possibly after the stall.
        assert!(
            admitted.elapsed() >= timeouts.write * (QUEUE_PATIENCE - 1),
            "{:?}",
            admitted.elapsed()
        );
        let mut other = connect(&server);
        assert_healthy(&mut other);
        drop(stuck);
        sender.join().unwrap();
        server.shutdown();
    }

    #[test]
    fn a_reader_whose_kernel_takes_nothing_for_over_a_write_timeout_is_kept_while_it_reads() {
        // What the server sees of a slow reader is what its kernel takes, in lumps: here the
        // client reads all it has with pauses longer than the write timeout (but within
        // QUEUE_PATIENCE of them), and must get every answer rather than a reset.
        let timeouts = Timeouts {
            write: Duration::from_millis(250),
            ..Timeouts::STANDARD
        };
        let pause = Duration::from_millis(400);
        assert!(pause > timeouts.write && pause * 3 / 2 < timeouts.write * QUEUE_PATIENCE);
        let server = start_test_server(1, 64, timeouts);
        let mut reader = connect(&server);
        sys::set_receive_buffer(&reader, 16 * 1024).unwrap();
        let mut writer = reader.try_clone().unwrap();
        // 404s that quote their 8,000-byte path: 24 of them, about 195 KB, are more than twice
        // what the two sockets' buffers hold.
        let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(8000));
        let count = 24;
        let sender = thread::spawn(move || {
            let _ = writer.write_all(request.repeat(count).as_bytes());
        });
        let mut pending = Vec::new();
        let mut chunk = vec![0u8; 1 << 20];
        let mut answers = 0;
        while answers < count {
            thread::sleep(pause);
            let read = match reader.read(&mut chunk) {
                Ok(0) => panic!("closed after {answers} answers"),
                Ok(read) => read,
                Err(error) => panic!("after {answers} answers: {error}"),
            };
            pending.extend_from_slice(&chunk[..read]);
            answers = count_404_status_lines(&pending);
        }
        let mut other = connect(&server);
        assert_healthy(&mut other);
        drop(reader);
        sender.join().unwrap();
        server.shutdown();
    }

    /// How many 404 answers have begun in `bytes` (their bodies quote paths of `p`s).
    fn count_404_status_lines(bytes: &[u8]) -> usize {
        bytes
            .windows(13)
            .filter(|window| window == b"HTTP/1.1 404 ")
            .count()
    }

    #[test]
    fn head_beyond_the_limits_is_refused() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let long_line = format!(
            "GET /{} HTTP/1.1\r\n\r\n",
            "a".repeat(MAX_REQUEST_LINE + 10)
        );
        let long_headers = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(HEAD_LIMIT)
        );
        for (request, status) in [(long_line, 414), (long_headers, 431)] {
            let mut stream = connect(&server);
            // The server may close before taking all of it; the answer is what matters.
            let _ = stream.write_all(request.as_bytes());
            let (got, _) = read_response(&mut stream, &mut Vec::new()).unwrap();
            assert_eq!(got, status);
        }
        server.shutdown();
    }

    #[test]
    fn hung_request_does_not_block_other_clients() {
        let server = start_with_timeouts(
            &config(1, 64),
            app(Weights::parse("timeout=1").unwrap()),
            Timeouts::STANDARD,
        )
        .unwrap();
        let mut hung = connect(&server);
        hung.write_all(b"GET /getbalance HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        thread::sleep(Duration::from_millis(30));
        // One worker only: this answer proves the hung request is not holding it.
        let mut other = connect(&server);
        assert_healthy(&mut other);
        assert!(started.elapsed() < HANG, "answered while the other hangs");
        // Input sent to a hung request is swallowed, and it ends closed without an answer.
        hung.write_all(b"more bytes").unwrap();
        assert!(closed_silently(&mut hung));
        assert!(started.elapsed() >= HANG - Duration::from_millis(20));
        server.shutdown();
    }

    #[test]
    fn idle_connections_are_parked_and_come_back() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut first = connect(&server);
        let mut second = connect(&server);
        for _ in 0..3 {
            for stream in [&mut first, &mut second] {
                let (status, _) =
                    exchange(stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                assert_eq!(status, 200);
            }
            thread::sleep(LONGER_THAN_LINGER);
        }
        server.shutdown();
    }

    #[test]
    fn idle_connection_is_closed_after_the_idle_timeout() {
        let server = start_test_server(1, 64, short_timeouts());
        let mut stream = connect(&server);
        let started = Instant::now();
        assert!(closed_silently(&mut stream));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        server.shutdown();
    }

    #[test]
    fn a_busy_connection_outlives_its_first_idle_deadline() {
        // Answered in place, the connection keeps its poller slot while its deadline moves on;
        // the deadline it had when it was parked must not close it.
        let timeouts = short_timeouts();
        let server = start_test_server(1, 64, timeouts);
        let mut stream = connect(&server);
        let started = Instant::now();
        let mut answered = 0;
        let mut last_answer = started;
        while started.elapsed() < timeouts.idle * 3 {
            thread::sleep(timeouts.idle / 3);
            assert_healthy(&mut stream);
            answered += 1;
            last_answer = Instant::now();
        }
        assert!(answered >= 8, "{answered}");
        // Once it goes quiet, the moved deadline still closes it.
        assert!(closed_silently(&mut stream));
        let quiet = last_answer.elapsed();
        assert!(
            quiet >= timeouts.idle - Duration::from_millis(20),
            "{quiet:?}"
        );
        server.shutdown();
    }

    #[test]
    fn clients_that_do_not_read_hold_no_thread() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        // More clients than workers pipeline megabytes of answers and never read them.
        let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(8000));
        let stuck: Vec<_> = (0..3)
            .map(|_| {
                let stream = connect(&server);
                let mut writer = stream.try_clone().unwrap();
                let requests = request.repeat(1000);
                let sender = thread::spawn(move || {
                    let _ = writer.write_all(requests.as_bytes());
                });
                (stream, sender)
            })
            .collect();
        for (stream, _) in &stuck {
            wait_until_writes_stall(&server, stream);
        }
        // A kept-alive connection (opened only now: waiting for the stalls can outlast the idle
        // timeout), a new one, and a request only a worker answers: all served.
        let mut parked = connect(&server);
        assert_healthy(&mut parked);
        thread::sleep(LONGER_THAN_LINGER);
        for _ in 0..3 {
            let (status, _) = exchange(
                &mut parked,
                b"GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Unreliable-Outcome: 200\r\n\r\n",
            )
            .unwrap();
            assert_eq!(status, 200);
        }
        let mut fresh = connect(&server);
        assert_healthy(&mut fresh);
        let (status, _) = exchange(&mut fresh, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(status, 200);
        server.shutdown();
        for (stream, sender) in stuck {
            drop(stream);
            sender.join().unwrap();
        }
    }

    /// Reads `count` 404s whose bodies echo paths `/0/…`, `/1/…`, …: complete, in order, and no
    /// more than that.
    fn read_echoed_not_founds_in_order(stream: &mut TcpStream, count: usize) {
        let mut pending = Vec::new();
        for index in 0..count {
            let (status, body) = read_response(stream, &mut pending).unwrap();
            assert_eq!(status, 404, "response {index}");
            let expected = format!("not found: /{index}/");
            assert!(
                body.starts_with(expected.as_bytes()),
                "response {index}: {}",
                String::from_utf8_lossy(&body[..40.min(body.len())])
            );
        }
        assert!(pending.is_empty(), "more than {count} responses");
    }

    #[test]
    fn a_pipeline_that_outgrows_the_send_buffer_is_answered_completely_in_order() {
        // Thousands of pipelined requests, read only after all are sent: the poller's writes
        // fill the socket, a worker finishes them, and the connection comes back to the poller.
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        assert_healthy(&mut stream);
        thread::sleep(LONGER_THAN_LINGER);
        const REQUESTS: usize = 2000;
        // 404s echo the path: 14 MB of answers, more than loopback buffers hold.
        let padding = "p".repeat(7000);
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            // In small batches with pauses, so the connection keeps going back to the poller
            // and it is the poller's write that finds the socket full.
            for batch in (0..REQUESTS).collect::<Vec<_>>().chunks(10) {
                let requests: String = batch
                    .iter()
                    .map(|index| format!("GET /{index}/{padding} HTTP/1.1\r\nHost: x\r\n\r\n"))
                    .collect();
                writer.write_all(requests.as_bytes()).unwrap();
                thread::sleep(Duration::from_millis(1));
            }
        });
        // Not read until the server's writes have stalled, so its send buffer is full.
        wait_until_writes_stall(&server, &stream);
        read_echoed_not_founds_in_order(&mut stream, REQUESTS);
        sender.join().unwrap();
        assert_healthy(&mut stream);
        server.shutdown();
    }

    #[test]
    fn a_workers_answer_that_does_not_fit_waits_in_the_poller() {
        // Requests with bodies are answered by the (only) worker; once the client stops reading,
        // the answer that does not fit goes to the poller and the worker is free again.
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        const REQUESTS: usize = 1000;
        let padding = "p".repeat(7000);
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            for index in 0..REQUESTS {
                let request = format!(
                    "POST /{index}/{padding} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                );
                writer.write_all(request.as_bytes()).unwrap();
            }
        });
        wait_until_writes_stall(&server, &stream);
        let mut other = connect(&server);
        let (status, _) = exchange(
            &mut other,
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(status, 405, "the worker is not stuck writing");
        read_echoed_not_founds_in_order(&mut stream, REQUESTS);
        sender.join().unwrap();
        assert_healthy(&mut stream);
        server.shutdown();
    }

    #[test]
    fn a_long_getlogs_answer_to_a_slow_reader_holds_no_worker() {
        // 50,000 entries with long request ids: about 20 MB of JSON, more than the loopback
        // buffers hold, so the answer stalls until the client reads.
        const ENTRIES: u64 = 50_000;
        let app = app_with_long_log(ENTRIES);
        let server = start_with_timeouts(&config(1, 64), app, Timeouts::STANDARD).unwrap();
        let mut slow = connect(&server);
        slow.write_all(b"GET /getlogs HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        wait_until_writes_stall(&server, &slow);
        // The only worker is free while the answer waits for the reader.
        let mut other = connect(&server);
        let (status, _) = exchange(&mut other, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(status, 200);
        // Then the whole answer arrives, complete, and the connection goes on.
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while !received.ends_with(b"\r\n0\r\n\r\n") {
            let read = slow.read(&mut chunk).unwrap();
            assert!(read > 0, "closed after {} bytes", received.len());
            received.extend_from_slice(&chunk[..read]);
        }
        let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(received.starts_with(b"HTTP/1.1 200 "));
        let mut body = Vec::new();
        let progress = ChunkedDecoder::new(u64::MAX)
            .decode(&received[head_end..], Some(&mut body))
            .unwrap();
        assert!(progress.finished);
        assert_eq!(head_end + progress.consumed, received.len());
        let text = String::from_utf8(body).unwrap();
        let logs = crate::json::decode(text.trim_end()).unwrap();
        assert_eq!(logs.get("returned").and_then(|v| v.as_u64()), Some(ENTRIES));
        assert_eq!(
            logs.get("next_since").and_then(|v| v.as_u64()),
            Some(ENTRIES)
        );
        assert_healthy(&mut slow);
        server.shutdown();
    }

    #[test]
    fn a_request_and_the_clients_close_arriving_together_are_answered() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        assert_healthy(&mut stream);
        thread::sleep(LONGER_THAN_LINGER);
        // Request and FIN in one go to a parked connection: the peer-closed report is the only
        // one it gets, so the request must be answered from it.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_response(&mut stream, &mut pending).unwrap().0, 200);
        assert_eq!(read_response(&mut stream, &mut pending).unwrap().0, 200);
        assert!(pending.is_empty());
        assert!(closed_silently(&mut stream));
        server.shutdown();
    }

    #[test]
    fn partial_head_gets_408_at_the_header_deadline() {
        let server = start_test_server(1, 64, short_timeouts());
        let mut stream = connect(&server);
        stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let (status, _) = read_response(&mut stream, &mut Vec::new()).unwrap();
        assert_eq!(status, 408);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(closed_silently(&mut stream));
        server.shutdown();
    }

    /// Pipelines `count` `GET /health` on `stream` from another thread, then half-closes; reads
    /// every answer. How many answers arrived, and whether the end was a clean EOF (`false`:
    /// an error such as a reset, or 2 s without a byte: the answers take well under a second,
    /// so a pause that long is the server waiting out a timeout).
    fn pipeline_health(stream: TcpStream, count: usize) -> (usize, bool) {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            for _ in 0..count / 1000 {
                if writer.write_all(&REQUEST.repeat(1000)).is_err() {
                    return;
                }
            }
            let _ = writer.write_all(&REQUEST.repeat(count % 1000));
            let _ = writer.shutdown(Shutdown::Write);
        });
        let (answers, clean_end) = count_answers(stream);
        let _ = sender.join();
        (answers, clean_end)
    }

    /// Reads until the end, counting status lines (across reads).
    fn count_answers(mut stream: TcpStream) -> (usize, bool) {
        let mut answers = 0;
        let mut tail: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return (answers, true),
                Ok(read) => {
                    tail.extend_from_slice(&chunk[..read]);
                    answers += tail.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
                    let keep = tail.len().min(8);
                    tail.drain(..tail.len() - keep);
                }
                Err(_) => return (answers, false),
            }
        }
    }

    #[test]
    fn a_busy_pipeline_is_not_closed_as_idle() {
        // Requests keep coming for several idle timeouts (300 ms here), answered turn after
        // turn: the connection is busy, not idle.
        let server = start_test_server(1, 64, short_timeouts());
        let stream = connect(&server);
        let started = Instant::now();
        let (answers, clean_end) = pipeline_health(stream, 300_000);
        assert_eq!(
            (answers, clean_end),
            (300_000, true),
            "after {:?}",
            started.elapsed()
        );
        server.shutdown();
    }

    #[test]
    fn a_half_close_after_a_long_pipeline_closes_once_everything_is_answered() {
        // The peer's close is reported once, while answers are still owed; the turns after it
        // must still see it and close, not wait for the idle timeout (5 s here).
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        for count in [17, 100, 500, 1000, 500, 1000, 2000] {
            let stream = connect(&server);
            let (answers, clean_end) = pipeline_health(stream, count);
            assert_eq!((answers, clean_end), (count, true));
        }
        server.shutdown();
    }

    #[test]
    fn a_partial_head_request_gets_408_without_content() {
        let server = start_test_server(1, 64, short_timeouts());
        let mut stream = connect(&server);
        stream.write_all(b"HEAD /health HTTP/1.1\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "content after the head: {text:?}"
        );
        server.shutdown();
    }

    #[test]
    fn trickled_head_gets_408_even_while_bytes_keep_coming() {
        let server = start_test_server(1, 64, short_timeouts());
        let mut stream = connect(&server);
        stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        let mut pending = Vec::new();
        while started.elapsed() < Duration::from_secs(2) {
            if stream.write_all(b"X-A: b\r\n").is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
            stream.set_nonblocking(true).unwrap();
            let mut chunk = [0u8; 512];
            if let Ok(read) = stream.read(&mut chunk) {
                pending.extend_from_slice(&chunk[..read]);
            }
            stream.set_nonblocking(false).unwrap();
            if !pending.is_empty() {
                break;
            }
        }
        let (status, _) = read_response(&mut stream, &mut pending).unwrap();
        assert_eq!(status, 408);
        server.shutdown();
    }

    #[test]
    fn eof_mid_request_closes_without_an_answer() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let mut stream = connect(&server);
        stream.write_all(b"GET /health HT").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert!(closed_silently(&mut stream));
        server.shutdown();
    }

    #[test]
    fn connections_past_the_limit_get_503_and_the_count_recovers() {
        let server = start_test_server(1, 2, Timeouts::STANDARD);
        let mut kept = [connect(&server), connect(&server)];
        for stream in &mut kept {
            let (status, _) = exchange(stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(status, 200);
        }
        assert_eq!(server.open_connections(), 2);
        let mut turned_away = connect(&server);
        let (status, body) =
            exchange(&mut turned_away, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((status, body.as_slice()), (503, BUSY_BODY));

        let [first, mut second] = kept;
        drop(first);
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while server.open_connections() > 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.open_connections(), 1);
        let mut again = connect(&server);
        assert_healthy(&mut again);
        assert_healthy(&mut second);
        server.shutdown();
    }

    /// Everything the server sends until it closes.
    fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        bytes
    }

    #[test]
    fn past_the_limit_a_head_request_gets_503_without_content_and_a_retry_after() {
        let server = start_test_server(1, 1, Timeouts::STANDARD);
        let mut kept = connect(&server);
        assert_healthy(&mut kept);
        // The line arrives after the connection was turned away: the 503 waits for it.
        let mut turned_away = connect(&server);
        thread::sleep(Duration::from_millis(50));
        turned_away
            .write_all(b"HEAD /getbalance HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let reply = String::from_utf8(read_to_close(&mut turned_away)).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply}"
        );
        assert!(reply.contains("\r\nRetry-After: 1\r\n"), "{reply}");
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\n"), "content after a HEAD: {reply}");
        server.shutdown();
    }

    #[test]
    fn past_the_limit_a_client_that_never_sends_its_request_line_still_gets_the_503() {
        let server = start_test_server(1, 1, Timeouts::STANDARD);
        let mut kept = connect(&server);
        assert_healthy(&mut kept);
        let mut silent = connect(&server);
        silent.write_all(b"GET /getbal").unwrap();
        let waited = Instant::now();
        let reply = String::from_utf8(read_to_close(&mut silent)).unwrap();
        assert!(
            waited.elapsed() >= LINGERING_CLOSE,
            "{:?}",
            waited.elapsed()
        );
        assert!(
            reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{reply:?}"
        );
        assert!(reply.contains("\r\nRetry-After: 1\r\n"), "{reply}");
        server.shutdown();
    }

    #[test]
    fn past_the_limit_a_client_still_sending_its_body_reads_the_503() {
        let server = start_test_server(1, 1, Timeouts::STANDARD);
        let mut kept = connect(&server);
        assert_healthy(&mut kept);
        let mut turned_away = connect(&server);
        let mut sender = turned_away.try_clone().unwrap();
        // 4 MiB: far more than the socket buffers, so a close without reading it first would
        // reset the connection and destroy the 503 before the client reads it.
        let body = vec![b'x'; 4 << 20];
        let sending = thread::spawn(move || {
            let head = format!(
                "POST /getbalance HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            sender.write_all(head.as_bytes())?;
            sender.write_all(&body)
        });
        let sent = sending.join().unwrap();
        assert!(sent.is_ok(), "the body was refused: {sent:?}");
        let (status, reason) = read_response(&mut turned_away, &mut Vec::new()).unwrap();
        assert_eq!((status, reason.as_slice()), (503, BUSY_BODY));
        server.shutdown();
    }

    #[test]
    fn many_clients_share_few_workers() {
        let server = start_test_server(2, 1000, Timeouts::STANDARD);
        let address = server.local_addr();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(move || {
                    let mut streams: Vec<TcpStream> = (0..20)
                        .map(|_| {
                            let stream = TcpStream::connect(address).unwrap();
                            stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                            stream
                        })
                        .collect();
                    let mut answered = 0;
                    for _ in 0..3 {
                        for stream in &mut streams {
                            let response =
                                exchange(stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
                            answered += usize::from(response.map(|r| r.0) == Some(200));
                        }
                    }
                    answered
                })
            })
            .collect();
        let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(answered, 8 * 20 * 3);
        server.shutdown();
    }

    #[test]
    fn parking_under_contention_never_stalls_a_client() {
        // Many connections per worker force a park and a wake for nearly every request; a lost
        // wake would show up as a wait near POLL_WAIT_CAP.
        let server = start_test_server(1, 1000, Timeouts::STANDARD);
        let address = server.local_addr();
        let clients: Vec<_> = (0..16)
            .map(|_| {
                thread::spawn(move || {
                    let mut stream = TcpStream::connect(address).unwrap();
                    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                    let mut slowest = Duration::ZERO;
                    for _ in 0..150 {
                        let started = Instant::now();
                        let response =
                            exchange(&mut stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_eq!(response.map(|r| r.0), Some(200));
                        slowest = slowest.max(started.elapsed());
                    }
                    slowest
                })
            })
            .collect();
        let slowest = clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .max()
            .unwrap();
        assert!(
            slowest < POLL_WAIT_CAP / 2,
            "slowest request took {slowest:?}"
        );
        server.shutdown();
    }

    #[test]
    fn shutdown_is_prompt_and_closes_parked_connections() {
        let server = start_with_timeouts(
            &config(2, 64),
            app(Weights::parse("timeout=1").unwrap()),
            Timeouts::STANDARD,
        )
        .unwrap();
        let mut idle = connect(&server);
        assert_healthy(&mut idle);
        let mut hung = connect(&server);
        hung.write_all(b"GET /getbalance HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        let ours = listening_sockets(server.local_addr().port());
        assert!(!ours.is_empty());
        let started = Instant::now();
        server.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(closed_silently(&mut idle));
        assert!(closed_silently(&mut hung));
        assert_closed(&ours);
    }

    /// The inodes of the listening sockets on `port`. Only a socket's identity tells that a
    /// listener is gone: a test running alongside may bind the same port as soon as it is free.
    fn listening_sockets(port: u16) -> Vec<String> {
        const LISTEN: &str = "0A";
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1)?.rsplit(':').next()?;
                (u16::from_str_radix(local_port, 16).ok() == Some(port)
                    && fields.get(3) == Some(&LISTEN))
                .then(|| fields.get(9).map(|inode| inode.to_string()))?
            })
            .collect()
    }

    fn assert_closed(listeners: &[String]) {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        for inode in listeners {
            let still = table
                .lines()
                .any(|line| line.split_whitespace().nth(9) == Some(inode.as_str()));
            assert!(!still, "listener {inode} still open");
        }
    }

    #[test]
    fn dropping_the_server_stops_it_too() {
        let server = start_test_server(1, 64, Timeouts::STANDARD);
        let ours = listening_sockets(server.local_addr().port());
        assert!(!ours.is_empty());
        drop(server);
        assert_closed(&ours);
    }

    #[test]
    fn invalid_configurations_and_bind_failures_are_errors() {
        let zero_threads = start(&config(0, 10), app(Weights::owner_default()));
        assert!(matches!(zero_threads, Err(ServerError::InvalidConfig(_))));
        let zero_connections = start(&config(1, 0), app(Weights::owner_default()));
        assert!(matches!(
            zero_connections,
            Err(ServerError::InvalidConfig(_))
        ));
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut busy = config(1, 10);
        busy.listen = taken.local_addr().unwrap();
        let error = start(&busy, app(Weights::owner_default())).unwrap_err();
        assert!(matches!(error, ServerError::Bind { .. }));
        assert!(error.to_string().starts_with("cannot listen on 127.0.0.1:"));
    }

    #[test]
    fn connection_limit_respects_the_open_file_limit() {
        let cases = [
            // (requested, threads, file limit, allowed)
            (1000, 4, 1_000_000, 1000),
            (1000, 4, 1024, 1024 - 4 - FILE_DESCRIPTOR_RESERVE as usize),
            (1000, 4, 10, 1),
            (1000, 2, 64, 48),
            (1000, 2, 16, 1),
            (1000, 2, 100, 75),
            (5, 1, u64::MAX, 5),
        ];
        for (requested, threads, limit, allowed) in cases {
            assert_eq!(
                connections_within_file_limit(requested, threads, limit),
                allowed,
                "{requested} {threads} {limit}"
            );
        }
    }

    #[test]
    fn wake_address_replaces_wildcards_with_loopback() {
        let cases = [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("[::]:81", "[::1]:81"),
            ("10.1.2.3:82", "10.1.2.3:82"),
        ];
        for (local, expected) in cases {
            assert_eq!(
                wake_address(local.parse().unwrap()),
                expected.parse::<SocketAddr>().unwrap()
            );
        }
    }

    #[test]
    fn read_buffer_grows_to_the_head_limit_and_no_further() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let counter = Arc::new(AtomicUsize::new(0));
        let mut connection = Connection::new(
            TcpStream::connect(listener.local_addr().unwrap()).unwrap(),
            listener.local_addr().unwrap(),
            0,
            ConnectionSlot::take(&counter),
        );
        assert_eq!(connection.buffer.len(), READ_BUFFER_INITIAL);
        let mut grown = 0;
        loop {
            connection.filled = connection.buffer.len();
            if !connection.make_room() {
                break;
            }
            grown += 1;
            assert!(grown < 10);
        }
        assert_eq!(connection.buffer.len(), HEAD_LIMIT);
    }

    #[test]
    fn date_cache_matches_the_clock() {
        let mut cache = DateCache::new();
        let before = UtcTime::from_unix_millis(clock::now_unix_millis()).http_date();
        let cached = *cache.current();
        let after = UtcTime::from_unix_millis(clock::now_unix_millis()).http_date();
        assert!(cached == before || cached == after);
        assert!(cached.ends_with(b" GMT"));
    }
}
