//! The command line: `serve`, `client`, `demo`, `--help`, `--version`, parsed by hand.
//!
//! Invariants: `parse` takes an iterator, so tests never touch the real environment; raw
//! arguments are validated into typed options here and nowhere else; every error is one line
//! naming the flag and what was wrong (main adds a usage hint and exits with status 2).

use crate::chaos::{Outcome, Weights};
use crate::log::LogFormat;
use crate::server::MAX_POLLERS;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The most worker threads `--threads` and `--concurrency` accept.
pub const MAX_THREADS: usize = 1024;
/// The default `--threads` is this many workers per core, within the two bounds below.
pub const WORKERS_PER_CORE: usize = 8;
pub const MIN_DEFAULT_WORKERS: usize = 8;
pub const MAX_DEFAULT_WORKERS: usize = 256;
/// The most retries `--retries` accepts: enough for any sane policy, bounded so a run ends.
pub const MAX_RETRIES: u32 = 100;
/// The longest duration any flag accepts (a day): larger values are surely typos.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// `unreliable serve` options.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub weights: Weights,
    pub seed: Option<u64>,
    pub hang: Duration,
    /// `None` with `--no-log-file`.
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_capacity: usize,
    pub threads: usize,
    pub pollers: usize,
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            weights: Weights::owner_default(),
            seed: None,
            hang: Duration::from_secs(30),
            log_file: Some(PathBuf::from("unreliable.log")),
            log_format: LogFormat::Text,
            log_capacity: 100_000,
            threads: default_threads(),
            pollers: default_pollers(),
            max_connections: 10_000,
        }
    }
}

/// Workers never wait for a client (idle and hung connections wait in the poller), so a small
/// pool keeps a core busy; more workers only add thread switches. Measured on one core with
/// `wrk -t1 -c64` (no keep-alive linger): 4 workers 63k req/s, 15.2 µs CPU per request, p99
/// 3.0 ms; 8 workers 68k, 14.4 µs, 2.4 ms; 16 workers 51k, 19.3 µs, 2.9 ms; 32 workers 48k,
/// 20.6 µs. The floor of 8 keeps a few slow jobs (request bodies trickling in, a Monte Carlo
/// `/stats`) from stalling a small machine.
fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |count| count.get());
    (cores * WORKERS_PER_CORE).clamp(MIN_DEFAULT_WORKERS, MAX_DEFAULT_WORKERS)
}

/// One poller per core the process may run on (what `taskset` or a cgroup allows): a poller
/// answers keep-alive requests by itself, so one per core lets them use every core without two
/// event loops taking turns on one.
fn default_pollers() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get().min(MAX_POLLERS))
}

/// How many server log entries the client shows after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowLogs {
    Last(usize),
    All,
    None,
}

/// `unreliable client` options.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    pub count: u64,
    pub concurrency: usize,
    /// Per attempt: the deadline for the whole answer once the request is sent; connecting
    /// gets as long again.
    pub timeout: Duration,
    pub retries: u32,
    /// Outcomes that are retried (always includes `Timeout` unless the user removed it).
    pub retry_on: Vec<Outcome>,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub interval: Duration,
    pub show_logs: ShowLogs,
    pub json: bool,
    pub quiet: bool,
    /// Percentage points; exit 1 when a 95% interval lies outside expected ± this.
    pub tolerance: Option<f64>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            count: 100,
            concurrency: 1,
            timeout: Duration::from_secs(3),
            retries: 3,
            retry_on: vec![Outcome::Timeout],
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            interval: Duration::ZERO,
            show_logs: ShowLogs::Last(20),
            json: false,
            quiet: false,
            tolerance: None,
        }
    }
}

/// `unreliable demo` options: a server inside the process and a client aimed at it.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoOptions {
    pub seed: Option<u64>,
    pub weights: Weights,
    pub hang: Duration,
    /// Host and port are filled in once the in-process server is listening.
    pub client: ClientOptions,
}

impl Default for DemoOptions {
    /// Short timeouts so the demo ends in seconds; the hang outlasts the client's timeout, so
    /// hung requests are seen as timeouts, not as closed connections.
    fn default() -> DemoOptions {
        DemoOptions {
            seed: None,
            weights: Weights::owner_default(),
            hang: Duration::from_secs(2),
            client: ClientOptions {
                concurrency: 8,
                timeout: Duration::from_millis(250),
                backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                ..ClientOptions::default()
            },
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Serve(ServeOptions),
    Client(ClientOptions),
    Demo(DemoOptions),
    /// Help text to print to stdout (exit 0).
    Help(String),
    Version,
}

/// A usage error: one line, plus the subcommand whose usage to hint at.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError {
    pub message: String,
    pub subcommand: Option<&'static str>,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CliError {
    /// The lines main prints under the message: the usage line and where to find more.
    pub fn hint(&self) -> String {
        match self.subcommand {
            Some(name) => format!(
                "usage: unreliable {name} [OPTIONS]\nrun 'unreliable {name} --help' for the options"
            ),
            None => {
                "usage: unreliable <serve|client|demo> [OPTIONS]\nrun 'unreliable --help' for more"
                    .into()
            }
        }
    }
}

const SUBCOMMANDS: [&str; 3] = ["serve", "client", "demo"];

const SERVE_FLAGS: &[&str] = &[
    "--host",
    "--port",
    "--weights",
    "--seed",
    "--hang",
    "--log-file",
    "--no-log-file",
    "--log-format",
    "--log-capacity",
    "--threads",
    "--pollers",
    "--max-connections",
    "--help",
];

/// Where the client sends its requests; `demo` chooses these itself.
const CLIENT_ADDRESS_FLAGS: &[&str] = &["--host", "--port"];

/// How the client runs; shared by `client` and `demo`.
const CLIENT_RUN_FLAGS: &[&str] = &[
    "--count",
    "--concurrency",
    "--timeout",
    "--retries",
    "--retry-on",
    "--backoff",
    "--max-backoff",
    "--interval",
    "--show-logs",
    "--json",
    "--quiet",
    "--tolerance",
    "--help",
];

/// The demo's own server flags; the rest are [`CLIENT_RUN_FLAGS`].
const DEMO_SERVER_FLAGS: &[&str] = &["--seed", "--weights", "--hang"];

/// Flags without a value.
const SWITCHES: [&str; 4] = ["--no-log-file", "--json", "--quiet", "--help"];

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Err(CliError {
            message: "missing subcommand: expected serve, client or demo".into(),
            subcommand: None,
        });
    };
    let first = utf8(first, None)?;
    match first.as_str() {
        "-h" | "--help" => Ok(Command::Help(MAIN_HELP.into())),
        "help" => match args.next().map(|arg| utf8(arg, None)).transpose()? {
            None => Ok(Command::Help(MAIN_HELP.into())),
            Some(topic) => Ok(Command::Help(help_for(&topic)?.into())),
        },
        "-V" | "--version" => Ok(Command::Version),
        "serve" => parse_serve(args),
        "client" => parse_client(args),
        "demo" => parse_demo(args),
        other if other.starts_with('-') => Err(CliError {
            message: format!("invalid option '{other}' before the subcommand"),
            subcommand: None,
        }),
        other => Err(CliError {
            message: format!(
                "unknown subcommand '{other}'{}",
                suggestion(other, &SUBCOMMANDS)
            ),
            subcommand: None,
        }),
    }
}

fn help_for(topic: &str) -> Result<&'static str, CliError> {
    match topic {
        "serve" => Ok(SERVE_HELP),
        "client" => Ok(CLIENT_HELP),
        "demo" => Ok(DEMO_HELP),
        other => Err(CliError {
            message: format!("no help for '{other}'{}", suggestion(other, &SUBCOMMANDS)),
            subcommand: None,
        }),
    }
}

fn utf8(arg: OsString, subcommand: Option<&'static str>) -> Result<String, CliError> {
    arg.into_string().map_err(|raw| CliError {
        message: format!("argument {raw:?} is not valid UTF-8"),
        subcommand,
    })
}

/// One `--flag` with its value, if it takes one (`--flag value` or `--flag=value`).
struct Flag {
    name: String,
    value: Option<String>,
}

/// Walks the arguments of one subcommand, checking each flag against the `known` lists.
struct FlagReader<I> {
    args: I,
    known: &'static [&'static [&'static str]],
    subcommand: &'static str,
    /// Flags already given, with their values: each may appear once, since a second value
    /// silently replacing the first (`client.sh IP PORT --port 9`) hides a mistake.
    seen: Vec<Flag>,
}

impl<I> FlagReader<I> {
    fn new(
        args: I,
        known: &'static [&'static [&'static str]],
        subcommand: &'static str,
    ) -> FlagReader<I> {
        FlagReader {
            args,
            known,
            subcommand,
            seen: Vec::new(),
        }
    }
}

impl<I: Iterator<Item = OsString>> FlagReader<I> {
    fn next_flag(&mut self) -> Result<Option<Flag>, CliError> {
        let Some(flag) = self.read_flag()? else {
            return Ok(None);
        };
        if let Some(earlier) = self.seen.iter().find(|seen| seen.name == flag.name) {
            let message = match (&earlier.value, &flag.value) {
                (Some(first), Some(second)) => format!(
                    "option '{}' is given twice ('{first}', then '{second}'); give it once",
                    flag.name
                ),
                _ => format!("option '{}' is given twice; give it once", flag.name),
            };
            return Err(self.error(message));
        }
        let opposite = match flag.name.as_str() {
            "--log-file" => Some("--no-log-file"),
            "--no-log-file" => Some("--log-file"),
            _ => None,
        };
        if let Some(opposite) =
            opposite.filter(|name| self.seen.iter().any(|seen| seen.name == *name))
        {
            return Err(self.error(format!(
                "options '{opposite}' and '{}' contradict each other; give one",
                flag.name
            )));
        }
        self.seen.push(Flag {
            name: flag.name.clone(),
            value: flag.value.clone(),
        });
        Ok(Some(flag))
    }

    fn read_flag(&mut self) -> Result<Option<Flag>, CliError> {
        let Some(arg) = self.args.next() else {
            return Ok(None);
        };
        let arg = utf8(arg, Some(self.subcommand))?;
        if arg == "-h" {
            return Ok(Some(Flag {
                name: "--help".into(),
                value: None,
            }));
        }
        if !arg.starts_with("--") {
            return Err(self.error(format!("unexpected argument '{arg}'")));
        }
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg, None),
        };
        let mut known = self.known.iter().flat_map(|list| list.iter().copied());
        if !known.any(|flag| flag == name) {
            let candidates: Vec<&str> = self.known.concat();
            return Err(self.error(format!(
                "invalid option '{name}'{}",
                suggestion(&name, &candidates)
            )));
        }
        if SWITCHES.contains(&name.as_str()) {
            if inline_value.is_some() {
                return Err(self.error(format!("option '{name}' takes no value")));
            }
            return Ok(Some(Flag { name, value: None }));
        }
        let value = match inline_value {
            Some(value) => value,
            None => match self.args.next() {
                Some(value) => utf8(value, Some(self.subcommand))?,
                None => return Err(self.error(format!("missing value for option '{name}'"))),
            },
        };
        Ok(Some(Flag {
            name,
            value: Some(value),
        }))
    }

    fn error(&self, message: String) -> CliError {
        CliError {
            message,
            subcommand: Some(self.subcommand),
        }
    }
}

impl Flag {
    fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    fn invalid(&self, subcommand: &'static str, expected: &str) -> CliError {
        CliError {
            message: format!(
                "invalid value '{}' for '{}': {expected}",
                self.value(),
                self.name
            ),
            subcommand: Some(subcommand),
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &self,
        subcommand: &'static str,
        low: T,
        high: T,
    ) -> Result<T, CliError> {
        let expected = format!("expected a whole number from {low} to {high}");
        let value = self.value();
        if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(self.invalid(subcommand, &expected));
        }
        match value.parse::<T>() {
            Ok(number) if number >= low && number <= high => Ok(number),
            _ => Err(self.invalid(subcommand, &expected)),
        }
    }

    fn duration(&self, subcommand: &'static str, allow_zero: bool) -> Result<Duration, CliError> {
        let duration =
            parse_duration(self.value()).map_err(|reason| self.invalid(subcommand, &reason))?;
        if duration.is_zero() && !allow_zero {
            return Err(self.invalid(subcommand, "must be longer than zero"));
        }
        Ok(duration)
    }
}

fn parse_serve(args: impl Iterator<Item = OsString>) -> Result<Command, CliError> {
    const NAME: &str = "serve";
    let mut options = ServeOptions::default();
    let mut reader = FlagReader::new(args, &[SERVE_FLAGS], NAME);
    while let Some(flag) = reader.next_flag()? {
        match flag.name.as_str() {
            "--help" => return Ok(Command::Help(SERVE_HELP.into())),
            "--host" => options.host = listen_host(&flag, NAME)?,
            "--port" => options.port = flag.number(NAME, 0, u16::MAX)?,
            "--weights" => options.weights = weights(&flag, NAME)?,
            "--seed" => options.seed = Some(flag.number(NAME, 0, u64::MAX)?),
            "--hang" => options.hang = flag.duration(NAME, true)?,
            "--log-file" => {
                if flag.value().is_empty() {
                    return Err(flag.invalid(NAME, "expected a file path (or --no-log-file)"));
                }
                options.log_file = Some(PathBuf::from(flag.value()));
            }
            "--no-log-file" => options.log_file = None,
            "--log-format" => {
                options.log_format = match flag.value() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(flag.invalid(NAME, "expected 'text' or 'json'")),
                }
            }
            "--log-capacity" => options.log_capacity = flag.number(NAME, 1, 100_000_000)?,
            "--threads" => options.threads = flag.number(NAME, 1, MAX_THREADS)?,
            "--pollers" => options.pollers = flag.number(NAME, 1, MAX_POLLERS)?,
            "--max-connections" => options.max_connections = flag.number(NAME, 1, 1_000_000)?,
            _ => return Err(reader.error(format!("invalid option '{}'", flag.name))),
        }
    }
    Ok(Command::Serve(options))
}

/// Accepts an IP address (IPv6 with or without brackets) or `localhost`; a listener binds to an
/// address, so other hostnames are refused rather than resolved to a surprise.
fn listen_host(flag: &Flag, subcommand: &'static str) -> Result<String, CliError> {
    let value = flag.value();
    if value == "localhost" {
        return Ok("127.0.0.1".into());
    }
    let bare = value
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(value);
    match bare.parse::<IpAddr>() {
        Ok(address) => Ok(address.to_string()),
        Err(_) => Err(flag.invalid(
            subcommand,
            "expected an IP address such as 127.0.0.1, 0.0.0.0, ::1 or ::",
        )),
    }
}

fn weights(flag: &Flag, subcommand: &'static str) -> Result<Weights, CliError> {
    Weights::parse(flag.value()).map_err(|error| CliError {
        message: error.to_string(),
        subcommand: Some(subcommand),
    })
}

fn parse_client(args: impl Iterator<Item = OsString>) -> Result<Command, CliError> {
    let mut options = ClientOptions::default();
    let mut reader = FlagReader::new(args, &[CLIENT_ADDRESS_FLAGS, CLIENT_RUN_FLAGS], "client");
    while let Some(flag) = reader.next_flag()? {
        if flag.name == "--help" {
            return Ok(Command::Help(CLIENT_HELP.into()));
        }
        apply_client_flag(&mut options, &flag, "client")?;
    }
    check_client(&options, "client")?;
    Ok(Command::Client(options))
}

/// Whether `host` is meant as an IPv4 address rather than a name: digits and dots only (no
/// top-level domain is numeric), or the resolver's older forms (`inet_aton`: one to four parts,
/// each decimal, octal or `0x` hexadecimal), which it takes for an address before any name.
fn looks_like_ipv4(host: &str) -> bool {
    let numeric_part = |part: &str| match part.strip_prefix("0x").or(part.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|byte| byte.is_ascii_hexdigit()),
        None => !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()),
    };
    host.bytes()
        .all(|byte| byte.is_ascii_digit() || byte == b'.')
        || (host.split('.').count() <= 4 && host.split('.').all(numeric_part))
}

fn apply_client_flag(
    options: &mut ClientOptions,
    flag: &Flag,
    subcommand: &'static str,
) -> Result<(), CliError> {
    match flag.name.as_str() {
        "--host" => {
            let value = flag.value().trim();
            let bracketed = value
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'));
            let bare = bracketed.unwrap_or(value);
            // A ':' appears only in an IPv6 address (a zone id after '%' aside), and brackets
            // only around one: `[::1]:8080` or `127.0.0.1:8080` carry a port, which would
            // otherwise fail to resolve and pass for an unreachable server (exit 3).
            let (address, zone) = bare
                .split_once('%')
                .map_or((bare, None), |(address, zone)| (address, Some(zone)));
            let is_ipv6 = address.parse::<std::net::Ipv6Addr>().is_ok();
            // A zone id names an interface for an IPv6 address, and only there.
            let bad_zone = zone.is_some_and(|zone| zone.is_empty() || !is_ipv6);
            let malformed = bare.is_empty()
                || bare.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '[' | ']'))
                || ((bracketed.is_some() || bare.contains(':')) && !is_ipv6)
                || bad_zone;
            if malformed {
                return Err(flag.invalid(
                    subcommand,
                    "expected a hostname or an IP address (IPv6 with or without brackets; \
                     the port goes in --port)",
                ));
            }
            // What the resolver would read as an IPv4 address must be one in plain form:
            // `999.1.1.1` would otherwise fail to resolve and pass for an unreachable server,
            // and the resolver reads `10.1.2` as 10.1.0.2, `010.0.0.1` (octal) as 8.0.0.1 and
            // `0xa.1` as 10.0.0.1: somebody else's machine.
            if looks_like_ipv4(bare) && bare.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(flag.invalid(
                    subcommand,
                    "expected an IPv4 address as four decimal numbers from 0 to 255 without \
                     leading zeros (a.b.c.d)",
                ));
            }
            options.host = bare.to_string();
        }
        "--port" => options.port = flag.number(subcommand, 1, u16::MAX)?,
        "--count" => options.count = flag.number(subcommand, 1, 100_000_000)?,
        "--concurrency" => options.concurrency = flag.number(subcommand, 1, MAX_THREADS)?,
        "--timeout" => options.timeout = flag.duration(subcommand, false)?,
        "--retries" => options.retries = flag.number(subcommand, 0, MAX_RETRIES)?,
        "--retry-on" => options.retry_on = retry_on(flag, subcommand)?,
        "--backoff" => options.backoff = flag.duration(subcommand, true)?,
        "--max-backoff" => options.max_backoff = flag.duration(subcommand, true)?,
        "--interval" => options.interval = flag.duration(subcommand, true)?,
        "--show-logs" => {
            options.show_logs =
                match flag.value() {
                    "all" => ShowLogs::All,
                    "none" => ShowLogs::None,
                    _ => ShowLogs::Last(flag.number(subcommand, 0, usize::MAX).map_err(|_| {
                        flag.invalid(subcommand, "expected a number, 'all' or 'none'")
                    })?),
                }
        }
        "--json" => options.json = true,
        "--quiet" => options.quiet = true,
        "--tolerance" => {
            let value = flag.value();
            let plain_decimal = !value.is_empty()
                && value
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || byte == b'.')
                && value.bytes().filter(|&byte| byte == b'.').count() <= 1;
            match value.parse::<f64>() {
                Ok(points) if plain_decimal && points > 0.0 && points <= 100.0 => {
                    options.tolerance = Some(points);
                }
                _ => {
                    return Err(flag.invalid(
                        subcommand,
                        "expected percentage points above 0 and at most 100, e.g. 2 or 1.5",
                    ))
                }
            }
        }
        other => {
            return Err(CliError {
                message: format!("invalid option '{other}'"),
                subcommand: Some(subcommand),
            })
        }
    }
    Ok(())
}

fn retry_on(flag: &Flag, subcommand: &'static str) -> Result<Vec<Outcome>, CliError> {
    let names: Vec<&str> = Outcome::ALL.iter().map(|outcome| outcome.name()).collect();
    let expected = format!(
        "expected a comma-separated list of {} (or 'none')",
        names.join(", ")
    );
    if flag.value() == "none" {
        return Ok(Vec::new());
    }
    let mut outcomes = Vec::new();
    for name in flag.value().split(',').map(str::trim) {
        match Outcome::from_name(name) {
            Some(outcome) if !outcomes.contains(&outcome) => outcomes.push(outcome),
            Some(_) => return Err(flag.invalid(subcommand, &format!("'{name}' is listed twice"))),
            None => return Err(flag.invalid(subcommand, &expected)),
        }
    }
    Ok(outcomes)
}

fn check_client(options: &ClientOptions, subcommand: &'static str) -> Result<(), CliError> {
    if options.max_backoff < options.backoff {
        return Err(CliError {
            message: format!(
                "--max-backoff ({}) is shorter than --backoff ({}); make it at least as long",
                show_duration(options.max_backoff),
                show_duration(options.backoff)
            ),
            subcommand: Some(subcommand),
        });
    }
    Ok(())
}

fn parse_demo(args: impl Iterator<Item = OsString>) -> Result<Command, CliError> {
    const NAME: &str = "demo";
    let mut options = DemoOptions::default();
    let mut reader = FlagReader::new(args, &[DEMO_SERVER_FLAGS, CLIENT_RUN_FLAGS], NAME);
    while let Some(flag) = reader.next_flag()? {
        match flag.name.as_str() {
            "--help" => return Ok(Command::Help(DEMO_HELP.into())),
            "--seed" => options.seed = Some(flag.number(NAME, 0, u64::MAX)?),
            "--weights" => options.weights = weights(&flag, NAME)?,
            "--hang" => options.hang = flag.duration(NAME, true)?,
            _ => apply_client_flag(&mut options.client, &flag, NAME)?,
        }
    }
    check_client(&options.client, NAME)?;
    Ok(Command::Demo(options))
}

/// ` (did you mean 'X'?)` when a known word is within two edits of what was typed.
fn suggestion(typed: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|candidate| (edit_distance(typed, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, candidate)| format!(" (did you mean '{candidate}'?)"))
        .unwrap_or_default()
}

fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1; right.len() + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

/// Parses `250ms`, `3s`, `1.5s`, `2m`, `1h` (a bare number is refused: the unit is always
/// explicit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3600.0)
    } else {
        return Err(
            "expected a duration with a unit: ms, s, m or h (e.g. 250ms, 3s, 2m, 1h)".into(),
        );
    };
    let plain_decimal = !number.is_empty()
        && number
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte == b'.')
        && number.bytes().filter(|&byte| byte == b'.').count() <= 1
        && number != ".";
    let value: f64 = match number.parse() {
        Ok(value) if plain_decimal => value,
        _ => return Err("expected a duration such as 250ms, 3s, 1.5s, 2m or 1h".into()),
    };
    let seconds = value * unit_seconds;
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "at most {} seconds is accepted",
            MAX_DURATION.as_secs()
        ));
    }
    // Round to whole microseconds so `0.1s` is exactly 100ms.
    Ok(Duration::from_micros((seconds * 1e6).round() as u64))
}

/// A duration the way a user would type it back: `250ms`, `3s`, `1.5s`.
pub fn show_duration(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis < 1000.0 {
        format!("{}ms", trim_number(millis))
    } else {
        format!("{}s", trim_number(millis / 1000.0))
    }
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

const MAIN_HELP: &str = "\
unreliable: an HTTP server that fails on purpose, and the client that proves what it did.

Usage:
  unreliable serve  [OPTIONS]   run the unreliable server
  unreliable client [OPTIONS]   exercise a server and judge its outcome mix
  unreliable demo   [OPTIONS]   a server and a client in one process, for a first look
  unreliable help <subcommand>  the options of a subcommand
  unreliable --version

GET /getbalance hangs, answers 403, 500 or 200 (fake account data), one draw per request
from a weight table (default timeout=20,403=20,500=10,200=50). Every request is logged, to a
file and in memory; GET /getlogs returns the log as JSON and GET /stats the counts with a
chi-square test against the weights.

Exit status: 0 fine, 1 the client's run failed (verdict, reconciliation, /stats) or the
server could not start or write its log, 2 usage error, 3 server unreachable.
";

const SERVE_HELP: &str = "\
Run the unreliable HTTP server.

Usage: unreliable serve [OPTIONS]

Prints one line when ready, e.g. 'listening on http://127.0.0.1:8080 seed=1234', and runs
until SIGINT, SIGTERM or SIGHUP, then stops accepting, flushes the log file and exits 0
(1 when it could not start, or when entries could not be written to the log file; a second
signal stops a slow flush, naming the entries left out).

Options:
  --host ADDR             address to listen on [default: 127.0.0.1]; 0.0.0.0 or :: to
                          serve other machines
  --port N                port [default: 8080]; 0 picks a free one
  --weights TABLE         outcome weights (0 to 1000000, up to 6 decimals),
                          normalised by their sum
                          [default: timeout=20,403=20,500=10,200=50]
  --seed N                makes the outcome of the k-th request a pure function of (N, k);
                          without it a seed is drawn and printed
  --hang DURATION         longest a hung request is held, e.g. 500ms, 30s, 1h [default: 30s]
  --log-file PATH         append every entry here [default: unreliable.log]
  --no-log-file           keep the log in memory only
  --log-format FORMAT     text (the original style) or json (one object per line)
                          [default: text]
  --log-capacity N        entries kept in memory for /getlogs [default: 100000]
  --threads N             worker threads: requests with bodies, /getlogs, /stats,
                          refusals [default: 8 per core, 8 to 256]
  --pollers N             threads that hold idle and hung connections and answer
                          all other requests [default: 1 per core, at most 64]
  --max-connections N     open connections at most; more get 503 [default: 10000]
  -h, --help              print this help

Endpoints:
  GET /getbalance         the faults (also HEAD); X-Request-Id is logged;
                          X-Unreliable-Outcome: timeout|403|500|200 forces one
  GET /getlogs            the log as JSON; since=ID, limit=N, outcome=NAME, client=IP,
                          request_id_prefix=TEXT
  GET /stats              counts, weights, seed, chi-square test, uptime
  GET /health             200 ok; 503 while the log file cannot be written
  GET /                   a short page listing the endpoints
";

const CLIENT_HELP: &str = "\
Exercise an unreliable server: send requests to /getbalance, retry timeouts, then fetch this
run's entries from /getlogs, match every attempt to its entry, and judge the outcome mix.

Usage: unreliable client [OPTIONS]

Options:
  --host HOST             server hostname or IP address [default: 127.0.0.1]
  --port N                server port [default: 8080]
  --count N               logical requests to send [default: 100]
  --concurrency C         worker threads, each with its own keep-alive connection [default: 1]
  --timeout DURATION      per attempt, e.g. 250ms, 3s: the whole answer must arrive within
                          it once the request is sent (no byte of it: a timeout draw;
                          only part: timed out mid-response, a transport error);
                          connecting gets as long again [default: 3s]
  --retries R             retries after a retried outcome [default: 3]
  --retry-on LIST         outcomes that are retried: timeout, 403, 500, 200 or none
                          [default: timeout]; transport errors (connection refused,
                          reset or timed out, closed before or during the answer,
                          timed out during it, malformed answer, other I/O errors)
                          are retried whatever the list, except with none: no
                          retries at all
  --backoff DURATION      first retry delay; doubles per retry, full jitter [default: 100ms]
  --max-backoff DURATION  cap on the retry delay [default: 2s]
  --interval DURATION     pause before each fresh request a worker takes [default: 0ms]
  --show-logs N|all|none  server log entries to show [default: 20]
  --json                  print one JSON document instead of the report (also
                          when the run fails before it: verdict, error, exit_status)
  --quiet                 no progress line
  --tolerance PP          exit 1 when any 95% interval lies outside expected +/- PP points
  -h, --help              print this help

GET /stats (before and after the run) and each GET /getlogs page have a
fixed timeout of 10s of their own, connecting included, whatever --timeout is
(but the first connection, made with --timeout, carries the first /stats).
After 10 attempts in a row (3 per worker when more) over at least 1s (or
--timeout) without an answer, the run stops early and fails: when all failed
to connect, or when they timed out and GET /health does not answer either.
A goodness-of-fit p-value below 1e-9 fails the run too (a correct server:
about one run in a million at most); one below 0.05 is only reported.

Exit status: 0 fine, 1 the run failed (verdict, reconciliation, /stats unreadable),
2 usage error, 3 server unreachable.
";

const DEMO_HELP: &str = "\
Start a server on a free loopback port inside this process, run the client against it,
print the report and exit: the whole tool in a few seconds.

Usage: unreliable demo [OPTIONS]

Server options:
  --seed N                fault plan seed [default: drawn and printed]
  --weights TABLE         [default: timeout=20,403=20,500=10,200=50]
  --hang DURATION         longest a hung request is held [default: 2s]

Client options (as for 'unreliable client', without --host and --port), with these defaults:
  --count 100 --concurrency 8 --timeout 250ms --retries 3 --backoff 10ms --max-backoff 100ms

  -h, --help              print this help
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &str) -> Result<Command, CliError> {
        parse(words.split_whitespace().map(OsString::from))
    }

    fn error_of(words: &str) -> String {
        match parse_words(words) {
            Err(error) => error.message,
            Ok(command) => panic!("'{words}' parsed as {command:?}"),
        }
    }

    #[test]
    fn serve_defaults_match_the_documentation() {
        let Ok(Command::Serve(options)) = parse_words("serve") else {
            panic!("serve did not parse");
        };
        assert_eq!(options.host, "127.0.0.1");
        assert_eq!(options.port, 8080);
        assert_eq!(options.hang, Duration::from_secs(30));
        assert_eq!(options.log_file, Some(PathBuf::from("unreliable.log")));
        assert_eq!(options.log_format, LogFormat::Text);
        assert_eq!(options.log_capacity, 100_000);
        assert_eq!(options.max_connections, 10_000);
        assert_eq!(options.weights, Weights::owner_default());
        assert!(options.threads >= MIN_DEFAULT_WORKERS && options.threads <= MAX_DEFAULT_WORKERS);
        let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
        assert_eq!(options.pollers, cores.min(MAX_POLLERS));
    }

    #[test]
    fn serve_flags_take_values_both_ways() {
        let Ok(Command::Serve(options)) = parse_words(
            "serve --host :: --port=0 --seed 42 --hang 250ms --no-log-file --log-format json --threads 4 --pollers 3",
        ) else {
            panic!("did not parse");
        };
        assert_eq!(options.host, "::");
        assert_eq!(options.port, 0);
        assert_eq!(options.seed, Some(42));
        assert_eq!(options.hang, Duration::from_millis(250));
        assert_eq!(options.log_file, None);
        assert_eq!(options.log_format, LogFormat::Json);
        assert_eq!(options.threads, 4);
        assert_eq!(options.pollers, 3);
    }

    #[test]
    fn client_flags_are_validated() {
        let Ok(Command::Client(options)) = parse_words(
            "client --host ::1 --port 9 --count 10 --concurrency 3 --timeout 1.5s --retries 0 \
             --retry-on timeout,500 --show-logs all --json --tolerance 2.5",
        ) else {
            panic!("did not parse");
        };
        assert_eq!(options.host, "::1");
        assert_eq!(options.timeout, Duration::from_millis(1500));
        for (host, kept) in [
            ("[::1]", "::1"),
            ("[fe80::1%eth0]", "fe80::1%eth0"),
            ("fe80::1%2", "fe80::1%2"),
            ("localhost", "localhost"),
            ("192.0.2.10", "192.0.2.10"),
            ("1.example", "1.example"),
            ("10.1.2.example", "10.1.2.example"),
            ("0x7f.example", "0x7f.example"),
            ("0xg1", "0xg1"),
            ("1.2.3.4.0x5", "1.2.3.4.0x5"),
        ] {
            let Ok(Command::Client(options)) = parse_words(&format!("client --host {host}")) else {
                panic!("--host {host} did not parse");
            };
            assert_eq!(options.host, kept);
        }
        assert_eq!(options.retries, 0);
        assert_eq!(
            options.retry_on,
            vec![Outcome::Timeout, Outcome::ServerError]
        );
        assert_eq!(options.show_logs, ShowLogs::All);
        assert!(options.json);
        assert_eq!(options.tolerance, Some(2.5));
    }

    #[test]
    fn bad_input_gets_a_reason_naming_the_flag() {
        let cases = [
            ("", "missing subcommand"),
            ("serv", "unknown subcommand 'serv' (did you mean 'serve'?)"),
            (
                "serve --prot 1",
                "invalid option '--prot' (did you mean '--port'?)",
            ),
            ("serve --port", "missing value for option '--port'"),
            ("serve --port 70000", "invalid value '70000' for '--port'"),
            ("serve --port -1", "invalid value '-1' for '--port'"),
            (
                "serve --hang 3",
                "invalid value '3' for '--hang': expected a duration with a unit",
            ),
            (
                "serve --host example.com",
                "invalid value 'example.com' for '--host'",
            ),
            ("serve --log-format xml", "expected 'text' or 'json'"),
            ("serve --threads 0", "invalid value '0' for '--threads'"),
            ("serve --pollers 0", "invalid value '0' for '--pollers'"),
            ("serve --pollers 65", "invalid value '65' for '--pollers'"),
            (
                "serve --no-log-file=yes",
                "option '--no-log-file' takes no value",
            ),
            ("serve extra", "unexpected argument 'extra'"),
            ("client --timeout 0s", "must be longer than zero"),
            ("client --count 0", "invalid value '0' for '--count'"),
            (
                "client --retry-on teapot",
                "expected a comma-separated list",
            ),
            ("client --retry-on 500,500", "'500' is listed twice"),
            (
                "client --tolerance -1",
                "invalid value '-1' for '--tolerance'",
            ),
            (
                "client --tolerance nan",
                "invalid value 'nan' for '--tolerance'",
            ),
            (
                "client --show-logs some",
                "expected a number, 'all' or 'none'",
            ),
            (
                "client --backoff 3s --max-backoff 1s",
                "--max-backoff (1s) is shorter than --backoff (3s)",
            ),
            ("demo --host 1.2.3.4", "invalid option '--host'"),
            (
                "client --host [::1]:8080",
                "invalid value '[::1]:8080' for '--host': expected a hostname or an IP \
                 address (IPv6 with or without brackets; the port goes in --port)",
            ),
            ("client --host [::1", "invalid value '[::1' for '--host'"),
            (
                "client --host [127.0.0.1]",
                "invalid value '[127.0.0.1]' for '--host'",
            ),
            (
                "client --host 127.0.0.1:8080",
                "invalid value '127.0.0.1:8080' for '--host'",
            ),
            ("client --host [localhost]", "invalid value '[localhost]'"),
            (
                "client --host 127.0.0.1%lo",
                "invalid value '127.0.0.1%lo' for '--host'",
            ),
            ("client --host localhost%lo", "invalid value 'localhost%lo'"),
            ("client --host ::1%", "invalid value '::1%'"),
            ("client --host %", "invalid value '%'"),
            (
                "client --host 999.1.1.1",
                "invalid value '999.1.1.1' for '--host': expected an IPv4 address as four \
                 decimal numbers from 0 to 255 without leading zeros (a.b.c.d)",
            ),
            (
                "client --host 10.1.2",
                "invalid value '10.1.2' for '--host'",
            ),
            (
                "client --host 010.0.0.1",
                "invalid value '010.0.0.1' for '--host'",
            ),
            (
                "client --host 127.000.000.001",
                "invalid value '127.000.000.001'",
            ),
            ("client --host 2130706433", "invalid value '2130706433'"),
            ("client --host 127.0.0.1.", "invalid value '127.0.0.1.'"),
            ("client --host 0x7f.1", "invalid value '0x7f.1'"),
            ("client --host 0X7F000001", "invalid value '0X7F000001'"),
            ("client --host 0xa.0x0.1.0x", "invalid value '0xa.0x0.1.0x'"),
            (
                "client --host 127.0.0.1 --port 8080 --port 9",
                "option '--port' is given twice ('8080', then '9'); give it once",
            ),
            (
                "client --port=1 --count 5 --port 2",
                "option '--port' is given twice ('1', then '2')",
            ),
            ("client --json --json", "option '--json' is given twice"),
            ("serve --seed 1 --seed 1", "option '--seed' is given twice"),
            ("demo --hang 1s --hang 2s", "option '--hang' is given twice"),
            (
                "serve --log-file a.log --no-log-file",
                "options '--log-file' and '--no-log-file' contradict each other",
            ),
            (
                "serve --no-log-file --log-file=a.log",
                "options '--no-log-file' and '--log-file' contradict each other",
            ),
        ];
        for (words, expected) in cases {
            let message = error_of(words);
            assert!(
                message.contains(expected),
                "'{words}' gave '{message}', expected it to contain '{expected}'"
            );
        }
    }

    #[test]
    fn help_and_version_are_commands() {
        assert!(matches!(parse_words("--help"), Ok(Command::Help(text)) if text == MAIN_HELP));
        assert!(
            matches!(parse_words("serve --help"), Ok(Command::Help(text)) if text == SERVE_HELP)
        );
        assert!(
            matches!(parse_words("help client"), Ok(Command::Help(text)) if text == CLIENT_HELP)
        );
        assert!(matches!(parse_words("demo -h"), Ok(Command::Help(text)) if text == DEMO_HELP));
        assert_eq!(parse_words("--version"), Ok(Command::Version));
    }

    #[test]
    fn every_documented_flag_is_accepted() {
        let documented = [
            (SERVE_HELP, SERVE_FLAGS),
            (CLIENT_HELP, CLIENT_ADDRESS_FLAGS),
            (CLIENT_HELP, CLIENT_RUN_FLAGS),
            (DEMO_HELP, DEMO_SERVER_FLAGS),
        ];
        for (help, flags) in documented {
            for flag in flags {
                assert!(help.contains(flag), "{flag} is not in its help text");
            }
        }
    }

    #[test]
    fn client_help_states_the_admin_timeout_the_client_uses() {
        let stated = format!(
            "fixed timeout of {}s of their own, connecting included",
            crate::client::ADMIN_TIMEOUT.as_secs()
        );
        assert!(CLIENT_HELP.contains(&stated), "{stated:?} not in the help");
        let early_stop = format!(
            "After {} attempts in a row ({} per worker when more) over at least {}s",
            crate::client::MIN_UNREACHABLE_STREAK,
            crate::client::UNREACHABLE_STREAK_PER_WORKER,
            crate::client::MIN_STREAK_SPAN.as_secs()
        );
        assert!(
            CLIENT_HELP.contains(&early_stop),
            "{early_stop:?} not in the help"
        );
    }

    #[test]
    fn durations_need_a_unit_and_round_to_microseconds() {
        let cases = [
            ("250ms", Some(Duration::from_millis(250))),
            ("3s", Some(Duration::from_secs(3))),
            ("0.1s", Some(Duration::from_millis(100))),
            ("2m", Some(Duration::from_secs(120))),
            ("0ms", Some(Duration::ZERO)),
            ("3", None),
            ("s", None),
            ("-1s", None),
            ("1e3s", None),
            ("1.2.3s", None),
            ("24h", Some(Duration::from_secs(24 * 3600))),
            ("1.5h", Some(Duration::from_secs(5400))),
            ("25h", None),
            ("2000m", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text).ok(), expected, "{text}");
        }
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5s");
    }
}
