//! `unreliable`: an HTTP server that fails on purpose, and the client that proves what it did.
//!
//! `main` only dispatches: parse the command line, run the subcommand, turn its result into an
//! exit status (0 fine, 1 verdict or reconciliation failed, 2 usage error, 3 server unreachable).
#![deny(unsafe_code)]

/// `eprintln!` without its panic when stderr is closed or full: a server whose stderr went away
/// (a closed pipe, a supervisor that left) keeps serving, and a usage error keeps its exit
/// status. What cannot be said on stderr is not said anywhere else.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod chaos;
mod cli;
mod client;
mod clock;
mod http;
mod json;
mod log;
mod routes;
mod server;
mod stats;
mod sys;

use chaos::Chaos;
use cli::{Command, DemoOptions, ServeOptions};
use log::RequestLog;
use routes::App;
use server::{RunningServer, ServerConfig};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit status for a failure that is neither a usage error nor an unreachable server.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            say!("unreliable: error: {error}\n{}", error.hint());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help(text) => print_text(&text),
        Command::Version => print_text(&format!("unreliable {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Serve(options) => serve(&options),
        Command::Client(options) => {
            let mut stdout = std::io::stdout().lock();
            finish_client(client::run(&options, &mut stdout))
        }
        Command::Demo(options) => demo(options),
    }
}

/// Writes help or version text. A reader that went away (`unreliable --help | head -1`) is no
/// error, as for other command-line tools; any other failure to write is reported.
fn print_text(text: &str) -> ExitCode {
    match write_stdout(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            say!("unreliable: error: cannot write to stdout: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `print!` without its panic when stdout is closed or full: the caller decides what that means.
fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn finish_client(result: Result<client::Verdict, client::ClientError>) -> ExitCode {
    match result {
        Ok(client::Verdict::Pass) => ExitCode::SUCCESS,
        Ok(client::Verdict::Fail) => ExitCode::from(EXIT_FAILURE),
        Err(error) => {
            say!("unreliable: error: {error}");
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_FAILURE))
        }
    }
}

/// Builds the shared state and starts the server threads.
fn start_server(
    listen: SocketAddr,
    chaos: Chaos,
    log: &Arc<RequestLog>,
    hang: Duration,
    threads: usize,
    pollers: usize,
    max_connections: usize,
) -> Result<RunningServer, String> {
    let app = Arc::new(App {
        chaos,
        log: Arc::clone(log),
        started: Instant::now(),
        hang,
    });
    let config = ServerConfig {
        listen,
        threads,
        pollers,
        max_connections,
    };
    server::start(&config, app).map_err(|error| error.to_string())
}

fn serve(options: &ServeOptions) -> ExitCode {
    // Before any thread exists, so every thread inherits the mask and the signal waits for sigwait.
    if let Err(error) = sys::block_termination_signals() {
        say!("unreliable: error: cannot set up signal handling: {error}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let Ok(host) = options.host.parse::<IpAddr>() else {
        say!("unreliable: error: '{}' is not an IP address", options.host);
        return ExitCode::from(EXIT_USAGE);
    };
    let seed = options.seed.unwrap_or_else(chaos::fresh_seed);
    let log = match RequestLog::new(options.log_capacity, options.log_file.is_some()) {
        Ok(log) => Arc::new(log),
        Err(error) => {
            say!("unreliable: error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let writer = match &options.log_file {
        Some(path) => match log::start_writer(Arc::clone(&log), path, options.log_format) {
            Ok(writer) => Some(writer),
            Err(error) => {
                say!("unreliable: error: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        None => None,
    };
    let server = match start_server(
        SocketAddr::new(host, options.port),
        Chaos::new(seed, options.weights.clone()),
        &log,
        options.hang,
        options.threads,
        options.pollers,
        options.max_connections,
    ) {
        Ok(server) => server,
        Err(error) => {
            say!("unreliable: error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let address = server.local_addr();
    // The contract with scripts that wait for it, hence flushed. A server whose stdout is gone
    // (a closed pipe, a full disk) still serves: the address is on stderr then.
    if let Err(error) = write_stdout(&format!("listening on http://{address} seed={seed}\n")) {
        say!(
            "unreliable: warning: cannot write to stdout ({error}); listening on http://{address} seed={seed}"
        );
    }
    say!(
        "unreliable: weights {} hang {} log {}",
        options.weights,
        cli::show_duration(options.hang),
        match &options.log_file {
            Some(path) => format!("{} ({})", path.display(), options.log_format.name()),
            None => "in memory only".into(),
        }
    );
    // The first thing a tester on another machine runs into: say it where they will look.
    if address.ip().is_loopback() {
        say!("unreliable: loopback only: for clients on other machines, --host 0.0.0.0 (or ::)");
    }
    let signal = sys::wait_for_termination_signal();
    server.shutdown();
    let mut status = ExitCode::SUCCESS;
    if let Some(writer) = writer {
        if let Err(error) = writer.finish() {
            say!("unreliable: error: {error}");
            status = ExitCode::from(EXIT_FAILURE);
        }
    }
    let counts = log.counts();
    match signal {
        Ok(number) => say!(
            "unreliable: stopped by signal {number} after {} logged requests",
            counts.total
        ),
        Err(error) => say!(
            "unreliable: stopped ({error}) after {} logged requests",
            counts.total
        ),
    }
    status
}

fn demo(mut options: DemoOptions) -> ExitCode {
    let seed = options.seed.unwrap_or_else(chaos::fresh_seed);
    let log = match RequestLog::new(1_000_000, false) {
        Ok(log) => Arc::new(log),
        Err(error) => {
            say!("unreliable: error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let server = match start_server(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        Chaos::new(seed, options.weights.clone()),
        &log,
        options.hang,
        options.client.concurrency.clamp(4, cli::MAX_THREADS),
        // One client's few connections: one event loop is plenty.
        1,
        10_000,
    ) {
        Ok(server) => server,
        Err(error) => {
            say!("unreliable: error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let address = server.local_addr();
    options.client.host = address.ip().to_string();
    options.client.port = address.port();
    if !options.client.json {
        // The equivalent commands, so a run can be reproduced outside the demo.
        let client = &options.client;
        let retry_on = if client.retry_on.is_empty() {
            "none".to_string()
        } else {
            let names: Vec<&str> = client
                .retry_on
                .iter()
                .map(|outcome| outcome.name())
                .collect();
            names.join(",")
        };
        let preamble = format!(
            "demo: unreliable serve --seed {seed} --weights {} --hang {}   (on http://{address})\n\
             demo: unreliable client --host {} --port {} --count {} --concurrency {} --timeout {} \
             --retries {} --retry-on {retry_on} --backoff {} --max-backoff {}\n\n",
            options.weights,
            cli::show_duration(options.hang),
            client.host,
            client.port,
            client.count,
            client.concurrency,
            cli::show_duration(client.timeout),
            client.retries,
            cli::show_duration(client.backoff),
            cli::show_duration(client.max_backoff),
        );
        if let Err(error) = write_stdout(&preamble) {
            server.shutdown();
            return finish_client(Err(client::ClientError::Output(error)));
        }
    }
    let result = {
        let mut stdout = std::io::stdout().lock();
        client::run(&options.client, &mut stdout)
    };
    server.shutdown();
    finish_client(result)
}
