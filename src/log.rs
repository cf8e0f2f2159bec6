//! The request log: every `/getbalance` request becomes exactly one entry, held in a bounded
//! in-memory ring (served by `/getlogs`) and appended to a log file by a writer thread.
//!
//! Invariants: ids are 1, 2, 3 … in arrival order and the ring is ordered by id with no gaps; the
//! id and the outcome are fixed together under one lock, so the k-th entry carries
//! `Chaos::outcome(k)`. An entry that drops out of memory before the writer saw it is kept aside
//! for the writer, so the file never misses or repeats an entry. A failed write is retried, not
//! dropped.

use crate::chaos::Outcome;
use crate::clock::UtcTime;
use crate::json::ObjectWriter;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the writer appends what has arrived: every entry reaches the file within about this.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(50);
/// The most entries one `page` call inspects, so a reader never holds the lock for long.
pub const MAX_SCAN_PER_PAGE: usize = 4096;

/// What the server knows of a request before its outcome is drawn.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub unix_millis: u64,
    pub client: SocketAddr,
    /// `GET` or `HEAD`.
    pub method: &'a str,
    /// The request target as sent.
    pub target: &'a str,
    /// The client's `X-Request-Id`, if any (bytes as sent).
    pub request_id: Option<&'a [u8]>,
    /// From the request's first byte to its answer being ready.
    pub duration_micros: u64,
    /// The client forced the outcome (`X-Unreliable-Outcome`) instead of taking the draw.
    pub forced: bool,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub unix_millis: u64,
    /// IPv4-mapped IPv6 addresses are stored as IPv4, so `client=` filters match either way.
    pub client: SocketAddr,
    pub method: &'static str,
    pub target: Box<str>,
    pub outcome: Outcome,
    pub request_id: Option<Box<str>>,
    /// `None` for a timeout (nothing was answered).
    pub duration_micros: Option<u64>,
    /// The outcome was forced by the request, not drawn.
    pub forced: bool,
}

/// Totals since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Entries ever recorded (= the last id).
    pub total: u64,
    /// Entries that dropped out of memory (still in the file).
    pub dropped: u64,
    /// Drawn outcomes, indexed by [`Outcome::index`]: what the weights are tested against.
    pub by_outcome: [u64; Outcome::COUNT],
    /// Forced outcomes, indexed by [`Outcome::index`]; not draws, so not part of any test.
    pub forced_by_outcome: [u64; Outcome::COUNT],
}

/// Which entries `/getlogs` returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only entries with an id greater than this.
    pub since: u64,
    pub outcome: Option<Outcome>,
    pub client: Option<IpAddr>,
    pub request_id_prefix: Option<String>,
}

impl Filter {
    fn matches(&self, entry: &Entry) -> bool {
        entry.id > self.since
            && self.outcome.is_none_or(|outcome| entry.outcome == outcome)
            && self
                .client
                .is_none_or(|ip| entry.client.ip() == ip.to_canonical())
            && self.request_id_prefix.as_deref().is_none_or(|prefix| {
                entry
                    .request_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(prefix))
            })
    }
}

/// One slice of a scan: the matching entries, and how far the scan got (the `since` for the next).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub scanned_through: u64,
}

/// The file format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2024-10-23 23:55:31,705 - 192.168.100.59 - 200 OK`, as the original tool wrote.
    Text,
    /// One JSON object per line, the same fields as `/getlogs`.
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<Entry>,
    capacity: usize,
    counts: Counts,
    /// Whether a file writer will collect entries; without one nothing is set aside.
    keeps_file: bool,
    /// The last id the file writer has taken.
    written_through: u64,
    /// Entries that left memory before the writer took them, oldest first.
    evicted_unwritten: Vec<Entry>,
}

/// The in-memory log, shared by every worker and the file writer.
#[derive(Debug)]
pub struct RequestLog {
    ring: Mutex<Ring>,
}

impl RequestLog {
    /// `capacity` entries are kept in memory (at least one); `keeps_file` when a [`LogWriter`]
    /// will collect every entry.
    pub fn new(capacity: usize, keeps_file: bool) -> RequestLog {
        let capacity = capacity.max(1);
        RequestLog {
            ring: Mutex::new(Ring {
                entries: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                counts: Counts::default(),
                keeps_file,
                written_through: 0,
                evicted_unwritten: Vec::new(),
            }),
        }
    }

    /// A panic elsewhere while the lock was held leaves the ring consistent (every mutation is a
    /// single push or pop), so a poisoned lock is used as it is rather than losing the log.
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Assigns the next id, lets `choose` pick the outcome for it, and appends the entry.
    pub fn record(&self, new: &NewEntry<'_>, choose: impl FnOnce(u64) -> Outcome) -> Entry {
        // Everything that allocates happens before the lock is taken.
        let client = SocketAddr::new(new.client.ip().to_canonical(), new.client.port());
        let mut entry = Entry {
            id: 0,
            unix_millis: new.unix_millis,
            client,
            method: if new.method == "HEAD" { "HEAD" } else { "GET" },
            target: new.target.into(),
            outcome: Outcome::Timeout,
            request_id: new
                .request_id
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned().into_boxed_str()),
            duration_micros: Some(new.duration_micros),
            forced: new.forced,
        };
        let mut ring = self.lock();
        ring.counts.total += 1;
        entry.id = ring.counts.total;
        entry.outcome = choose(entry.id);
        if entry.outcome == Outcome::Timeout {
            entry.duration_micros = None;
        }
        let tally = if entry.forced {
            &mut ring.counts.forced_by_outcome
        } else {
            &mut ring.counts.by_outcome
        };
        tally[entry.outcome.index()] += 1;
        if ring.entries.len() == ring.capacity {
            if let Some(oldest) = ring.entries.pop_front() {
                ring.counts.dropped += 1;
                if ring.keeps_file && oldest.id > ring.written_through {
                    ring.evicted_unwritten.push(oldest);
                }
            }
        }
        ring.entries.push_back(entry.clone());
        entry
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Up to `max` entries matching `filter` with ids up to `up_to`, oldest first. At most
    /// [`MAX_SCAN_PER_PAGE`] entries are inspected per call: continue from `scanned_through`.
    pub fn page(&self, filter: &Filter, up_to: u64, max: usize) -> Page {
        let ring = self.lock();
        let mut page = Page {
            entries: Vec::new(),
            scanned_through: filter.since.max(ring.counts.dropped).min(up_to),
        };
        let Some(first_id) = ring.entries.front().map(|entry| entry.id) else {
            page.scanned_through = up_to.max(filter.since).min(ring.counts.total);
            return page;
        };
        let start = usize::try_from(filter.since.saturating_add(1).saturating_sub(first_id))
            .unwrap_or(usize::MAX);
        for entry in ring.entries.iter().skip(start).take(MAX_SCAN_PER_PAGE) {
            if entry.id > up_to || page.entries.len() >= max {
                break;
            }
            page.scanned_through = entry.id;
            if filter.matches(entry) {
                page.entries.push(entry.clone());
            }
        }
        page
    }

    /// Everything recorded since the last call, oldest first, for the file writer.
    fn take_unwritten(&self) -> Vec<Entry> {
        let mut ring = self.lock();
        let mut batch = std::mem::take(&mut ring.evicted_unwritten);
        let written_through = ring.written_through;
        let first_id = ring.entries.front().map_or(0, |entry| entry.id);
        let skip = usize::try_from(written_through.saturating_add(1).saturating_sub(first_id))
            .unwrap_or(usize::MAX);
        batch.extend(ring.entries.iter().skip(skip).cloned());
        ring.written_through = ring.counts.total;
        batch
    }
}

/// Writes an entry as the JSON object `/getlogs` and the JSON log format use.
pub fn write_entry_json(out: &mut String, entry: &Entry) {
    let mut object = ObjectWriter::new(out);
    object.u64("id", entry.id);
    let mut time = String::with_capacity(24);
    UtcTime::from_unix_millis(entry.unix_millis).write_rfc3339(&mut time);
    object.string("time", &time);
    object.string("client", &entry.client.to_string());
    object.string("client_ip", &entry.client.ip().to_string());
    object.string("method", entry.method);
    object.string("path", &entry.target);
    object.string("outcome", entry.outcome.name());
    match entry.outcome.status() {
        Some(status) => object.u64("status", u64::from(status)),
        None => object.null("status"),
    };
    object.optional_string("request_id", entry.request_id.as_deref());
    match entry.duration_micros {
        Some(micros) => object.f64("duration_ms", micros as f64 / 1000.0),
        None => object.null("duration_ms"),
    };
    object.bool("forced", entry.forced);
    object.finish();
}

/// Writes an entry in the original text style (no newline).
pub fn write_entry_text(out: &mut String, entry: &Entry) {
    UtcTime::from_unix_millis(entry.unix_millis).write_log_style(out);
    out.push_str(" - ");
    out.push_str(&entry.client.ip().to_string());
    out.push_str(" - ");
    out.push_str(entry.outcome.text_label());
}

/// Why the log file cannot be written.
#[derive(Debug)]
pub enum LogError {
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Open { path, error } => write!(
                f,
                "cannot open log file '{}': {error} (choose another --log-file, or --no-log-file)",
                path.display()
            ),
            LogError::Write { path, error } => {
                write!(f, "cannot write log file '{}': {error}", path.display())
            }
        }
    }
}

/// The thread that appends every entry to the log file.
#[derive(Debug)]
pub struct LogWriter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<Result<(), LogError>>,
}

/// Opens `path` for appending (created if missing) and starts the writer thread. The `log` must
/// have been made with `keeps_file`.
pub fn start_writer(
    log: Arc<RequestLog>,
    path: &Path,
    format: LogFormat,
) -> Result<LogWriter, LogError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| LogError::Open {
            path: path.to_path_buf(),
            error,
        })?;
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let thread_stop = Arc::clone(&stop);
    let path = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_until_stopped(&log, file, &path, format, &thread_stop))
        .map_err(|error| LogError::Open {
            path: PathBuf::from("(log writer thread)"),
            error,
        })?;
    Ok(LogWriter { stop, thread })
}

impl LogWriter {
    /// Writes what is left and stops. Call after the server has stopped recording.
    pub fn finish(self) -> Result<(), LogError> {
        let (stopped, wake) = &*self.stop;
        *stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        wake.notify_all();
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(LogError::Write {
                path: PathBuf::from("(log writer thread)"),
                error: std::io::Error::other("the log writer thread panicked"),
            }),
        }
    }
}

fn write_until_stopped(
    log: &RequestLog,
    mut file: File,
    path: &Path,
    format: LogFormat,
    stop: &(Mutex<bool>, Condvar),
) -> Result<(), LogError> {
    let mut line = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut reported_failure = false;
    loop {
        let stopping = {
            let (stopped, wake) = stop;
            let guard = stopped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *guard {
                true
            } else {
                let (guard, _) = wake
                    .wait_timeout(guard, WRITE_INTERVAL)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *guard
            }
        };
        for entry in log.take_unwritten() {
            line.clear();
            match format {
                LogFormat::Text => write_entry_text(&mut line, &entry),
                LogFormat::Json => write_entry_json(&mut line, &entry),
            }
            line.push('\n');
            pending.extend_from_slice(line.as_bytes());
        }
        match append(&mut file, &mut pending) {
            Ok(()) => reported_failure = false,
            Err(error) => {
                let error = LogError::Write {
                    path: path.to_path_buf(),
                    error,
                };
                if stopping {
                    return Err(error);
                }
                if !reported_failure {
                    eprintln!("unreliable: {error} (will retry)");
                    reported_failure = true;
                }
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Writes `pending` and removes what went out. On a failure (a full disk, say) the unwritten rest
/// stays for the next round, so an entry is delayed but never lost, and never written twice.
fn append(file: &mut File, pending: &mut Vec<u8>) -> std::io::Result<()> {
    let mut written = 0;
    let result = loop {
        if written == pending.len() {
            break if written == 0 { Ok(()) } else { file.flush() };
        }
        match file.write(&pending[written..]) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => break Err(error),
        }
    };
    pending.drain(..written);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use std::io::Read;

    fn new_entry(request_id: &str) -> NewEntry<'_> {
        NewEntry {
            unix_millis: 1_729_727_731_705,
            client: "[::ffff:192.168.100.59]:5000".parse().unwrap(),
            method: "GET",
            target: "/getbalance",
            request_id: Some(request_id.as_bytes()),
            duration_micros: 42,
            forced: false,
        }
    }

    fn cycle(k: u64) -> Outcome {
        Outcome::ALL[(k % 4) as usize]
    }

    #[test]
    fn ids_are_dense_and_the_outcome_is_chosen_for_the_id() {
        let log = RequestLog::new(10, false);
        for index in 1..=6u64 {
            let entry = log.record(&new_entry("x"), cycle);
            assert_eq!(entry.id, index);
            assert_eq!(entry.outcome, cycle(index));
            assert_eq!(entry.client.ip().to_string(), "192.168.100.59");
        }
        let counts = log.counts();
        assert_eq!(counts.total, 6);
        assert_eq!(counts.by_outcome, [1, 2, 2, 1]);
        // A timeout has no answer time.
        let page = log.page(&Filter::default(), 6, 100);
        assert_eq!(page.entries[3].outcome, Outcome::Timeout);
        assert_eq!(page.entries[3].duration_micros, None);
        assert_eq!(page.entries[0].duration_micros, Some(42));
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_them() {
        let log = RequestLog::new(3, false);
        for _ in 0..5 {
            log.record(&new_entry("x"), cycle);
        }
        let page = log.page(&Filter::default(), 5, 100);
        let ids: Vec<u64> = page.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(log.counts().dropped, 2);
        assert_eq!(page.scanned_through, 5);
    }

    #[test]
    fn pages_filter_and_stop_at_max_and_up_to() {
        let log = RequestLog::new(100, false);
        for index in 0..20 {
            log.record(&new_entry(&format!("run{}-{index}", index % 2)), cycle);
        }
        let filter = Filter {
            since: 4,
            request_id_prefix: Some("run1-".into()),
            ..Filter::default()
        };
        let page = log.page(&filter, 15, 3);
        let ids: Vec<u64> = page.entries.iter().map(|entry| entry.id).collect();
        // Request ids run1-* are on even ids (index 1, 3, … is id 2, 4, …).
        assert_eq!(ids, vec![6, 8, 10]);
        assert_eq!(page.scanned_through, 10);
        let rest = log.page(
            &Filter {
                since: page.scanned_through,
                ..filter.clone()
            },
            15,
            100,
        );
        let ids: Vec<u64> = rest.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, vec![12, 14]);
        assert_eq!(rest.scanned_through, 15);

        let by_outcome = Filter {
            outcome: Some(Outcome::Balance),
            client: Some("192.168.100.59".parse().unwrap()),
            ..Filter::default()
        };
        let balances = log.page(&by_outcome, 20, 100);
        assert!(balances.entries.iter().all(|entry| entry.id % 4 == 3));
        assert_eq!(balances.entries.len(), 5);
        let elsewhere = Filter {
            client: Some("10.0.0.1".parse().unwrap()),
            ..Filter::default()
        };
        assert!(log.page(&elsewhere, 20, 100).entries.is_empty());
    }

    #[test]
    fn a_page_inspects_a_bounded_number_of_entries() {
        let log = RequestLog::new(MAX_SCAN_PER_PAGE * 2, false);
        for _ in 0..MAX_SCAN_PER_PAGE + 10 {
            log.record(&new_entry("x"), cycle);
        }
        let nothing = Filter {
            request_id_prefix: Some("never".into()),
            ..Filter::default()
        };
        let page = log.page(&nothing, u64::MAX, 100);
        assert!(page.entries.is_empty());
        assert_eq!(page.scanned_through, MAX_SCAN_PER_PAGE as u64);
    }

    #[test]
    fn entries_are_written_in_both_formats_and_escaped() {
        let log = RequestLog::new(10, false);
        let entry = log.record(&new_entry("evil\"\n- 1.2.3.4 - 200 OK"), |_| {
            Outcome::Forbidden
        });
        let mut text = String::new();
        write_entry_text(&mut text, &entry);
        assert_eq!(
            text,
            "2024-10-23 23:55:31,705 - 192.168.100.59 - 403 Forbidden"
        );
        let mut json_text = String::new();
        write_entry_json(&mut json_text, &entry);
        assert!(!json_text.contains('\n'));
        let value = json::decode(&json_text).unwrap();
        assert_eq!(
            value.get("request_id").and_then(json::Value::as_str),
            Some("evil\"\n- 1.2.3.4 - 200 OK")
        );
        assert_eq!(
            value.get("time").and_then(json::Value::as_str),
            Some("2024-10-23T23:55:31.705Z")
        );
        assert_eq!(value.get("status").and_then(json::Value::as_u64), Some(403));
        assert_eq!(
            value.get("client").and_then(json::Value::as_str),
            Some("192.168.100.59:5000")
        );
    }

    #[test]
    fn the_writer_gets_every_entry_once_even_past_capacity() {
        let directory = std::env::temp_dir().join(format!("unreliable-log-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("writer.log");
        let _ = std::fs::remove_file(&path);
        let log = Arc::new(RequestLog::new(4, true));
        let writer = start_writer(Arc::clone(&log), &path, LogFormat::Json).unwrap();
        for index in 0..1000 {
            log.record(&new_entry(&format!("w-{index}")), cycle);
            if index % 100 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        writer.finish().unwrap();
        let mut text = String::new();
        File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|line| {
                json::decode(line)
                    .unwrap()
                    .get("id")
                    .unwrap()
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (1..=1000).collect::<Vec<u64>>());
        let _ = std::fs::remove_dir_all(directory);
    }

    #[test]
    fn an_unopenable_log_file_is_a_clear_error() {
        let log = Arc::new(RequestLog::new(4, true));
        let error = start_writer(log, Path::new("/nonexistent-dir/x.log"), LogFormat::Text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot open log file '/nonexistent-dir/x.log'"),
            "{error}"
        );
        assert!(error.contains("--no-log-file"));
    }
}
