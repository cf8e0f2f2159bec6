//! The few operating-system calls std does not offer: epoll (to hold thousands of parked
//! connections on one thread), blocking and awaiting SIGINT/SIGTERM/SIGHUP (a clean shutdown
//! without an async-signal handler), ignoring SIGXFSZ, the bytes a socket still has queued and
//! its TCP state, socket options (a cap on unsent bytes, reset on close), raising the open-file
//! limit, and an advisory lock on the log file.
//!
//! This is the only module allowed `unsafe`: each block is one libc call on memory this module
//! owns, with the reason beside it. Linux only (x86_64 and aarch64 layouts).
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Most readiness reports taken from the kernel by one [`Epoll::wait`]; more stay queued in the
/// kernel for the next call, so this only bounds the stack buffer, not what can be watched.
pub const MAX_EVENTS_PER_WAIT: usize = 256;

/// The longest wait one `epoll_wait` call accepts, in milliseconds (its timeout is a C `int`).
const MAX_WAIT_MILLIS: u128 = i32::MAX as u128;

// Values from the Linux UAPI headers; identical on x86_64 and aarch64.
const EPOLL_CLOEXEC: i32 = 0o2_000_000;
const EPOLL_CTL_ADD: i32 = 1;
#[cfg(test)]
const EPOLL_CTL_DEL: i32 = 2;
const EPOLL_CTL_MOD: i32 = 3;
const EPOLLIN: u32 = 0x001;
const EPOLLOUT: u32 = 0x004;
const EPOLLERR: u32 = 0x008;
const EPOLLHUP: u32 = 0x010;
const EPOLLRDHUP: u32 = 0x2000;
const EPOLLET: u32 = 1 << 31;
const EINTR: i32 = 4;
/// `flock` operations and the error for a lock held elsewhere.
const LOCK_EX: i32 = 2;
const LOCK_NB: i32 = 4;
const EWOULDBLOCK: i32 = 11;
/// `recv`/`send` flag: return `EAGAIN` at once instead of waiting.
const MSG_DONTWAIT: i32 = 0x40;
/// `send` flag: a peer that has gone away is an `EPIPE` error, not a SIGPIPE.
const MSG_NOSIGNAL: i32 = 0x4000;
const SIG_BLOCK: i32 = 0;
/// Interrupt from the terminal (Ctrl-C).
pub const SIGINT: i32 = 2;
/// Polite termination request (`kill`, service managers).
pub const SIGTERM: i32 = 15;
/// The terminal or ssh session went away: by default it kills at once, losing unwritten entries.
pub const SIGHUP: i32 = 1;
/// A write past the file-size limit (`ulimit -f`): by default it kills at once.
const SIGXFSZ: i32 = 25;
/// `signal`'s "ignore" disposition.
const SIG_IGN: usize = 1;
/// What `signal` returns on failure.
const SIG_ERR: usize = usize::MAX;
const RLIMIT_NOFILE: i32 = 7;
const SOL_SOCKET: i32 = 1;
const SO_LINGER: i32 = 13;
/// `ioctl` request: bytes in a TCP socket's send queue not yet acknowledged by the peer
/// (`SIOCOUTQ`, the same number as `TIOCOUTQ`).
const SIOCOUTQ: u64 = 0x5411;
const IPPROTO_TCP: i32 = 6;
/// `getsockopt` at `IPPROTO_TCP`: `struct tcp_info`, whose first byte is the connection's state.
const TCP_INFO: i32 = 11;
/// `setsockopt` at `IPPROTO_TCP`: how many unsent bytes a socket may hold (Linux 3.12+).
const TCP_NOTSENT_LOWAT: i32 = 25;
/// The TCP state of a connection that is gone: reset by the peer, or closed both ways.
const TCP_CLOSE: u8 = 7;
const RLIM_INFINITY: u64 = u64::MAX;
/// What to ask for when the hard open-file limit is "unlimited": the kernel refuses an infinite
/// soft limit, and its default ceiling (`fs.nr_open`) is this value.
const OPEN_FILE_CEILING: u64 = 1 << 20;

/// The kernel's `struct epoll_event`: packed on x86_64 (for 32-bit compatibility), naturally
/// aligned elsewhere.
#[cfg(target_arch = "x86_64")]
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct RawEpollEvent {
    events: u32,
    data: u64,
}

#[cfg(not(target_arch = "x86_64"))]
#[repr(C)]
#[derive(Clone, Copy)]
struct RawEpollEvent {
    events: u32,
    data: u64,
}

/// glibc's and musl's `sigset_t`: 1024 bits. The kernel reads only the first 8 bytes, but libc
/// functions may touch all of them, so the whole size is reserved.
#[repr(C)]
struct SignalSet {
    bits: [u64; 16],
}

impl SignalSet {
    fn termination_signals() -> io::Result<SignalSet> {
        let mut set = SignalSet { bits: [0; 16] };
        // SAFETY: `set` is a live, writable, correctly sized and aligned sigset_t.
        if unsafe { sigemptyset(&mut set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            // SAFETY: as above; the signal numbers are valid.
            if unsafe { sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set)
    }
}

/// The kernel's `struct timespec` on 64-bit Linux.
#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

/// `struct linger`: whether and how long `close` waits for unsent data.
#[repr(C)]
#[derive(Clone, Copy)]
struct Linger {
    on: i32,
    seconds: i32,
}

/// The kernel's `struct rlimit` on 64-bit Linux.
#[repr(C)]
struct ResourceLimit {
    soft: u64,
    hard: u64,
}

extern "C" {
    fn epoll_create1(flags: i32) -> i32;
    fn epoll_ctl(epoll: i32, operation: i32, fd: i32, event: *mut RawEpollEvent) -> i32;
    fn epoll_wait(epoll: i32, events: *mut RawEpollEvent, max_events: i32, timeout: i32) -> i32;
    fn close(fd: i32) -> i32;
    fn recv(fd: i32, buffer: *mut u8, length: usize, flags: i32) -> isize;
    fn send(fd: i32, buffer: *const u8, length: usize, flags: i32) -> isize;
    fn sigemptyset(set: *mut SignalSet) -> i32;
    fn sigaddset(set: *mut SignalSet, signal: i32) -> i32;
    fn pthread_sigmask(how: i32, set: *const SignalSet, old: *mut SignalSet) -> i32;
    fn sigwait(set: *const SignalSet, signal: *mut i32) -> i32;
    fn sigtimedwait(set: *const SignalSet, info: *mut u8, timeout: *const Timespec) -> i32;
    fn getrlimit(resource: i32, limit: *mut ResourceLimit) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, length: u32) -> i32;
    fn getsockopt(fd: i32, level: i32, name: i32, value: *mut u8, length: *mut u32) -> i32;
    fn setrlimit(resource: i32, limit: *const ResourceLimit) -> i32;
    fn signal(signal: i32, handler: usize) -> usize;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn flock(fd: i32, operation: i32) -> i32;
}

/// Reads what has already arrived on a socket without waiting, whatever its blocking mode or
/// read timeout: `WouldBlock` when nothing has. One `recv(MSG_DONTWAIT)`, where std would need
/// two extra calls to switch the socket to nonblocking and back.
pub fn receive_without_waiting(socket: &impl AsRawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is live, writable memory of `buffer.len()` bytes for the whole call, and
    // the descriptor is open while `socket` is borrowed.
    let result = unsafe {
        recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr(),
            buffer.len(),
            MSG_DONTWAIT,
        )
    };
    // A negative result is -1 with errno set; any other fits in usize.
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// Writes what fits into a socket's send buffer without waiting, whatever its blocking mode or
/// write timeout: `WouldBlock` when nothing fits. One `send(MSG_DONTWAIT)`.
pub fn send_without_waiting(socket: &impl AsRawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is live, readable memory of `bytes.len()` bytes for the whole call, and the
    // descriptor is open while `socket` is borrowed.
    let result = unsafe {
        send(
            socket.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            MSG_DONTWAIT | MSG_NOSIGNAL,
        )
    };
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// Makes closing the socket reset the connection (`SO_LINGER` 0) instead of leaving what the
/// peer never read queued in the kernel until the peer goes: for a client given up on because
/// it stopped reading, whose unsent answers would otherwise outlive its descriptor.
pub fn reset_on_close(socket: &impl AsRawFd) -> io::Result<()> {
    set_socket_option(socket, SOL_SOCKET, SO_LINGER, &Linger { on: 1, seconds: 0 })
}

/// Caps the bytes the kernel holds for a socket that it has not sent yet (`TCP_NOTSENT_LOWAT`):
/// once that many are queued a write takes nothing (`WouldBlock`) and the socket is not
/// writable; the check comes before a write, so one write may go past the cap. Without it
/// the kernel grows the send buffer of a client that stopped reading to `tcp_wmem`'s maximum
/// (4 MiB by default), and a few hundred such clients exhaust the machine's TCP memory. Bytes
/// in flight are not counted, so a fast reader on a long link still gets a full window. Set on
/// a listener, it is inherited by every connection accepted from it.
pub fn limit_unsent(socket: &impl AsRawFd, bytes: u32) -> io::Result<()> {
    set_socket_option(socket, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &bytes)
}

/// Caps a socket's receive buffer (`SO_RCVBUF`), as a client on a slow link has: the tests'
/// slow readers need it, or the kernel buffers megabytes for them whatever they read.
#[cfg(test)]
pub fn set_receive_buffer(socket: &impl AsRawFd, bytes: i32) -> io::Result<()> {
    const SO_RCVBUF: i32 = 8;
    set_socket_option(socket, SOL_SOCKET, SO_RCVBUF, &bytes)
}

/// Sets the option `name` at `level` to `value`, a plain C value (an int, a struct linger).
fn set_socket_option<T: Copy>(
    socket: &impl AsRawFd,
    level: i32,
    name: i32,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is live and of the size given for the whole call, and the descriptor is
    // open while `socket` is borrowed.
    let result = unsafe {
        setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes sent on `socket` that the peer has not acknowledged yet and still may: answers queued
/// in the kernel, which a client that stopped reading leaves there. Zero once the connection is
/// gone (a reset): `SIOCOUTQ` still counts what was queued then, though none of it will ever
/// be sent, and a connection waiting for it to go out would hold its slot for nothing.
pub fn unsent_bytes(socket: &impl AsRawFd) -> io::Result<usize> {
    let mut queued: i32 = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points to `queued`, live for
    // the whole call; the descriptor is open while `socket` is borrowed.
    let result = unsafe { ioctl(socket.as_raw_fd(), SIOCOUTQ, &mut queued as *mut i32) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let queued = usize::try_from(queued).unwrap_or(0);
    if queued > 0 && tcp_state(socket)? == TCP_CLOSE {
        return Ok(0);
    }
    Ok(queued)
}

/// The kernel's state of a TCP connection (`tcpi_state`: 1 established ... 7 closed).
fn tcp_state(socket: &impl AsRawFd) -> io::Result<u8> {
    // The kernel copies as much of `struct tcp_info` as the buffer holds; the state is first.
    let mut info = [0u8; 8];
    let mut length = info.len() as u32;
    // SAFETY: `info` is writable for `length` bytes and `length` is a live u32 the kernel
    // updates; the descriptor is open while `socket` is borrowed.
    let result = unsafe {
        getsockopt(
            socket.as_raw_fd(),
            IPPROTO_TCP,
            TCP_INFO,
            info.as_mut_ptr(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    if length == 0 {
        return Err(io::Error::other("TCP_INFO returned nothing"));
    }
    Ok(info[0])
}

/// Takes an exclusive advisory lock (`flock`) on `file` without waiting: `Ok(false)` when another
/// open file holds one. The lock goes with the open file, so it ends when the file is closed or
/// the process exits, however it exits. An error means this file system cannot lock.
pub fn try_lock_exclusive(file: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: flock takes a descriptor and flags only; the descriptor is open while borrowed.
    if unsafe { flock(file.as_raw_fd(), LOCK_EX | LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(EWOULDBLOCK) {
        return Ok(false);
    }
    Err(error)
}

/// How a descriptor's readiness is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Once per change (new data, peer close): the reader must take everything that is there
    /// (a short read means it did) or it hears nothing more. No re-arming between requests.
    Edge,
    /// For as long as input is waiting.
    Level,
    /// Like [`Watch::Edge`], and also when room opens up in the send buffer: for a response
    /// that did not fit.
    EdgeAndWritable,
}

/// One readiness report from [`Epoll::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    /// Data (or EOF) can be read.
    pub readable: bool,
    /// Room opened up in the send buffer (only under [`Watch::EdgeAndWritable`]).
    pub writable: bool,
    /// The peer closed its side, or the socket has an error.
    pub closed: bool,
}

/// An epoll instance, closed on drop.
#[derive(Debug)]
pub struct Epoll {
    fd: RawFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the returned descriptor is owned by the new value.
        let fd = unsafe { epoll_create1(EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd })
    }

    /// Watches `fd` for input and peer close.
    pub fn add(&self, fd: RawFd, token: u64, watch: Watch) -> io::Result<()> {
        self.control(EPOLL_CTL_ADD, fd, token, watch)
    }

    /// Changes the token and the kind of watch of a descriptor already added. The kernel checks
    /// readiness again, so input that arrived before the change is reported even under
    /// [`Watch::Edge`]: one call instead of a delete and an add.
    pub fn modify(&self, fd: RawFd, token: u64, watch: Watch) -> io::Result<()> {
        self.control(EPOLL_CTL_MOD, fd, token, watch)
    }

    fn control(&self, operation: i32, fd: RawFd, token: u64, watch: Watch) -> io::Result<()> {
        let interest = EPOLLIN
            | EPOLLRDHUP
            | match watch {
                Watch::Edge => EPOLLET,
                Watch::Level => 0,
                Watch::EdgeAndWritable => EPOLLET | EPOLLOUT,
            };
        let mut event = RawEpollEvent {
            events: interest,
            data: token,
        };
        // SAFETY: `event` is a valid epoll_event during the call, which copies it.
        let result = unsafe { epoll_ctl(self.fd, operation, fd, &mut event) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The server never needs it (closing a socket leaves the set); the tests check removal.
    #[cfg(test)]
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // A non-null event pointer keeps kernels before 2.6.9 happy; it is ignored otherwise.
        let mut unused = RawEpollEvent { events: 0, data: 0 };
        // SAFETY: `unused` is a valid epoll_event for the duration of the call.
        let result = unsafe { epoll_ctl(self.fd, EPOLL_CTL_DEL, fd, &mut unused) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) and replaces `events` with what is ready.
    /// An interrupted wait returns with no events.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let timeout_millis = match timeout {
            None => -1,
            // Rounded up, so a deadline 0.3 ms away is not polled in a busy loop.
            Some(duration) => {
                let millis = duration.as_nanos().div_ceil(1_000_000);
                i32::try_from(millis.min(MAX_WAIT_MILLIS)).unwrap_or(i32::MAX)
            }
        };
        // Left uninitialised: zeroing 3 KB per wait cost more than the wait's own bookkeeping
        // when it reports one or two connections.
        let mut raw = [MaybeUninit::<RawEpollEvent>::uninit(); MAX_EVENTS_PER_WAIT];
        // SAFETY: `raw` is writable for MAX_EVENTS_PER_WAIT entries, the count the kernel is told.
        let count = unsafe {
            epoll_wait(
                self.fd,
                raw.as_mut_ptr().cast::<RawEpollEvent>(),
                MAX_EVENTS_PER_WAIT as i32,
                timeout_millis,
            )
        };
        if count < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(EINTR) {
                return Ok(());
            }
            return Err(error);
        }
        let count = usize::try_from(count).unwrap_or(0).min(MAX_EVENTS_PER_WAIT);
        for entry in &raw[..count] {
            // SAFETY: the kernel wrote the first `count` entries.
            let entry = unsafe { entry.assume_init() };
            // Copies out of the (possibly packed) struct: no reference to an unaligned field.
            let flags = entry.events;
            let token = entry.data;
            events.push(Event {
                token,
                readable: flags & EPOLLIN != 0,
                writable: flags & EPOLLOUT != 0,
                closed: flags & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0,
            });
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: `fd` came from epoll_create1 and is closed exactly once, here.
        unsafe {
            close(self.fd);
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns later, so
/// they can be awaited with [`wait_for_termination_signal`], and ignores SIGXFSZ, so a log file
/// at the size limit is a write error the log writer reports, not a silent death. Call before
/// spawning threads.
pub fn block_termination_signals() -> io::Result<()> {
    // SAFETY: no pointers; SIG_IGN is a valid disposition for SIGXFSZ.
    if unsafe { signal(SIGXFSZ, SIG_IGN) } == SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    let set = SignalSet::termination_signals()?;
    // SAFETY: `set` is a valid, initialised sigset_t; a null old set is allowed.
    let result = unsafe { pthread_sigmask(SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result != 0 {
        // pthread functions return the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives; returns its number.
pub fn wait_for_termination_signal() -> io::Result<i32> {
    let set = SignalSet::termination_signals()?;
    let mut signal = 0;
    // SAFETY: `set` is a valid sigset_t and `signal` a writable int, both live across the call.
    let result = unsafe { sigwait(&set, &mut signal) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(signal)
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP (blocked by
/// [`block_termination_signals`]): the signal, or `None` when none came.
pub fn termination_signal_within(timeout: Duration) -> io::Result<Option<i32>> {
    let set = SignalSet::termination_signals()?;
    let timeout = Timespec {
        seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        nanoseconds: i64::from(timeout.subsec_nanos()),
    };
    // SAFETY: `set` and `timeout` are valid and live across the call; a null `siginfo_t` pointer
    // is allowed (the signal number is the return value).
    let result = unsafe { sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
    if result >= 0 {
        return Ok(Some(result));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // The time passed (EAGAIN), or another signal's handler ran (EINTR): none of ours came.
        Some(EWOULDBLOCK | EINTR) => Ok(None),
        _ => Err(error),
    }
}

fn current_open_file_limit() -> io::Result<ResourceLimit> {
    let mut limit = ResourceLimit { soft: 0, hard: 0 };
    // SAFETY: `limit` is a writable struct rlimit.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit. When the
/// kernel refuses the raise, the unchanged soft limit is returned: it is still the truth.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let limit = current_open_file_limit()?;
    let target = if limit.hard == RLIM_INFINITY {
        OPEN_FILE_CEILING.max(limit.soft)
    } else {
        limit.hard
    };
    if target <= limit.soft {
        return Ok(limit.soft);
    }
    let raised = ResourceLimit {
        soft: target,
        hard: limit.hard,
    };
    // SAFETY: `raised` is a valid struct rlimit, read by the kernel during the call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } != 0 {
        return Ok(limit.soft);
    }
    Ok(current_open_file_limit()?.soft)
}

/// A global allocator for the unit tests that counts, per thread, the allocations made, so a
/// test can prove a hot path allocates nothing while other tests run on other threads.
#[cfg(test)]
pub mod counting_allocator {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // `const` and without a destructor: reading it never allocates or registers anything,
        // which an allocator's own bookkeeping must not.
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct CountingAllocator;

    fn count() {
        // `try_with`: during thread teardown the slot may be gone; such allocations are not ours.
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    }

    // SAFETY: every method forwards to the system allocator with the caller's arguments
    // unchanged; counting touches only a thread-local integer.
    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract for `alloc` is passed on as it is.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: `ptr` came from this allocator, which is the system one underneath.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as for `realloc`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    /// Allocations (and reallocations) made by the calling thread so far.
    pub fn allocations_on_this_thread() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    extern "C" {
        fn pthread_self() -> u64;
        fn pthread_kill(thread: u64, signal: i32) -> i32;
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(2));

    fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn raw_event_has_the_kernel_layout() {
        let expected = if cfg!(target_arch = "x86_64") { 12 } else { 16 };
        assert_eq!(std::mem::size_of::<RawEpollEvent>(), expected);
        assert_eq!(std::mem::size_of::<SignalSet>(), 128);
        assert_eq!(std::mem::size_of::<ResourceLimit>(), 16);
    }

    #[test]
    fn epoll_reports_data_then_peer_close() {
        let (mut client, mut server) = connected_pair();
        let epoll = Epoll::new().unwrap();
        epoll.add(server.as_raw_fd(), 42, Watch::Level).unwrap();
        let mut events = Vec::new();

        epoll.wait(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "nothing sent yet: {events:?}");

        client.write_all(b"x").unwrap();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(
            events,
            vec![Event {
                token: 42,
                readable: true,
                writable: false,
                closed: false
            }]
        );
        let mut byte = [0u8; 1];
        assert_eq!(server.read(&mut byte).unwrap(), 1);

        drop(client);
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].token, 42);
        assert!(events[0].closed);
        assert!(events[0].readable, "EOF is readable");
    }

    #[test]
    fn edge_reports_each_arrival_once_and_modify_reports_waiting_input() {
        let (mut client, mut server) = connected_pair();
        let epoll = Epoll::new().unwrap();
        epoll.add(server.as_raw_fd(), 7, Watch::Edge).unwrap();
        client.write_all(b"hello").unwrap();
        let mut events = Vec::new();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        // Data is still unread, yet an edge watch reports it only once.
        epoll
            .wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty());
        // New input is a new edge.
        client.write_all(b"!").unwrap();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].token, 7);
        // Modifying reports input that is already waiting, with the new token.
        epoll.modify(server.as_raw_fd(), 9, Watch::Edge).unwrap();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].token, 9);
        let mut received = [0u8; 16];
        assert_eq!(
            receive_without_waiting(&server, &mut received).unwrap(),
            6,
            "everything waiting is taken in one short read"
        );
        assert_eq!(
            receive_without_waiting(&server, &mut received)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(send_without_waiting(&server, b"back").unwrap(), 4);
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"back");

        // A level watch keeps reporting until the input is read.
        client.write_all(b"more").unwrap();
        epoll.modify(server.as_raw_fd(), 11, Watch::Level).unwrap();
        for _ in 0..2 {
            epoll.wait(&mut events, WAIT).unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].token, 11);
        }
        assert_eq!(server.read(&mut received).unwrap(), 4);

        epoll.delete(server.as_raw_fd()).unwrap();
        assert!(epoll.delete(server.as_raw_fd()).is_err(), "already gone");
        assert!(
            epoll.modify(server.as_raw_fd(), 9, Watch::Edge).is_err(),
            "only what was added can be modified"
        );
        epoll.add(server.as_raw_fd(), 8, Watch::Level).unwrap();
        client.write_all(b"x").unwrap();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events[0].token, 8);
        epoll.delete(server.as_raw_fd()).unwrap();
        epoll
            .wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn a_writable_watch_reports_when_a_full_send_buffer_drains() {
        let (mut client, server) = connected_pair();
        let epoll = Epoll::new().unwrap();
        epoll
            .add(server.as_raw_fd(), 5, Watch::EdgeAndWritable)
            .unwrap();
        let mut events = Vec::new();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].writable && !events[0].readable, "{events:?}");
        let chunk = [b'z'; 64 * 1024];
        let mut sent = 0;
        loop {
            match send_without_waiting(&server, &chunk) {
                Ok(count) => sent += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("{error}"),
            }
        }
        assert!(sent > 0);
        epoll
            .wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty(), "full: {events:?}");
        let mut received = vec![0u8; sent];
        client.read_exact(&mut received).unwrap();
        epoll.wait(&mut events, WAIT).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].writable, "{events:?}");
        // Back to a plain edge watch: room in the send buffer is no longer news.
        epoll.modify(server.as_raw_fd(), 5, Watch::Edge).unwrap();
        epoll
            .wait(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_reset_connection_has_nothing_left_to_send() {
        let (client, server) = connected_pair();
        let chunk = [b'z'; 64 * 1024];
        while send_without_waiting(&server, &chunk).is_ok() {}
        assert!(unsent_bytes(&server).unwrap() > 0);
        reset_on_close(&client).unwrap();
        drop(client);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        // The reset arrives on loopback at once; the loop only bounds a slow machine.
        while tcp_state(&server).unwrap() != TCP_CLOSE && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(unsent_bytes(&server).unwrap(), 0);
    }

    #[test]
    fn wait_times_out_empty() {
        let epoll = Epoll::new().unwrap();
        let mut events = vec![Event {
            token: 1,
            readable: true,
            writable: true,
            closed: true,
        }];
        let started = std::time::Instant::now();
        epoll
            .wait(&mut events, Some(Duration::from_micros(300)))
            .unwrap();
        assert!(events.is_empty(), "old events are replaced");
        assert!(started.elapsed() >= Duration::from_micros(300));
    }

    #[test]
    fn open_file_limit_is_raised_to_at_least_the_old_soft_limit() {
        let before = current_open_file_limit().unwrap();
        let raised = raise_open_file_limit().unwrap();
        assert!(raised >= before.soft);
        assert!(before.hard == RLIM_INFINITY || raised <= before.hard);
        assert_eq!(current_open_file_limit().unwrap().soft, raised);
    }

    #[test]
    fn blocked_signal_is_received_by_sigwait() {
        // A fresh thread, so the mask change stays out of the test harness's threads; the signal
        // is sent to this thread only, so the process never sees it unblocked.
        let received = std::thread::spawn(|| {
            block_termination_signals().unwrap();
            // SAFETY: signals the calling thread, where SIGTERM is now blocked (it stays pending).
            let result = unsafe { pthread_kill(pthread_self(), SIGTERM) };
            assert_eq!(result, 0);
            wait_for_termination_signal().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(received, SIGTERM);
    }

    #[test]
    fn a_timed_wait_returns_a_pending_signal_or_none() {
        let received = std::thread::spawn(|| {
            block_termination_signals().unwrap();
            let before = termination_signal_within(Duration::from_millis(20)).unwrap();
            // SAFETY: signals the calling thread, where SIGINT is now blocked (it stays pending).
            let result = unsafe { pthread_kill(pthread_self(), SIGINT) };
            assert_eq!(result, 0);
            (
                before,
                termination_signal_within(Duration::from_secs(5)).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(received, (None, Some(SIGINT)));
    }
}
