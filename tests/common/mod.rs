//! Shared helpers for the integration tests: start the real binary on an ephemeral loopback port,
//! talk raw HTTP to it, and find third-party clients.
//!
//! Every server started here listens on 127.0.0.1 only and is killed when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long any single network step in a test may take before the test fails (not a timing
/// assertion: a bound so a broken server fails the test instead of hanging it).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("unreliable")
}

/// A running `unreliable serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub address: SocketAddr,
    pub seed: u64,
    pub directory: Scratch,
}

/// A test's directory, removed when dropped: also when the test fails, so runs leave nothing
/// behind in the temporary directory.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty directory for one test's files.
pub fn scratch_directory(name: &str) -> Scratch {
    // Tests run in parallel and may reuse a name: a counter keeps their directories apart.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let directory = std::env::temp_dir().join(format!(
        "unreliable-test-{}-{}-{}",
        name,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("create scratch directory");
    Scratch(directory)
}

impl Server {
    /// Starts `unreliable serve --host 127.0.0.1 --port 0 ARGS` in a scratch directory (so the
    /// default log file lands there) and waits for its `listening on` line.
    pub fn start(name: &str, args: &[&str]) -> Server {
        let mut command = Command::new(binary());
        command
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(args);
        Server::launch(name, command)
    }

    /// Like [`Server::start`], through `sh -c` with `shell_prefix` run first (e.g.
    /// `ulimit -n 64 &&`). The shell `exec`s the server, so the child's pid is the server's.
    pub fn start_under(name: &str, shell_prefix: &str, args: &[&str]) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "{shell_prefix} exec \"$0\" serve --host 127.0.0.1 --port 0 \"$@\""
            ))
            .arg(binary())
            .args(args);
        Server::launch(name, command)
    }

    fn launch(name: &str, mut command: Command) -> Server {
        let directory = scratch_directory(name);
        let mut child = command
            .current_dir(&directory)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        // e.g. "listening on http://127.0.0.1:41234 seed=1234"
        let rest = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        let (address, seed) = rest.split_once(" seed=").expect("seed on the line");
        Server {
            child,
            address: address.parse().expect("address"),
            seed: seed.parse().expect("seed"),
            directory,
        }
    }

    /// Kills the server (no clean shutdown) and returns what it wrote to stderr.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        stderr
    }

    pub fn connect(&self) -> Client {
        let stream = TcpStream::connect_timeout(&self.address, STEP_TIMEOUT).expect("connect");
        stream
            .set_read_timeout(Some(STEP_TIMEOUT))
            .expect("timeout");
        stream
            .set_write_timeout(Some(STEP_TIMEOUT))
            .expect("timeout");
        Client::new(stream)
    }

    /// Sends SIGTERM and waits for the exit status and stderr. The scratch directory stays until
    /// the returned guard is dropped, for the test to inspect.
    pub fn terminate(self) -> (std::process::ExitStatus, String, Scratch) {
        self.stop_with("TERM")
    }

    /// Like [`Server::terminate`], with another signal (`HUP`, `INT`).
    pub fn stop_with(mut self, signal: &str) -> (std::process::ExitStatus, String, Scratch) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                // The server's own guard is left empty, so only the returned one removes it.
                let directory = Scratch(std::mem::take(&mut self.directory.0));
                return (status, stderr, directory);
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.directory.join(file)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection that keeps the bytes read past one response, so pipelined responses are read
/// one by one.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Write for Client {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.stream.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; `None` on EOF, error or timeout.
    fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => None,
            Ok(count) => {
                self.buffer.extend_from_slice(&chunk[..count]);
                Some(())
            }
        }
    }

    /// Takes `count` bytes off the front of the buffer, reading as needed.
    fn take(&mut self, count: usize) -> Option<Vec<u8>> {
        while self.buffer.len() < count {
            self.fill()?;
        }
        Some(self.buffer.drain(..count).collect())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(position) = find(&self.buffer, b"\r\n") {
                let line = self.buffer.drain(..position + 2).take(position).collect();
                return Some(line);
            }
            self.fill()?;
        }
    }

    /// Reads one response (Content-Length, chunked, or until close). `None` when the server
    /// closed the connection before a complete head, or sent nothing within the read timeout.
    pub fn read_reply(&mut self, head_request: bool) -> Option<Reply> {
        let head_end = loop {
            if let Some(position) = find(&self.buffer, b"\r\n\r\n") {
                break position + 4;
            }
            self.fill()?;
        };
        let head_bytes: Vec<u8> = self.buffer.drain(..head_end).collect();
        let head = String::from_utf8_lossy(&head_bytes).into_owned();
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(reply);
        }
        if let Some(length) = reply.header("content-length") {
            reply.body = self.take(length.parse().ok()?)?;
        } else if reply
            .header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line = String::from_utf8(self.line()?).ok()?;
                let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    // Trailer fields, then the empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                let data = self.take(size + 2)?;
                reply.body.extend_from_slice(&data[..size]);
            }
        } else {
            while self.fill().is_some() {}
            reply.body = std::mem::take(&mut self.buffer);
        }
        Some(reply)
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Sends raw bytes on a new connection and reads one response.
pub fn exchange(server: &Server, raw: &[u8]) -> Option<Reply> {
    let mut client = server.connect();
    client.write_all(raw).expect("send");
    client.read_reply(raw.starts_with(b"HEAD "))
}

/// `GET path` with extra header lines, on a new connection.
pub fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut client = server.connect();
    client.write_all(raw.as_bytes()).expect("send");
    client.read_reply(false)
}

/// Whether `program` can be run; under CI a missing tool fails the test instead of skipping it.
pub fn have_tool(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is required under CI (.ci/run installs it)"
        );
        eprintln!("skipping: {program} is not installed");
    }
    found
}

pub fn repository_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// How a command run by [`run_until`] ended.
#[derive(Debug)]
pub struct Finished {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion, killing it and failing the test if it outlives `deadline`;
/// `why_it_might_hang` names the step in that failure.
pub fn run_until(mut command: Command, deadline: Duration, why_it_might_hang: &str) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    // Both pipes are drained at once, so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as _));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as _));
    let give_up = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let finished = Finished {
        code: status.and_then(|status| status.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "{command:?} still running after {deadline:?} ({why_it_might_hang}): {finished:#?}"
    );
    finished
}
