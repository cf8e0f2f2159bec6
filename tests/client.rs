//! `unreliable client`, `client.sh` and `demo` against real servers on ephemeral loopback ports:
//! exact reconciliation with the server log, retries, the chi-square against `/stats`, the
//! tolerance exit status, the `--json` document, usage errors, and the acceptance run.
//!
//! Every server has a fixed seed and a `--hang` longer than the client's `--timeout`, so a hung
//! request is a client timeout (never a connection the server closed first). No assertion is
//! about time: the deadlines below only turn a hung process into a failed test.

mod common;
#[path = "../src/json.rs"]
#[allow(dead_code)]
mod json;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

/// Safety net for one client run of a few hundred attempts (they take about a second).
/// The acceptance run takes the machine alone (write); every other test shares it (read). On two
/// cores a neighbour test's load could otherwise delay an answer past the run's 200 ms timeout,
/// which the reconciliation rightly reports as a mismatch.
static MACHINE: RwLock<()> = RwLock::new(());

fn share_the_machine() -> RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The client's `--json` report of a finished run.
fn json_report(finished: &Finished) -> json::Value {
    json::decode(&finished.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON document ({error}):\n{}\nstderr:\n{}",
            finished.stdout, finished.stderr
        )
    })
}

/// `unreliable ARGS`.
fn unreliable(args: &[&str]) -> Finished {
    let mut command = Command::new(binary());
    command.args(args);
    run_until(command, RUN_DEADLINE, "the client run")
}

/// `unreliable client --host 127.0.0.1 --port PORT ARGS`.
fn run_client(server: &Server, args: &[&str]) -> Finished {
    let port = server.address.port().to_string();
    let mut all = vec!["client", "--host", "127.0.0.1", "--port", &port];
    all.extend_from_slice(args);
    unreliable(&all)
}

/// `client.sh ARGS` with the test's binary first on `PATH`, so the script never builds one.
fn client_script(args: &[&str], deadline: Duration) -> Finished {
    let directory = binary().parent().expect("binary directory").to_path_buf();
    let mut path = vec![directory];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut command = Command::new(repository_root().join("client.sh"));
    command
        .args(args)
        .env("PATH", std::env::join_paths(path).expect("PATH"));
    run_until(command, deadline, "the client run")
}

/// The value at a dotted path such as `reconciliation.matched`.
fn member<'a>(value: &'a json::Value, path: &str) -> &'a json::Value {
    path.split('.').fold(value, |current, key| {
        current
            .get(key)
            .unwrap_or_else(|| panic!("no '{key}' (of '{path}') in {current:?}"))
    })
}

fn count_at(value: &json::Value, path: &str) -> u64 {
    member(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("'{path}' is not a count: {:?}", member(value, path)))
}

fn number_at(value: &json::Value, path: &str) -> f64 {
    member(value, path)
        .as_f64()
        .unwrap_or_else(|| panic!("'{path}' is not a number: {:?}", member(value, path)))
}

fn text_at<'a>(value: &'a json::Value, path: &str) -> &'a str {
    member(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("'{path}' is not a string: {:?}", member(value, path)))
}

fn items_at<'a>(value: &'a json::Value, path: &str) -> &'a [json::Value] {
    member(value, path)
        .as_array()
        .unwrap_or_else(|| panic!("'{path}' is not an array: {:?}", member(value, path)))
}

fn decode_reply(reply: &Reply) -> json::Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    json::decode(&reply.text()).unwrap_or_else(|error| panic!("{error}: {}", reply.text()))
}

fn server_stats(server: &Server) -> json::Value {
    decode_reply(&get(server, "/stats", &[]).expect("/stats answered"))
}

/// The server's log entries whose request id starts with `<run_id>-`.
fn run_entries(server: &Server, run_id: &str) -> Vec<json::Value> {
    let reply = get(
        server,
        &format!("/getlogs?request_id_prefix={run_id}-"),
        &[],
    )
    .expect("/getlogs answered");
    items_at(&decode_reply(&reply), "entries").to_vec()
}

/// Asserts that the report's reconciliation is clean and every attempt matched exactly one entry,
/// with no transport errors, and that the server holds exactly that many entries for the run.
fn assert_reconciles_exactly(report: &json::Value, server: &Server) {
    let attempts = count_at(report, "attempts.total");
    assert!(attempts > 0);
    assert_eq!(
        member(report, "reconciliation.clean"),
        &json::Value::Bool(true),
        "{:?}",
        member(report, "reconciliation")
    );
    for list in [
        "missing_on_server",
        "unknown_to_client",
        "duplicates",
        "mismatches",
    ] {
        let items = items_at(report, &format!("reconciliation.{list}"));
        assert!(items.is_empty(), "{list}: {items:?}");
    }
    for count in [
        "not_sent",
        "transport_logged",
        "transport_unlogged",
        "dropped_by_server",
    ] {
        assert_eq!(
            count_at(report, &format!("reconciliation.{count}")),
            0,
            "{count}"
        );
    }
    assert_eq!(count_at(report, "reconciliation.matched"), attempts);
    assert_eq!(count_at(report, "reconciliation.server_entries"), attempts);
    assert_eq!(count_at(report, "attempts.draws"), attempts);
    let entries = run_entries(server, text_at(report, "run_id"));
    assert_eq!(entries.len() as u64, attempts);
}

#[test]
fn counts_reconcile_exactly_with_the_server_log() {
    let _shared = share_the_machine();
    let server = Server::start("client-reconcile", &["--seed", "11", "--hang", "2s"]);
    let finished = run_client(
        &server,
        &[
            "--count",
            "60",
            "--concurrency",
            "4",
            "--timeout",
            "150ms",
            "--backoff",
            "10ms",
            "--max-backoff",
            "40ms",
            "--json",
        ],
    );
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    let report = json_report(&finished);
    assert_eq!(text_at(&report, "verdict"), "pass");
    assert_eq!(count_at(&report, "requests.total"), 60);
    assert_reconciles_exactly(&report, &server);
    // The client is the server's only user: its attempts are all the server saw.
    let stats = server_stats(&server);
    assert_eq!(
        count_at(&stats, "total"),
        count_at(&report, "attempts.total")
    );
    let counted: u64 = ["timeout", "403", "500", "200"]
        .iter()
        .map(|outcome| count_at(&report, &format!("attempts.counts.{outcome}")))
        .sum();
    assert_eq!(counted, count_at(&report, "attempts.total"));
}

#[test]
fn timeouts_are_retried_and_each_attempt_has_its_own_entry() {
    let _shared = share_the_machine();
    // One worker, so attempt k is the server's request k and the run is a pure function of the
    // seed: with 20% hangs, 30 requests certainly include retried ones.
    let server = Server::start("client-retries", &["--seed", "5", "--hang", "2s"]);
    let finished = run_client(
        &server,
        &[
            "--count",
            "30",
            "--concurrency",
            "1",
            "--timeout",
            "150ms",
            "--retries",
            "3",
            "--backoff",
            "10ms",
            "--max-backoff",
            "20ms",
            "--json",
        ],
    );
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    let report = json_report(&finished);
    assert_reconciles_exactly(&report, &server);
    assert_eq!(count_at(&report, "requests.total"), 30);
    assert!(count_at(&report, "attempts.total") > 30);
    assert!(number_at(&report, "requests.mean_attempts") > 1.0);

    let run_id = text_at(&report, "run_id").to_string();
    let mut by_request: BTreeMap<u64, Vec<(u32, String)>> = BTreeMap::new();
    for entry in run_entries(&server, &run_id) {
        let request_id = text_at(&entry, "request_id");
        let rest = request_id
            .strip_prefix(&format!("{run_id}-"))
            .unwrap_or_else(|| panic!("foreign request id {request_id}"));
        let (request, attempt) = rest.split_once('-').expect("<request>-<attempt>");
        by_request
            .entry(request.parse().expect("request number"))
            .or_default()
            .push((
                attempt.parse().expect("attempt number"),
                text_at(&entry, "outcome").to_string(),
            ));
    }
    assert_eq!(
        by_request.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<u64>>()
    );
    let mut retried = 0;
    for (request, attempts) in &mut by_request {
        attempts.sort();
        let numbers: Vec<u32> = attempts.iter().map(|(number, _)| *number).collect();
        assert_eq!(
            numbers,
            (1..=numbers.len() as u32).collect::<Vec<_>>(),
            "request {request}"
        );
        assert!(attempts.len() <= 4, "request {request}: {attempts:?}");
        // Every attempt but the last timed out; the last answered, or used up the retries.
        let (last, earlier) = attempts.split_last().expect("one attempt at least");
        assert!(
            earlier.iter().all(|(_, outcome)| outcome == "timeout"),
            "request {request}: {attempts:?}"
        );
        assert!(
            last.1 != "timeout" || attempts.len() == 4,
            "request {request} stopped after a timeout with retries left: {attempts:?}"
        );
        if attempts.len() > 1 {
            retried += 1;
        }
    }
    assert!(retried > 0, "no request was retried: {by_request:?}");
}

#[test]
fn chi_square_in_the_report_equals_the_servers_stats() {
    let _shared = share_the_machine();
    // A fresh server and one client: the client's attempt counts are the server's counts, so
    // the same test on the same counts must give the same statistic and p-value, exactly.
    let server = Server::start(
        "client-chi-square",
        &["--seed", "2024", "--hang", "2s", "--no-log-file"],
    );
    let finished = run_client(
        &server,
        &[
            "--count",
            "80",
            "--concurrency",
            "4",
            "--timeout",
            "150ms",
            "--backoff",
            "10ms",
            "--max-backoff",
            "40ms",
            "--json",
        ],
    );
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    let report = json_report(&finished);
    assert_reconciles_exactly(&report, &server);
    let stats = server_stats(&server);
    assert_eq!(
        count_at(&stats, "total"),
        count_at(&report, "attempts.total")
    );
    for outcome in ["timeout", "403", "500", "200"] {
        assert_eq!(
            count_at(&stats, &format!("counts.{outcome}")),
            count_at(&report, &format!("attempts.counts.{outcome}")),
            "{outcome}"
        );
    }
    // Every expected count is at least 5 here, so both use the closed-form test (no sampling).
    assert_eq!(text_at(&report, "attempts.chi_square.method"), "chi-square");
    for key in ["statistic", "degrees_of_freedom", "p_value", "method"] {
        assert_eq!(
            member(&report, &format!("attempts.chi_square.{key}")),
            member(&stats, &format!("chi_square.{key}")),
            "{key}"
        );
    }
    assert_eq!(
        member(&report, "attempts.consistent"),
        &json::Value::Bool(number_at(&stats, "chi_square.p_value") >= 0.05)
    );
}

#[test]
fn tolerance_sets_the_exit_status() {
    let _shared = share_the_machine();
    // Within: a healthy server and a wide tolerance. One worker makes the attempts the server's
    // requests 1..n, so the counts are a pure function of the seed.
    let healthy = Server::start(
        "client-tolerance-ok",
        &["--seed", "21", "--hang", "2s", "--no-log-file"],
    );
    let within = run_client(
        &healthy,
        &[
            "--count",
            "40",
            "--concurrency",
            "1",
            "--timeout",
            "150ms",
            "--backoff",
            "10ms",
            "--max-backoff",
            "20ms",
            "--tolerance",
            "25",
            "--json",
        ],
    );
    assert_eq!(within.code, Some(0), "{within:#?}");
    let report = json_report(&within);
    assert_eq!(number_at(&report, "configuration.tolerance_points"), 25.0);
    assert!(items_at(&report, "tolerance_violations").is_empty());
    assert_eq!(text_at(&report, "verdict"), "pass");

    // Violated, deterministically and whatever the seed: a server whose `--hang` (0 ms) is
    // shorter than the client's timeout closes each hung request at once, so the client sees
    // "closed before a response", a transport error that is retried but is no draw. Of the
    // draws the client counts, then, every one is a 200 although the weights say 50%: the 200
    // interval lies near 100% and the timeout interval near 0%, both far outside 50% ± 5. The
    // reconciliation stays clean (the server logged those as timeouts, which is accepted), and
    // the same run with a 100-point tolerance has no violation. Both fail all the same, since
    // the server drew those hung requests and the mix without them cannot be judged.
    let skewed = Server::start(
        "client-tolerance-violated",
        &[
            "--seed",
            "3",
            "--hang",
            "0ms",
            "--weights",
            "timeout=50,200=50",
            "--no-log-file",
        ],
    );
    let skewed_run = |tolerance: &str| {
        run_client(
            &skewed,
            &[
                "--count",
                "30",
                "--concurrency",
                "1",
                "--timeout",
                "5s",
                "--backoff",
                "1ms",
                "--max-backoff",
                "1ms",
                "--tolerance",
                tolerance,
                "--json",
            ],
        )
    };
    let violated = skewed_run("5");
    assert_eq!(violated.code, Some(1), "{violated:#?}");
    let report = json_report(&violated);
    assert_eq!(text_at(&report, "verdict"), "fail");
    assert_eq!(
        member(&report, "reconciliation.clean"),
        &json::Value::Bool(true)
    );
    assert!(count_at(&report, "reconciliation.transport_logged") > 0);
    assert_eq!(count_at(&report, "attempts.counts.timeout"), 0);
    let violations: Vec<&str> = items_at(&report, "tolerance_violations")
        .iter()
        .filter_map(json::Value::as_str)
        .collect();
    assert_eq!(violations, ["timeout", "200"]);

    let hung = count_at(&report, "reconciliation.transport_logged_outcomes.timeout");
    assert!(hung > 0);
    let reasons: Vec<&str> = items_at(&report, "verdict_reasons")
        .iter()
        .filter_map(json::Value::as_str)
        .collect();
    let hung_reason = hung_closed_reason(hung);
    assert_eq!(
        reasons,
        [
            hung_reason.as_str(),
            "timeout: 95% interval outside expected ± 5 points",
            "200: 95% interval outside expected ± 5 points"
        ]
    );

    let lenient = skewed_run("100");
    assert_eq!(lenient.code, Some(1), "{lenient:#?}");
    let report = json_report(&lenient);
    assert!(items_at(&report, "tolerance_violations").is_empty());
    let hung = count_at(&report, "reconciliation.transport_logged_outcomes.timeout");
    assert_eq!(
        items_at(&report, "verdict_reasons"),
        [json::Value::String(hung_closed_reason(hung))]
    );
}

/// The verdict reason for `count` hung requests the server closed before the client's timeout.
fn hung_closed_reason(count: u64) -> String {
    format!(
        "{count} attempts were hung requests the server closed before --timeout (its --hang is \
         shorter): the mix cannot be judged; raise the server's --hang or lower --timeout"
    )
}

/// Asserts `value` at `path` is an object with at least these members.
fn assert_members(value: &json::Value, path: &str, keys: &[&str]) {
    let object = if path.is_empty() {
        value
    } else {
        member(value, path)
    };
    let json::Value::Object(members) = object else {
        panic!("'{path}' is not an object: {object:?}");
    };
    for key in keys {
        assert!(
            members.iter().any(|(name, _)| name == key),
            "no '{key}' in '{path}': {object:?}"
        );
    }
}

fn assert_row_fields(row: &json::Value) {
    assert_members(
        row,
        "",
        &[
            "outcome",
            "expected_probability",
            "expected_count",
            "actual_count",
            "actual_proportion",
            "interval_low",
            "interval_high",
        ],
    );
    let low = number_at(row, "interval_low");
    let high = number_at(row, "interval_high");
    let proportion = number_at(row, "actual_proportion");
    assert!(
        (0.0..=1.0).contains(&low) && low <= proportion && proportion <= high && high <= 1.0,
        "{row:?}"
    );
}

#[test]
fn json_report_has_the_documented_fields() {
    let _shared = share_the_machine();
    let server = Server::start(
        "client-json",
        &["--seed", "8", "--hang", "2s", "--no-log-file"],
    );
    let finished = run_client(
        &server,
        &[
            "--count",
            "30",
            "--concurrency",
            "3",
            "--timeout",
            "150ms",
            "--retries",
            "2",
            "--backoff",
            "10ms",
            "--max-backoff",
            "40ms",
            "--show-logs",
            "5",
            "--tolerance",
            "40",
            "--json",
        ],
    );
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    // One document and nothing else on stdout (the decoder rejects trailing text).
    let report = json_report(&finished);
    assert_members(
        &report,
        "",
        &[
            "version",
            "run_id",
            "target",
            "configuration",
            "server",
            "attempts",
            "requests",
            "latency_ms",
            "elapsed_seconds",
            "attempts_per_second",
            "stopped_early",
            "reconciliation",
            "logs",
            "tolerance_violations",
            "verdict_reasons",
            "verdict",
        ],
    );
    assert_eq!(text_at(&report, "version"), env!("CARGO_PKG_VERSION"));
    let run_id = text_at(&report, "run_id");
    assert!(
        run_id.len() == 8 && run_id.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "{run_id}"
    );
    assert_eq!(text_at(&report, "target"), server.address.to_string());

    assert_members(
        &report,
        "configuration",
        &[
            "host",
            "port",
            "count",
            "concurrency",
            "timeout_ms",
            "retries",
            "retry_on",
            "backoff_ms",
            "max_backoff_ms",
            "interval_ms",
            "tolerance_points",
        ],
    );
    assert_eq!(text_at(&report, "configuration.host"), "127.0.0.1");
    assert_eq!(
        count_at(&report, "configuration.port"),
        u64::from(server.address.port())
    );
    assert_eq!(count_at(&report, "configuration.count"), 30);
    assert_eq!(count_at(&report, "configuration.concurrency"), 3);
    assert_eq!(number_at(&report, "configuration.timeout_ms"), 150.0);
    assert_eq!(count_at(&report, "configuration.retries"), 2);
    assert_eq!(
        member(&report, "configuration.retry_on"),
        &json::Value::Array(vec![json::Value::String("timeout".into())])
    );
    assert_eq!(number_at(&report, "configuration.backoff_ms"), 10.0);
    assert_eq!(number_at(&report, "configuration.max_backoff_ms"), 40.0);
    assert_eq!(number_at(&report, "configuration.interval_ms"), 0.0);
    assert_eq!(number_at(&report, "configuration.tolerance_points"), 40.0);

    assert_members(&report, "server", &["seed", "probabilities", "restarted"]);
    assert_eq!(count_at(&report, "server.seed"), 8);
    assert_eq!(
        member(&report, "server.restarted"),
        &json::Value::Bool(false)
    );
    assert_eq!(member(&report, "stopped_early"), &json::Value::Null);
    for (outcome, probability) in [("timeout", 0.2), ("403", 0.2), ("500", 0.1), ("200", 0.5)] {
        let shown = number_at(&report, &format!("server.probabilities.{outcome}"));
        assert!((shown - probability).abs() < 1e-12, "{outcome}: {shown}");
    }

    assert_members(
        &report,
        "attempts",
        &[
            "total",
            "counts",
            "other",
            "draws",
            "rows",
            "chi_square",
            "consistent",
            "precision_points",
        ],
    );
    assert_members(
        &report,
        "attempts.counts",
        &["timeout", "403", "500", "200"],
    );
    assert_members(&report, "attempts.other", &[]);
    assert_members(
        &report,
        "attempts.chi_square",
        &["statistic", "degrees_of_freedom", "p_value", "method"],
    );
    assert!(number_at(&report, "attempts.precision_points") > 0.0);
    assert_members(
        &report,
        "requests",
        &[
            "total",
            "never_sent",
            "counts",
            "other",
            "draws",
            "rows",
            "mean_attempts",
            "expected_mean_attempts",
        ],
    );
    assert_eq!(count_at(&report, "requests.total"), 30);
    assert_eq!(count_at(&report, "requests.never_sent"), 0);
    for table in ["attempts.rows", "requests.rows"] {
        let rows = items_at(&report, table);
        let outcomes: Vec<&str> = rows.iter().map(|row| text_at(row, "outcome")).collect();
        assert_eq!(outcomes, ["timeout", "403", "500", "200"], "{table}");
        let mut total = 0;
        for row in rows {
            assert_row_fields(row);
            total += count_at(row, "actual_count");
        }
        let draws = table.replace("rows", "draws");
        assert_eq!(total, count_at(&report, &draws), "{table}");
    }

    let latency = items_at(&report, "latency_ms");
    assert!(!latency.is_empty());
    let mut latency_count = 0;
    for row in latency {
        assert_members(row, "", &["category", "count", "p50", "p90", "p99"]);
        assert!(number_at(row, "p50") <= number_at(row, "p99"), "{row:?}");
        latency_count += count_at(row, "count");
    }
    assert_eq!(latency_count, count_at(&report, "attempts.total"));
    assert!(number_at(&report, "elapsed_seconds") > 0.0);
    assert!(number_at(&report, "attempts_per_second") > 0.0);

    assert_members(
        &report,
        "reconciliation",
        &[
            "server_entries",
            "matched",
            "not_sent",
            "transport_logged",
            "transport_unlogged",
            "transport_logged_outcomes",
            "missing_on_server",
            "unknown_to_client",
            "duplicates",
            "mismatches",
            "dropped_by_server",
            "dropped_since_run_began",
            "clean",
            "done",
            "not_done_because",
        ],
    );
    assert_eq!(
        member(&report, "reconciliation.done"),
        &json::Value::Bool(true)
    );
    assert_eq!(
        member(&report, "reconciliation.not_done_because"),
        &json::Value::Null
    );
    assert_reconciles_exactly(&report, &server);

    let logs = items_at(&report, "logs");
    assert_eq!(logs.len(), 5);
    for entry in logs {
        assert_members(
            entry,
            "",
            &["id", "time", "client_ip", "outcome", "status", "request_id"],
        );
        assert_eq!(text_at(entry, "client_ip"), "127.0.0.1");
        assert!(text_at(entry, "request_id").starts_with(&format!("{run_id}-")));
        match text_at(entry, "outcome") {
            "timeout" => assert_eq!(member(entry, "status"), &json::Value::Null),
            outcome => assert_eq!(count_at(entry, "status").to_string(), outcome),
        }
    }
    assert!(items_at(&report, "tolerance_violations").is_empty());
    assert!(items_at(&report, "verdict_reasons").is_empty());
    assert_eq!(text_at(&report, "verdict"), "pass");
}

#[test]
fn busy_refusals_fail_the_run_and_are_explained() {
    let _shared = share_the_machine();
    // The first worker keeps its keep-alive connection open for the run, so with a limit of two
    // connections some of the other five workers' connections are refused with 503. The
    // server answers those without drawing an outcome and logs nothing.
    let server = Server::start(
        "client-busy",
        &[
            "--seed",
            "9",
            "--hang",
            "2s",
            "--max-connections",
            "2",
            "--no-log-file",
        ],
    );
    let finished = run_client(
        &server,
        &[
            "--count",
            "30",
            "--concurrency",
            "6",
            "--timeout",
            "150ms",
            "--show-logs",
            "0",
        ],
    );
    assert_eq!(finished.code, Some(1), "{finished:#?}");
    assert!(
        finished.stdout.contains("status 503")
            && finished.stdout.contains("--max-connections")
            && finished.stdout.contains("verdict: FAIL"),
        "{}",
        finished.stdout
    );
}

#[test]
fn an_unreachable_server_exits_3_with_a_clear_message() {
    let _shared = share_the_machine();
    // A port that was just bound and closed again: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
        .to_string();
    let finished = unreliable(&[
        "client",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--timeout",
        "2s",
        "--json",
    ]);
    assert_eq!(finished.code, Some(3), "{finished:#?}");
    // With --json, stdout still holds one JSON document (before, it was empty).
    let report = json_report(&finished);
    assert_eq!(text_at(&report, "verdict"), "fail");
    assert_eq!(count_at(&report, "exit_status"), 3);
    assert_eq!(
        text_at(&report, "error"),
        format!("cannot reach 127.0.0.1:{port}: connection refused")
    );
    assert!(text_at(&report, "hint").starts_with("is a server running on that port"));
    let message = finished.stderr.trim_end();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message}");
    assert!(
        lines[0].starts_with("unreliable: error: cannot reach ")
            && lines[0].contains(&format!("127.0.0.1:{port}"))
            && lines[0].contains("refused"),
        "{message}"
    );
    assert!(
        lines[1].starts_with("hint: is a server running on that port")
            && lines[1].contains("serve --host 0.0.0.0"),
        "{message}"
    );
}

#[test]
fn bad_flags_exit_2_with_a_reason_and_a_usage_hint() {
    let _shared = share_the_machine();
    let cases: [(&[&str], &str); 7] = [
        (&["client", "--bogus"], "--bogus"),
        (&["client", "--count"], "--count"),
        (&["client", "--count", "ten"], "ten"),
        (&["client", "--port", "70000"], "70000"),
        (&["client", "--timeout", "soon"], "soon"),
        (&["client", "--tolerance", "0"], "--tolerance"),
        (&["client", "--retry-on", "404"], "404"),
    ];
    for (args, mentioned) in cases {
        let finished = unreliable(args);
        assert_eq!(finished.code, Some(2), "{args:?}: {finished:#?}");
        assert!(finished.stdout.is_empty(), "{args:?}: {finished:#?}");
        let lines: Vec<&str> = finished.stderr.lines().collect();
        let reason = lines.first().copied().unwrap_or_default();
        assert!(
            reason.starts_with("unreliable: error: ") && reason.contains(mentioned),
            "{args:?}: {reason}"
        );
        // The reason, then a short hint, never a whole help text.
        assert!(
            lines.len() <= 3 && lines[1..].iter().any(|line| line.contains("--help")),
            "{args:?}: {}",
            finished.stderr
        );
    }
}

#[test]
fn help_goes_to_stdout_with_exit_0_and_version_prints_the_version() {
    let _shared = share_the_machine();
    for args in [
        &["client", "--help"][..],
        &["client", "-h"],
        &["help", "client"],
    ] {
        let finished = unreliable(args);
        assert_eq!(finished.code, Some(0), "{args:?}: {finished:#?}");
        assert!(finished.stderr.is_empty(), "{args:?}: {finished:#?}");
        for text in [
            "Usage: unreliable client",
            "--count",
            "--timeout",
            "--tolerance",
            "--json",
        ] {
            assert!(finished.stdout.contains(text), "{args:?}: no {text}");
        }
    }
    let demo = unreliable(&["demo", "--help"]);
    assert_eq!(demo.code, Some(0), "{demo:#?}");
    assert!(demo.stdout.contains("Usage: unreliable demo"), "{demo:#?}");
    let version = unreliable(&["--version"]);
    assert_eq!(version.code, Some(0), "{version:#?}");
    assert_eq!(
        version.stdout.trim_end(),
        format!("unreliable {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn client_script_runs_the_binary_on_path() {
    let _shared = share_the_machine();
    let server = Server::start(
        "client-script",
        &["--seed", "13", "--hang", "2s", "--no-log-file"],
    );
    let port = server.address.port().to_string();
    let finished = client_script(
        &[
            "127.0.0.1",
            &port,
            "--count",
            "20",
            "--concurrency",
            "2",
            "--timeout",
            "150ms",
            "--backoff",
            "10ms",
            "--max-backoff",
            "40ms",
            "--json",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert!(!finished.stderr.contains("building"), "{finished:#?}");
    let report = json_report(&finished);
    assert_eq!(text_at(&report, "configuration.host"), "127.0.0.1");
    assert_eq!(count_at(&report, "configuration.port").to_string(), port);
    assert_eq!(count_at(&report, "requests.total"), 20);
    assert_reconciles_exactly(&report, &server);
}

#[test]
fn client_script_rejects_missing_and_bad_arguments() {
    let _shared = share_the_machine();
    let cases: [&[&str]; 11] = [
        &[],
        &["127.0.0.1"],
        &["127.0.0.1", "http"],
        &["127.0.0.1", "0"],
        &["127.0.0.1", "65536"],
        &["127.0.0.1", "-5"],
        &["", "8080"],
        // An option where the IP belongs, and a second address after IP PORT.
        &["--count", "5"],
        &["127.0.0.1", "8080", "--port", "9"],
        &["127.0.0.1", "8080", "--count", "3", "--host=192.0.2.1"],
        &["127.0.0.1", "8080", "--port=9"],
    ];
    for args in cases {
        let finished = client_script(args, STEP_TIMEOUT);
        assert_eq!(finished.code, Some(2), "{args:?}: {finished:#?}");
        assert!(finished.stdout.is_empty(), "{args:?}: {finished:#?}");
        assert!(
            finished.stderr.contains("usage: ") && finished.stderr.contains("IP PORT"),
            "{args:?}: {finished:#?}"
        );
    }
    // A bad client option gets through the script and is refused by the client itself.
    let finished = client_script(&["127.0.0.1", "8080", "--bogus"], STEP_TIMEOUT);
    assert_eq!(finished.code, Some(2), "{finished:#?}");
    assert!(finished.stderr.contains("--bogus"), "{finished:#?}");
    // Help is asked for, not a mistake.
    let help = client_script(&["--help"], STEP_TIMEOUT);
    assert_eq!(help.code, Some(0), "{help:#?}");
    assert!(help.stdout.contains("IP PORT"), "{help:#?}");
}

#[test]
fn shell_scripts_pass_shellcheck() {
    let _shared = share_the_machine();
    if !have_tool("shellcheck") {
        return;
    }
    let mut command = Command::new("shellcheck");
    let root = repository_root();
    command.args([root.join("client.sh"), root.join("bench/run.sh")]);
    let finished = run_until(command, STEP_TIMEOUT, "shellcheck");
    assert_eq!(finished.code, Some(0), "{finished:#?}");
}

#[test]
fn client_script_without_a_binary_or_the_sources_says_what_to_do() {
    // client.sh copied alone to another machine, with no unreliable on PATH and no cargo.
    let directory = scratch_directory("client-script-alone");
    let script = directory.join("client.sh");
    std::fs::copy(repository_root().join("client.sh"), &script).expect("copy client.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(["127.0.0.1", "8080"])
        .env("PATH", "/usr/bin:/bin");
    let finished = run_until(command, STEP_TIMEOUT, "client.sh without a binary");
    assert_eq!(finished.code, Some(127), "{finished:#?}");
    assert!(
        finished
            .stderr
            .contains("no unreliable binary on PATH, next to this script or in target/release")
            && finished
                .stderr
                .contains("copy the binary next to client.sh"),
        "{finished:#?}"
    );
}

#[test]
fn demo_runs_end_to_end_and_passes() {
    let _shared = share_the_machine();
    let finished = unreliable(&["demo", "--count", "50", "--seed", "1", "--interval", "1ms"]);
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert!(finished.stdout.contains("verdict: PASS"), "{finished:#?}");
    // The preamble gives commands that reproduce the run outside the demo, each a line that
    // can be pasted whole (the address is a shell comment), with the demo's port.
    let lines: Vec<&str> = finished.stdout.lines().take(3).collect();
    assert!(
        lines[0].starts_with("# demo: a server on http://127.0.0.1:"),
        "{lines:?}"
    );
    let port = lines[0]
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .expect("a port");
    assert!(
        lines[1].starts_with(&format!(
            "unreliable serve --port {port} --no-log-file --log-capacity 1000000 --seed 1 \
             --weights "
        )),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "unreliable client --host 127.0.0.1 --port {port} "
        )) && lines[2].contains(" --interval 1ms ")
            && lines[2].contains("--retry-on timeout --backoff 10ms --max-backoff 100ms"),
        "{lines:?}"
    );
    assert!(
        finished.stdout.contains("Reconciliation: "),
        "{finished:#?}"
    );
}

#[test]
fn a_demo_whose_reader_goes_away_stops_quietly() {
    let _shared = share_the_machine();
    // `| head -3`: before, the demo ended with "cannot write the report: Broken pipe", exit 1.
    let script = format!(
        "'{}' demo --count 20 --seed 1 | head -3 >/dev/null; echo \"status ${{PIPESTATUS[0]}}\"",
        binary().display()
    );
    let mut command = Command::new("bash");
    command.args(["-c", &script]);
    let finished = run_until(command, RUN_DEADLINE, "the demo");
    assert_eq!(finished.stdout, "status 0\n", "{finished:#?}");
    assert!(!finished.stderr.contains("error"), "{finished:#?}");
}

#[test]
fn acceptance_run_of_ten_thousand_requests_reconciles_with_zero_mismatches() {
    let _alone = MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The run: `client.sh 127.0.0.1 PORT --count 10000 --concurrency 64 --timeout 200ms`
    // against a default-weights server whose hangs (5 s) outlast the client's timeout.
    const COUNT: u64 = 10_000;
    const CONCURRENCY: u64 = 64;
    const TIMEOUT: Duration = Duration::from_millis(200);
    const RETRIES: u32 = 3;
    // Bounded by construction: an attempt takes at most a connect timeout plus a read timeout,
    // a request at most 1 + RETRIES attempts and the default backoffs (at most 100 + 200 + 400
    // ms), and each worker takes ⌈COUNT / CONCURRENCY⌉ requests; the log is fetched in pages
    // of at most 10 s each. A release build takes about 9 s, 7.8 of them the ~2,500 timeouts
    // of 200 ms shared by 64 workers (who work through backoffs rather than sleep), the debug
    // build tested here a little more; the deadline is only that bound.
    let per_request = TIMEOUT * 2 * (RETRIES + 1) + Duration::from_millis(700);
    let pages = (COUNT * u64::from(RETRIES + 1)).div_ceil(1000) as u32 + 2;
    let deadline = per_request * COUNT.div_ceil(CONCURRENCY) as u32
        + Duration::from_secs(10) * pages
        + STEP_TIMEOUT;
    let server = Server::start(
        "client-acceptance",
        &["--seed", "10000", "--hang", "5s", "--no-log-file"],
    );
    let port = server.address.port().to_string();
    let count = COUNT.to_string();
    let concurrency = CONCURRENCY.to_string();
    let finished = client_script(
        &[
            "127.0.0.1",
            &port,
            "--count",
            &count,
            "--concurrency",
            &concurrency,
            "--timeout",
            "200ms",
            "--json",
        ],
        deadline,
    );
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let report = json_report(&finished);
    assert_eq!(count_at(&report, "requests.total"), COUNT);
    assert_eq!(
        count_at(&report, "configuration.retries"),
        u64::from(RETRIES)
    );
    assert_reconciles_exactly(&report, &server);
    assert_eq!(
        count_at(&server_stats(&server), "total"),
        count_at(&report, "attempts.total")
    );
    assert_eq!(text_at(&report, "verdict"), "pass");
}

#[test]
fn retry_on_none_retries_nothing_and_transport_errors_are_retried_otherwise() {
    let _shared = share_the_machine();
    // A `--hang` of 0 ms closes each hung request at once, so the client sees "closed before a
    // response", a transport error, for about half of the attempts (seeded, one worker). Those
    // were draws the client cannot count, so each run fails for that reason, and that alone.
    let server = Server::start(
        "client-retry-on-none",
        &[
            "--seed",
            "4",
            "--hang",
            "0ms",
            "--weights",
            "timeout=50,200=50",
            "--no-log-file",
        ],
    );
    let run = |retry_on: &str| {
        let finished = run_client(
            &server,
            &[
                "--count",
                "20",
                "--concurrency",
                "1",
                "--timeout",
                "5s",
                "--retry-on",
                retry_on,
                "--backoff",
                "1ms",
                "--max-backoff",
                "1ms",
                "--show-logs",
                "none",
                "--json",
            ],
        );
        assert_eq!(finished.code, Some(1), "{finished:#?}");
        let report = json_report(&finished);
        let hung = count_at(&report, "reconciliation.transport_logged_outcomes.timeout");
        assert_eq!(
            items_at(&report, "verdict_reasons"),
            [json::Value::String(hung_closed_reason(hung))]
        );
        report
    };
    let none = run("none");
    let closed = count_at(&none, "attempts.other.closed before a response");
    assert!(closed > 0, "{:?}", member(&none, "attempts"));
    // One attempt per request, the failed ones included: `none` means no retries at all.
    assert_eq!(count_at(&none, "attempts.total"), 20);
    assert_eq!(
        count_at(&none, "requests.other.closed before a response"),
        closed
    );

    // With retries on (here for 500s only), transport errors are retried like timeouts.
    let retried = run("500");
    assert!(
        count_at(&retried, "attempts.total") > 20,
        "{:?}",
        member(&retried, "attempts")
    );
}

#[test]
fn a_run_without_a_single_draw_fails_and_says_why() {
    let _shared = share_the_machine();
    // Every request hangs and the server closes it at once (`--hang 0ms`): each of the 5 × 4
    // attempts is "closed before a response", a transport error, so no attempt is a draw from
    // the weights and the mix cannot be judged, with or without a tolerance.
    let server = Server::start(
        "client-no-draws",
        &[
            "--seed",
            "6",
            "--hang",
            "0ms",
            "--weights",
            "timeout=1",
            "--no-log-file",
        ],
    );
    let args = [
        "--count",
        "5",
        "--concurrency",
        "1",
        "--timeout",
        "5s",
        "--backoff",
        "1ms",
        "--max-backoff",
        "1ms",
        "--tolerance",
        "1",
        "--show-logs",
        "none",
    ];
    let text = run_client(&server, &args);
    assert_eq!(text.code, Some(1), "{text:#?}");
    let reason = "nothing to judge, all 20 attempts ended in transport errors: \
                  closed before a response 20";
    // The server logged every one of them as a timeout it closed: that says why.
    let hung = hung_closed_reason(20);
    assert!(
        text.stdout.contains(&format!("\n  {reason}\n"))
            && text
                .stdout
                .contains(&format!("verdict: FAIL ({reason}; {hung})")),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("the mix is no"), "{}", text.stdout);

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let finished = run_client(&server, &json_args);
    assert_eq!(finished.code, Some(1), "{finished:#?}");
    let report = json_report(&finished);
    assert_eq!(count_at(&report, "attempts.draws"), 0);
    assert_eq!(
        member(&report, "attempts.consistent"),
        &json::Value::Bool(false)
    );
    assert_eq!(text_at(&report, "verdict"), "fail");
    let reasons: Vec<&str> = items_at(&report, "verdict_reasons")
        .iter()
        .filter_map(json::Value::as_str)
        .collect();
    assert_eq!(reasons, [reason, hung.as_str()]);
}
