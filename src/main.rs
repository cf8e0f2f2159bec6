//! `unreliable`: an HTTP server that fails on purpose, and the client that proves what it did.
//!
//! `main` only dispatches: parse the command line, run the subcommand, turn its result into an
//! exit status (0 fine, 1 the client's run failed or the server could not start or write its
//! log, 2 usage error, 3 server unreachable).
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
            finish_client(client::run(&options, &mut stdout), options.json)
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

/// The exit status of a client run; with `json`, a run that ended before its report still
/// prints one JSON document (see [`client::json_failure`]).
fn finish_client(result: Result<client::Verdict, client::ClientError>, json: bool) -> ExitCode {
    match result {
        Ok(client::Verdict::Pass) => ExitCode::SUCCESS,
        Ok(client::Verdict::Fail) => ExitCode::from(EXIT_FAILURE),
        Err(error) => {
            if json && !matches!(error, client::ClientError::Output(_)) {
                // A stdout that fails here is said nowhere else: stderr has the error.
                let _ = write_stdout(&client::json_failure(&error));
            }
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
        started_unix_millis: crate::clock::now_unix_millis(),
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
        // A second signal ends the wait for a log writer that is slow to finish (the entries it
        // leaves out are named); one that fails to wait is a plain wait.
        let second_signal = |wait| match sys::termination_signal_within(wait) {
            Ok(signal) => signal.is_some(),
            Err(_) => {
                std::thread::sleep(wait);
                false
            }
        };
        if let Err(error) = writer.finish(second_signal) {
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

/// Entries the demo's server keeps in memory: enough for the longest demo anyone waits for.
const DEMO_LOG_CAPACITY: usize = 1_000_000;

/// Worker threads of the demo's server: one per client connection, at least 4.
fn demo_threads(options: &DemoOptions) -> usize {
    options.client.concurrency.clamp(4, cli::MAX_THREADS)
}

/// The `serve` and `client` command lines that repeat a demo run in two terminals, each on a
/// line of its own that can be pasted whole; the address is a shell comment above them.
/// Every option the demo set is spelled out, so the pasted run is the demo's run.
fn equivalent_commands(seed: u64, options: &DemoOptions, address: SocketAddr) -> String {
    let client = &options.client;
    let retry_on = if client.retry_on.is_empty() {
        "none".to_string()
    } else {
        let names: Vec<&str> = client.retry_on.iter().map(|o| o.name()).collect();
        names.join(",")
    };
    let show_logs = match client.show_logs {
        cli::ShowLogs::All => "all".to_string(),
        cli::ShowLogs::None => "none".to_string(),
        cli::ShowLogs::Last(count) => count.to_string(),
    };
    let mut client_line = format!(
        "unreliable client --host {} --port {} --count {} --concurrency {} --timeout {} \
         --retries {} --retry-on {retry_on} --backoff {} --max-backoff {} --interval {} \
         --show-logs {show_logs}",
        address.ip(),
        address.port(),
        client.count,
        client.concurrency,
        cli::show_duration(client.timeout),
        client.retries,
        cli::show_duration(client.backoff),
        cli::show_duration(client.max_backoff),
        cli::show_duration(client.interval),
    );
    if let Some(tolerance) = client.tolerance {
        client_line.push_str(&format!(" --tolerance {tolerance}"));
    }
    if client.quiet {
        client_line.push_str(" --quiet");
    }
    format!(
        "# demo: a server on http://{address} and a client; the same run in two terminals:\n\
         unreliable serve --port {} --no-log-file --log-capacity {DEMO_LOG_CAPACITY} --seed {seed} \
         --weights {} --hang {} --threads {} --pollers 1\n{client_line}\n\n",
        address.port(),
        options.weights,
        cli::show_duration(options.hang),
        demo_threads(options),
    )
}

fn demo(mut options: DemoOptions) -> ExitCode {
    let seed = options.seed.unwrap_or_else(chaos::fresh_seed);
    let log = match RequestLog::new(DEMO_LOG_CAPACITY, false) {
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
        demo_threads(&options),
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
        if let Err(error) = write_stdout(&equivalent_commands(seed, &options, address)) {
            server.shutdown();
            // A reader that went away (`| head -1`) stops the demo quietly, as for --help.
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            return finish_client(Err(client::ClientError::Output(error)), false);
        }
    }
    let result = {
        let mut stdout = std::io::stdout().lock();
        client::run(&options.client, &mut stdout)
    };
    server.shutdown();
    finish_client(result, options.client.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn parse_line(line: &str) -> cli::Command {
        let words = line.split_whitespace().skip(1).map(OsString::from);
        cli::parse(words).unwrap_or_else(|error| panic!("{line}: {error}"))
    }

    #[test]
    fn the_demos_equivalent_commands_parse_back_into_the_demos_own_options() {
        // Before, the serve line carried "(on http://...)" (a shell syntax error) and no
        // --port or --no-log-file, and the client line dropped --interval, --show-logs,
        // --tolerance and --quiet.
        let cli::Command::Demo(mut demo) = parse_line(
            "unreliable demo --count 50 --seed 8685685047142600061 --weights timeout=1,200=3 \
             --hang 3s --interval 5ms --show-logs 3 --tolerance 10 --quiet --retry-on none \
             --concurrency 2",
        ) else {
            panic!("demo did not parse");
        };
        let address = SocketAddr::from(([127, 0, 0, 1], 35739));
        demo.client.host = address.ip().to_string();
        demo.client.port = address.port();
        let text = equivalent_commands(8685685047142600061, &demo, address);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("# demo: a server on http://127.0.0.1:35739"),
            "{text}"
        );
        assert_eq!(lines[3], "", "{text}");
        let cli::Command::Serve(serve) = parse_line(lines[1]) else {
            panic!("{}", lines[1]);
        };
        assert_eq!(serve.port, 35739);
        assert_eq!(serve.log_file, None);
        assert_eq!(serve.log_capacity, DEMO_LOG_CAPACITY);
        assert_eq!(serve.seed, demo.seed);
        assert_eq!(serve.weights, demo.weights);
        assert_eq!(serve.hang, demo.hang);
        assert_eq!((serve.threads, serve.pollers), (demo_threads(&demo), 1));
        let cli::Command::Client(client) = parse_line(lines[2]) else {
            panic!("{}", lines[2]);
        };
        assert_eq!(client, demo.client);
        // And with every client default of the demo.
        let cli::Command::Demo(mut plain) = parse_line("unreliable demo") else {
            panic!("demo did not parse");
        };
        plain.client.host = "127.0.0.1".into();
        plain.client.port = 1;
        let text = equivalent_commands(1, &plain, SocketAddr::from(([127, 0, 0, 1], 1)));
        let cli::Command::Client(client) = parse_line(text.lines().nth(2).unwrap_or_default())
        else {
            panic!("{text}");
        };
        assert_eq!(client, plain.client);
    }
}
