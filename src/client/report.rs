//! Judging the run: what the server's weights predict per attempt and per logical request (the
//! retry theory), the observed counts against it with their intervals, latency quantiles, and
//! the verdict with every reason it failed, all in one [`Report`] for `render` to write out.
//!
//! Invariants: only the server's outcomes are draws (other statuses and transport errors are
//! counted apart); a run without a draw never passes.

use super::admin::{LogEntry, LogFetch, ServerStats};
use super::reconcile::{reconcile, Reconciliation};
use super::send::{AttemptRecord, Sent, StopCause};
use super::wire::AttemptOutcome;
use super::{group_thousands, Verdict};
use crate::chaos::Outcome;
use crate::cli::{ClientOptions, ShowLogs};
use crate::stats::{self, GoodnessOfFit};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

/// Two-sided confidence of every interval in the report.
pub const CONFIDENCE: f64 = 0.95;
/// A goodness-of-fit p-value below this fails the run: the draws cannot pass for the server's
/// weights, while one that answers 200 to everything gives 1.6e-21 after 100 attempts of the
/// default weights. Were p-values exact, a correct server would fail this way once in a billion
/// runs; the chi-square approximation (used once every outcome expects 5 draws or more)
/// understates the far tail when an outcome expects few, so exact enumeration of the
/// multinomial gives more: 3e-8 for the default weights at 100 attempts, 8e-8 at 50, 1.2e-6 for
/// weights 1/99 at 500 (1e-6 here would have failed those 3.9e-6 and 6.1e-5 of the time), and
/// at most 1.4e-6 over two-outcome weights from 1/99 to 1/10,000 whose rare outcome expects 5
/// to 6 draws, the worst place for the approximation. A
/// p-value under the report's 0.05 but above this only warns: one run in twenty of a correct
/// server has one. A Monte Carlo p-value (see `stats::goodness_of_fit`) is 1/20,001 at least,
/// so it never fails a run this way; the tolerance and the intervals still can.
pub const IMPLAUSIBLE_P_VALUE: f64 = 1e-9;

/// Final-outcome probabilities per logical request when the outcomes in `retried` are tried
/// again up to `retries` times. With q the summed probability of `retried`: an outcome outside
/// it ends a request with `p (1 - q^(R+1)) / (1 - q)`; one inside it is final only on the last
/// attempt, with `p q^R`.
pub fn final_outcome_probabilities(
    probabilities: &[f64; Outcome::COUNT],
    retried: &[Outcome],
    retries: u32,
) -> [f64; Outcome::COUNT] {
    let q = retried_probability(probabilities, retried);
    let reach = expected_attempts_per_request(q, retries);
    let last_round = q.powf(f64::from(retries));
    let mut finals = [0.0; Outcome::COUNT];
    for outcome in Outcome::ALL {
        let p = probabilities[outcome.index()];
        finals[outcome.index()] = if retried.contains(&outcome) {
            p * last_round
        } else {
            p * reach
        };
    }
    finals
}

/// The summed probability of the retried outcomes.
pub fn retried_probability(probabilities: &[f64; Outcome::COUNT], retried: &[Outcome]) -> f64 {
    Outcome::ALL
        .iter()
        .filter(|outcome| retried.contains(outcome))
        .map(|outcome| probabilities[outcome.index()])
        .sum()
}

/// Mean attempts per logical request: `(1 - q^(R+1)) / (1 - q)`, and `R + 1` when `q` is 1.
pub fn expected_attempts_per_request(q: f64, retries: u32) -> f64 {
    let rounds = f64::from(retries) + 1.0;
    if 1.0 - q < 1e-12 {
        rounds
    } else {
        (1.0 - q.powf(rounds)) / (1.0 - q)
    }
}

/// One row of a distribution table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributionRow {
    pub outcome: Outcome,
    pub expected_probability: f64,
    pub expected_count: f64,
    pub actual_count: u64,
    pub actual_proportion: f64,
    /// 95% Wilson interval of the proportion.
    pub interval: (f64, f64),
}

/// Observed counts against expected probabilities, one row per outcome.
pub fn distribution(
    counts: &[u64; Outcome::COUNT],
    probabilities: &[f64; Outcome::COUNT],
) -> Vec<DistributionRow> {
    let total: u64 = counts.iter().sum();
    Outcome::ALL
        .iter()
        .map(|outcome| {
            let count = counts[outcome.index()];
            let expected = probabilities[outcome.index()];
            DistributionRow {
                outcome: *outcome,
                expected_probability: expected,
                expected_count: expected * total as f64,
                actual_count: count,
                actual_proportion: if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                },
                interval: stats::wilson_interval(count, total, CONFIDENCE),
            }
        })
        .collect()
}

/// Whether the row's interval lies entirely outside expected ± `tolerance_points`.
pub fn is_outside_tolerance(row: &DistributionRow, total: u64, tolerance_points: f64) -> bool {
    if total == 0 {
        return false;
    }
    let expected = row.expected_probability * 100.0;
    row.interval.0 * 100.0 > expected + tolerance_points
        || row.interval.1 * 100.0 < expected - tolerance_points
}

/// The ± half-width (percentage points) of the interval of the most frequent outcome, and how
/// many draws bring every outcome's interval to about ±1 point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precision {
    pub draws: u64,
    pub half_width_points: f64,
    pub draws_for_one_point: u64,
}

/// The share whose interval is widest for a given number of draws: p(1 − p) peaks at one half.
const WORST_CASE_SHARE: f64 = 0.5;

pub fn precision(rows: &[DistributionRow], draws: u64) -> Option<Precision> {
    let largest = rows.iter().max_by_key(|row| row.actual_count)?;
    if draws == 0 {
        return None;
    }
    // The worst case, as the README's testing procedure explains (about 10,000 draws for ±1
    // point): the observed share is no basis, since one at 0% or 100% would say 0 draws.
    // Two-sided, as the intervals are: 1.96 for 95% (the one-sided 1.645 asked for 30% too few).
    let z = stats::normal_quantile(1.0 - (1.0 - CONFIDENCE) / 2.0);
    let p = WORST_CASE_SHARE;
    let needed = (z * z * p * (1.0 - p) / 1e-4).ceil();
    Some(Precision {
        draws,
        half_width_points: (largest.interval.1 - largest.interval.0) * 50.0,
        draws_for_one_point: round_to_two_digits(needed as u64),
    })
}

/// 6576 as 6600: the count is an estimate, so more digits would claim too much.
pub(super) fn round_to_two_digits(value: u64) -> u64 {
    let mut scale = 1;
    while value / scale >= 100 {
        scale *= 10;
    }
    value.saturating_add(scale / 2) / scale * scale
}

/// Latency quantiles of one category, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRow {
    pub category: String,
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

fn latency_rows(attempts: &[AttemptRecord]) -> Vec<LatencyRow> {
    let mut by_category: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    for attempt in attempts {
        let order = match &attempt.outcome {
            AttemptOutcome::Server(outcome) => outcome.index(),
            _ => Outcome::COUNT,
        };
        by_category
            .entry((order, attempt.outcome.category()))
            .or_default()
            .push(attempt.latency.as_secs_f64() * 1000.0);
    }
    by_category
        .into_iter()
        .map(|((_, category), mut values)| {
            values.sort_by(f64::total_cmp);
            let quantile = |q| stats::percentile(&values, q).unwrap_or(0.0);
            LatencyRow {
                category,
                count: values.len() as u64,
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
            }
        })
        .collect()
}

/// Everything a report shows, computed once and rendered as text or JSON.
#[derive(Debug, Clone)]
pub struct Report {
    pub run_id: String,
    pub target: String,
    pub seed: Option<u64>,
    pub probabilities: [f64; Outcome::COUNT],
    pub attempts: u64,
    pub requests: u64,
    pub attempt_rows: Vec<DistributionRow>,
    pub attempt_draws: u64,
    /// Attempts that were not draws (other statuses, transport errors), by category.
    pub attempt_other: BTreeMap<String, u64>,
    /// A detail per transport category (the first one seen).
    pub transport_details: BTreeMap<String, String>,
    pub fit: GoodnessOfFit,
    pub precision: Option<Precision>,
    pub request_rows: Vec<DistributionRow>,
    pub request_draws: u64,
    pub request_other: BTreeMap<String, u64>,
    pub mean_attempts: f64,
    pub expected_mean_attempts: f64,
    /// Wall time of sending: from starting the workers until the last attempt is classified.
    pub elapsed: Duration,
    pub latency: Vec<LatencyRow>,
    /// Logical requests without a single attempt (the run stopped before them).
    pub requests_never_sent: u64,
    /// Why the run stopped before sending every request, when it did.
    pub stopped: Option<StopCause>,
    /// Pending retries given up when the run stopped.
    pub retries_dropped: u64,
    /// Empty (all zero) when the reconciliation was not done; see `reconciliation_not_done`.
    pub reconciliation: Reconciliation,
    /// Why the attempts could not be checked against the server's log, when they could not.
    pub reconciliation_not_done: Option<String>,
    pub restart: Restart,
    /// Entries the server's ring dropped from memory since it started.
    pub dropped_by_server: u64,
    /// Of those, the ones logged after the run's first `/stats` (ids are dense and the oldest go
    /// first): this run's entries may be among them, earlier ones cannot. `None` when that
    /// `/stats` gave no total, or the server restarted.
    pub dropped_since_run_began: Option<u64>,
    /// The server entries to show (already cut to `show_logs`).
    pub shown_entries: Vec<LogEntry>,
    pub tolerance_violations: Vec<Outcome>,
    /// Why the verdict failed, one line each; empty when it passed.
    pub verdict_reasons: Vec<String>,
    pub verdict: Verdict,
}

/// Whether the server restarted during the run, as its two `/stats` answers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `/stats` after the run could not be read.
    Unknown,
    No,
    /// The verdict reason, naming the evidence (see
    /// [`restart_evidence`](super::admin::restart_evidence)).
    Yes(String),
}

/// What the server told about the run.
#[derive(Debug, Clone)]
pub(super) struct ServerAccount {
    /// `/stats` before the run: the weights the run is judged against, read from the server
    /// that served its start.
    pub(super) stats: ServerStats,
    pub(super) restart: Restart,
    /// This run's entries, or why they could not be read (the reconciliation is then not done).
    pub(super) log: Result<LogFetch, String>,
}

/// What the run did, for the report.
#[derive(Debug)]
pub(super) struct RunRecord<'a> {
    pub(super) run_id: &'a str,
    /// The address connected to.
    pub(super) target: &'a str,
    pub(super) sent: &'a Sent,
    /// Wall time of sending.
    pub(super) elapsed: Duration,
}

/// The per-request category of a request whose pending retry was given up when the run
/// stopped early.
pub const RETRY_DROPPED: &str = "retry dropped";

/// The verdict reason of a run stopped early: `the server became unreachable: 12 connection
/// attempts in a row failed (connection refused); 1,234 requests not sent`, or `the server
/// stopped answering: 10 attempts in a row got no answer (timeout), nor did GET /health (no
/// answer within 1s); …`.
pub(super) fn unreachable_reason(
    cause: &StopCause,
    never_sent: u64,
    retries_dropped: u64,
) -> String {
    let failures = group_thousands(cause.failures_in_a_row);
    let mut reason = match &cause.health_failure {
        None => format!(
            "the server became unreachable: {failures} connection attempts in a row failed ({})",
            cause.failure
        ),
        Some(health) => format!(
            "the server stopped answering: {failures} attempts in a row got no answer (last: \
             {}), nor did GET /health ({health})",
            cause.failure
        ),
    };
    let _ = write!(
        reason,
        "; {} requests not sent",
        group_thousands(never_sent)
    );
    if retries_dropped > 0 {
        let _ = write!(
            reason,
            ", {} retries dropped",
            group_thousands(retries_dropped)
        );
    }
    reason
}

/// The verdict reason for attempts the server logged as `timeout` but closed before the
/// client's timeout, so the client saw a transport error: those were draws, left out.
fn hung_closed_reason(count: u64) -> String {
    format!(
        "{count} attempts were hung requests the server closed before --timeout (its --hang is \
         shorter): the mix cannot be judged; raise the server's --hang or lower --timeout"
    )
}

/// Why the logs do not reconcile. Entries missing on a server that dropped as many of the run's
/// from memory are no proof of a disagreement, only of a log too small for the run.
fn disagreement(reconciliation: &Reconciliation, dropped_since_run_began: Option<u64>) -> String {
    let missing = reconciliation.missing_on_server.len() as u64;
    let only_missing = reconciliation.unknown_to_client.is_empty()
        && reconciliation.mismatches.is_empty()
        && reconciliation.duplicates.is_empty();
    match dropped_since_run_began {
        Some(dropped) if only_missing && missing <= dropped => format!(
            "reconciliation incomplete: the server dropped {dropped} entries logged during the \
             run from memory before they were read; raise its --log-capacity"
        ),
        _ => "client and server logs disagree".to_string(),
    }
}

/// Builds the report from the attempts, the server's stats and this run's entries.
pub(super) fn build_report(
    options: &ClientOptions,
    run: &RunRecord<'_>,
    account: &ServerAccount,
) -> Report {
    let run_id = run.run_id;
    let attempts = run.sent.attempts.as_slice();
    let server = &account.stats;
    let no_entries = LogFetch {
        entries: Vec::new(),
        dropped: 0,
    };
    let (fetched, reconciliation_not_done) = match &account.log {
        Ok(fetched) => (fetched, None),
        Err(reason) => (&no_entries, Some(reason.clone())),
    };
    let mut attempt_counts = [0u64; Outcome::COUNT];
    let mut attempt_other = BTreeMap::new();
    let mut transport_details = BTreeMap::new();
    let mut transport_errors = 0u64;
    let mut finals: BTreeMap<u64, &AttemptOutcome> = BTreeMap::new();
    for attempt in attempts {
        match &attempt.outcome {
            AttemptOutcome::Server(outcome) => attempt_counts[outcome.index()] += 1,
            other => *attempt_other.entry(other.category()).or_insert(0) += 1,
        }
        if let AttemptOutcome::Transport(error) = &attempt.outcome {
            transport_errors += 1;
            if let Some(detail) = error.detail() {
                transport_details
                    .entry(error.name().to_string())
                    .or_insert_with(|| detail.to_string());
            }
        }
        // Attempts are sorted, so the last one seen per request is its final outcome.
        finals.insert(attempt.request, &attempt.outcome);
    }
    let mut request_counts = [0u64; Outcome::COUNT];
    let mut request_other = BTreeMap::new();
    // A request whose retry was given up has no final outcome: its last attempt's would count
    // as final a timeout that the theory expects to be retried.
    let dropped: HashSet<u64> = run.sent.retries_dropped.iter().copied().collect();
    for (request, outcome) in &finals {
        match outcome {
            _ if dropped.contains(request) => {
                *request_other.entry(RETRY_DROPPED.to_string()).or_insert(0) += 1
            }
            AttemptOutcome::Server(outcome) => request_counts[outcome.index()] += 1,
            other => *request_other.entry(other.category()).or_insert(0) += 1,
        }
    }
    let attempt_draws: u64 = attempt_counts.iter().sum();
    let request_draws: u64 = request_counts.iter().sum();
    let attempt_rows = distribution(&attempt_counts, &server.probabilities);
    let final_probabilities =
        final_outcome_probabilities(&server.probabilities, &options.retry_on, options.retries);
    let request_rows = distribution(&request_counts, &final_probabilities);
    let fit = stats::goodness_of_fit(&attempt_counts, &server.probabilities);
    let q = retried_probability(&server.probabilities, &options.retry_on);
    // Without the log every answered attempt would look missing: nothing is reconciled.
    let reconciliation = match reconciliation_not_done {
        None => reconcile(run_id, attempts, &fetched.entries),
        Some(_) => Reconciliation::default(),
    };
    let tolerance_violations: Vec<Outcome> = match options.tolerance {
        Some(tolerance) => attempt_rows
            .iter()
            .filter(|row| is_outside_tolerance(row, attempt_draws, tolerance))
            .map(|row| row.outcome)
            .collect(),
        None => Vec::new(),
    };
    let shown = match options.show_logs {
        ShowLogs::All => fetched.entries.len(),
        ShowLogs::Last(count) => count.min(fetched.entries.len()),
        ShowLogs::None => 0,
    };
    let mut verdict_reasons = Vec::new();
    // Without a draw every interval is [0%, 100%] and the chi-square is trivially 0, so neither
    // the fit nor the tolerance could fail: such a run proves nothing and must not pass.
    if attempt_draws == 0 {
        verdict_reasons.push(nothing_to_judge(
            attempts.len() as u64,
            transport_errors,
            &attempt_other,
        ));
    }
    // Not chance but an impossibility: the server gave what its own weights say it never
    // draws, so its weights (or its draws) are wrong, whatever the p-value says.
    for outcome in Outcome::ALL {
        let count = attempt_counts[outcome.index()];
        if count > 0 && server.probabilities[outcome.index()] == 0.0 {
            verdict_reasons.push(format!(
                "{} was the outcome of {count} attempts but its weight is 0",
                outcome.name()
            ));
        }
    }
    let requests = finals.len() as u64;
    let requests_never_sent = options.count.saturating_sub(requests);
    if let Some(cause) = &run.sent.stopped {
        verdict_reasons.push(unreachable_reason(
            cause,
            requests_never_sent,
            run.sent.retries_dropped.len() as u64,
        ));
    }
    if let Some(reason) = &reconciliation_not_done {
        verdict_reasons.push(format!("reconciliation not done ({reason})"));
    }
    if let Restart::Yes(reason) = &account.restart {
        verdict_reasons.push(reason.clone());
    }
    let dropped_since_run_began = match account.restart {
        Restart::No => server
            .total
            .map(|before| fetched.dropped.saturating_sub(before)),
        _ => None,
    };
    if !reconciliation.is_clean() {
        verdict_reasons.push(disagreement(&reconciliation, dropped_since_run_began));
    }
    // Those attempts were draws (the server's log says `timeout`) that the client could only
    // count as transport errors, so the tables lack them and cannot pass for the weights.
    if let Some(&hung) = reconciliation
        .transport_logged_outcomes
        .get(Outcome::Timeout.name())
    {
        verdict_reasons.push(hung_closed_reason(hung));
    }
    // Only when the run does not fail already: beside a server that stopped, hung requests it
    // closed or a log that disagrees, a p-value is a symptom of the cause listed.
    if verdict_reasons.is_empty() && attempt_draws > 0 && fit.p_value < IMPLAUSIBLE_P_VALUE {
        let p_value = if fit.p_value > 0.0 {
            format!("{:.1e}", fit.p_value)
        } else {
            "below 1e-300".to_string()
        };
        verdict_reasons.push(format!(
            "the outcomes cannot pass for the server's weights: goodness-of-fit p-value \
             {p_value}, under {IMPLAUSIBLE_P_VALUE:.0e} (a correct server: about one run in a million \
             at most)"
        ));
    }
    if let Some(tolerance) = options.tolerance {
        for outcome in &tolerance_violations {
            verdict_reasons.push(format!(
                "{}: 95% interval outside expected ± {tolerance} points",
                outcome.name()
            ));
        }
    }
    let verdict = if verdict_reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Report {
        run_id: run_id.to_string(),
        target: run.target.to_string(),
        seed: server.seed,
        probabilities: server.probabilities,
        attempts: attempts.len() as u64,
        requests,
        precision: precision(&attempt_rows, attempt_draws),
        attempt_rows,
        attempt_draws,
        attempt_other,
        transport_details,
        fit,
        request_rows,
        request_draws,
        request_other,
        mean_attempts: if requests > 0 {
            attempts.len() as f64 / requests as f64
        } else {
            0.0
        },
        expected_mean_attempts: expected_attempts_per_request(q, options.retries),
        elapsed: run.elapsed,
        latency: latency_rows(attempts),
        requests_never_sent,
        stopped: run.sent.stopped.clone(),
        retries_dropped: run.sent.retries_dropped.len() as u64,
        reconciliation,
        reconciliation_not_done,
        restart: account.restart.clone(),
        dropped_by_server: fetched.dropped,
        dropped_since_run_began,
        shown_entries: fetched.entries[fetched.entries.len() - shown..].to_vec(),
        tolerance_violations,
        verdict_reasons,
        verdict,
    }
}

/// Why a run whose attempts include no draw cannot be judged, naming what they ended in:
/// `nothing to judge, all 20 attempts ended in transport errors: connection reset 20`.
fn nothing_to_judge(attempts: u64, transport_errors: u64, other: &BTreeMap<String, u64>) -> String {
    let kinds: Vec<String> = other
        .iter()
        .map(|(category, count)| format!("{category} {count}"))
        .collect();
    let kinds = kinds.join(", ");
    match attempts {
        0 => "nothing to judge, no attempt was made".into(),
        1 if transport_errors == 1 => {
            format!("nothing to judge, the only attempt ended in a transport error: {kinds}")
        }
        1 => format!("nothing to judge, the only attempt got no outcome of the weights: {kinds}"),
        _ if transport_errors == attempts => {
            format!("nothing to judge, all {attempts} attempts ended in transport errors: {kinds}")
        }
        _ => format!(
            "nothing to judge, none of the {attempts} attempts got an outcome of the weights: \
             {kinds}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::render::{write_json_report, write_text_report};
    use crate::client::test_support::{
        attempt, entry, faithful_entries, number_in, owner_stats, report_from, report_of,
        synthetic_attempts, synthetic_report, OWNER,
    };
    use crate::client::wire::{request_id, TransportError};
    use crate::json::{self, Value};

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "{what}: {actual} != {expected}"
        );
    }

    #[test]
    fn final_outcomes_with_timeout_retries_follow_the_closed_form() {
        let finals = final_outcome_probabilities(&OWNER, &[Outcome::Timeout], 3);
        assert_close(finals[Outcome::Timeout.index()], 0.2f64.powi(4), "timeout");
        let reach = (1.0 - 0.2f64.powi(4)) / 0.8;
        assert_close(finals[Outcome::Forbidden.index()], 0.2 * reach, "403");
        assert_close(finals[Outcome::ServerError.index()], 0.1 * reach, "500");
        assert_close(finals[Outcome::Balance.index()], 0.5 * reach, "200");
        assert_close(finals.iter().sum(), 1.0, "sum");
        assert_close(
            expected_attempts_per_request(0.2, 3),
            1.248,
            "mean attempts",
        );
    }

    #[test]
    fn final_outcomes_generalise_to_any_retried_set() {
        let retried = [Outcome::Timeout, Outcome::ServerError];
        let finals = final_outcome_probabilities(&OWNER, &retried, 2);
        assert_close(retried_probability(&OWNER, &retried), 0.3, "q");
        assert_close(finals[Outcome::Timeout.index()], 0.2 * 0.09, "timeout");
        assert_close(finals[Outcome::ServerError.index()], 0.1 * 0.09, "500");
        assert_close(finals[Outcome::Forbidden.index()], 0.2 * 0.973 / 0.7, "403");
        assert_close(finals.iter().sum(), 1.0, "sum");
        // Nothing retried: one attempt, the weights themselves.
        assert_eq!(final_outcome_probabilities(&OWNER, &[], 5), OWNER);
        assert_close(expected_attempts_per_request(0.0, 5), 1.0, "q = 0");
        // Everything retried: every request uses all its attempts.
        assert_close(expected_attempts_per_request(1.0, 4), 5.0, "q = 1");
        let all = final_outcome_probabilities(&OWNER, &Outcome::ALL, 4);
        for outcome in Outcome::ALL {
            assert_close(all[outcome.index()], OWNER[outcome.index()], outcome.name());
        }
    }

    #[test]
    fn precision_asks_for_the_worst_case_draws_even_when_one_outcome_took_every_draw() {
        // The 1.96² · ¼ / 0.01² = 9,604 draws of the README, whatever the observed mix; before,
        // a 0% or 100% share gave "~0 attempts give ±1".
        let cases: [([u64; Outcome::COUNT], f64); 4] = [
            ([0, 0, 0, 20], 8.1),
            ([20, 0, 0, 0], 8.1),
            ([5, 5, 0, 10], 20.1),
            ([2000, 2000, 1000, 5000], 1.0),
        ];
        for (counts, half_width) in cases {
            let draws: u64 = counts.iter().sum();
            let rows = distribution(&counts, &OWNER);
            let found = precision(&rows, draws).unwrap();
            assert_eq!(found.draws, draws);
            assert_eq!(found.draws_for_one_point, 9600, "{counts:?}");
            assert!(
                (found.half_width_points - half_width).abs() < 0.05,
                "{counts:?}: ±{}",
                found.half_width_points
            );
        }
        assert_eq!(precision(&distribution(&[0; 4], &OWNER), 0), None);
    }

    #[test]
    fn entries_the_server_dropped_during_the_run_are_named_not_called_a_disagreement() {
        let attempts = synthetic_attempts();
        let gone: Vec<String> = attempts[..3]
            .iter()
            .map(|a| request_id("feed0123", a.request, a.attempt))
            .collect();
        let mut entries = faithful_entries(&attempts);
        entries.retain(|entry| {
            !gone
                .iter()
                .any(|id| entry.request_id.as_deref() == Some(id))
        });
        let judged = |before: Option<u64>, dropped: u64, entries: &[LogEntry]| {
            let account = ServerAccount {
                stats: ServerStats {
                    total: before,
                    ..owner_stats()
                },
                restart: Restart::No,
                log: Ok(LogFetch {
                    entries: entries.to_vec(),
                    dropped,
                }),
            };
            let sent = Sent {
                attempts: attempts.clone(),
                stopped: None,
                retries_dropped: Vec::new(),
            };
            let options = ClientOptions {
                count: 100,
                ..ClientOptions::default()
            };
            let report = report_from(&options, &sent, &account);
            let mut text = String::new();
            write_text_report(&report, &options, &mut text).unwrap();
            (report, text)
        };
        // 10 entries before the run, 13 dropped: 3 logged during it, as many as are missing.
        let (report, text) = judged(Some(10), 13, &entries);
        assert_eq!(report.dropped_since_run_began, Some(3));
        assert_eq!(report.verdict, Verdict::Fail);
        assert!(
            text.contains(
                "verdict: FAIL (reconciliation incomplete: the server dropped 3 entries logged \
                 during the run from memory before they were read; raise its --log-capacity)"
            ),
            "{text}"
        );
        assert!(
            text.contains("3 logged since this run began were dropped"),
            "{text}"
        );
        // 2 dropped during the run cannot account for 3 missing.
        let (report, text) = judged(Some(10), 12, &entries);
        assert_eq!(report.dropped_since_run_began, Some(2));
        assert!(
            text.contains("verdict: FAIL (client and server logs disagree)"),
            "{text}"
        );
        // All dropped before the run: the missing ones are not among them.
        let (_, text) = judged(Some(10), 10, &entries);
        assert!(
            text.contains("all logged before this run began: none of the missing ones"),
            "{text}"
        );
        assert!(text.contains("(client and server logs disagree)"), "{text}");
        // An outcome that differs is a disagreement however many were dropped.
        let mut altered = entries.clone();
        altered[0].outcome = "500".into();
        altered[0].status = Some(500);
        let (_, text) = judged(Some(10), 13, &altered);
        assert!(text.contains("(client and server logs disagree)"), "{text}");
        // With nothing missing the drops explain nothing, and the report does not name them.
        let (_, text) = judged(Some(10), 13, &faithful_entries(&attempts));
        assert!(!text.contains("  note: the server"), "{text}");
        let (_, text) = judged(None, 13, &faithful_entries(&attempts));
        assert!(!text.contains("  note: the server"), "{text}");
        // Without the total before the run nothing tells the two apart.
        let (report, text) = judged(None, 13, &entries);
        assert_eq!(report.dropped_since_run_began, None);
        assert!(text.contains("missing entries may be among them"), "{text}");
        assert!(text.contains("(client and server logs disagree)"), "{text}");
    }

    #[test]
    fn tolerance_and_mismatches_fail_the_verdict() {
        let strict = ClientOptions {
            tolerance: Some(0.5),
            ..ClientOptions::default()
        };
        // 60 of 120 draws are 200 (50%); the 403 share is 16.7% against 20%.
        let report = synthetic_report(&strict);
        assert_eq!(report.tolerance_violations, Vec::<Outcome>::new());
        let row = DistributionRow {
            outcome: Outcome::Balance,
            expected_probability: 0.5,
            expected_count: 500.0,
            actual_count: 700,
            actual_proportion: 0.7,
            interval: stats::wilson_interval(700, 1000, CONFIDENCE),
        };
        assert!(is_outside_tolerance(&row, 1000, 5.0));
        assert!(!is_outside_tolerance(&row, 1000, 25.0));
        assert!(!is_outside_tolerance(&row, 0, 0.0));

        let attempts = synthetic_attempts();
        let mut entries = faithful_entries(&attempts);
        entries.retain(|entry| entry.request_id.as_deref() != Some("feed0123-1-1"));
        let report = report_of(&ClientOptions::default(), &attempts, entries);
        assert_eq!(report.verdict, Verdict::Fail);
        let mut text = String::new();
        write_text_report(&report, &ClientOptions::default(), &mut text).unwrap();
        assert!(
            text.contains("missing on the server: 1 (feed0123-1-1)"),
            "{text}"
        );
        assert!(
            text.contains("verdict: FAIL (client and server logs disagree)"),
            "{text}"
        );
    }

    #[test]
    fn a_run_without_a_draw_fails_and_names_what_its_attempts_ended_in() {
        use AttemptOutcome::{OtherStatus, Transport};
        let reset = || Transport(TransportError::ConnectionReset);
        let closed = || Transport(TransportError::ClosedBeforeResponse);
        let all = "nothing to judge, all 4 attempts ended in transport errors: \
                   closed before a response 1, connection reset 3";
        let cases: [(Vec<AttemptOutcome>, &str); 4] = [
            (vec![reset(), reset(), closed(), reset()], all),
            (
                vec![OtherStatus(404), reset()],
                "nothing to judge, none of the 2 attempts got an outcome of the weights: \
                 connection reset 1, status 404 1",
            ),
            (
                vec![reset()],
                "nothing to judge, the only attempt ended in a transport error: \
                 connection reset 1",
            ),
            (
                vec![OtherStatus(404)],
                "nothing to judge, the only attempt got no outcome of the weights: status 404 1",
            ),
        ];
        // A tolerance cannot catch it: every interval is [0%, 100%] without a draw.
        let options = ClientOptions {
            tolerance: Some(1.0),
            ..ClientOptions::default()
        };
        for (outcomes, reason) in cases {
            let attempts: Vec<AttemptRecord> = outcomes
                .into_iter()
                .enumerate()
                .map(|(index, outcome)| attempt(index as u64 + 1, 1, outcome, true))
                .collect();
            // The server logged the answered attempts with their status, and none of the
            // transport errors (which a reset after sending may leave unlogged).
            let entries: Vec<LogEntry> = attempts
                .iter()
                .filter_map(|a| match a.outcome {
                    OtherStatus(status) => {
                        let id = request_id("feed0123", a.request, a.attempt);
                        let mut logged = entry(a.request, Some(&id), "200");
                        logged.status = Some(status);
                        Some(logged)
                    }
                    _ => None,
                })
                .collect();
            let report = report_of(&options, &attempts, entries);
            assert_eq!(report.attempt_draws, 0);
            assert!(report.tolerance_violations.is_empty());
            assert!(
                report.reconciliation.is_clean(),
                "{:?}",
                report.reconciliation
            );
            assert_eq!(report.verdict, Verdict::Fail, "{reason}");
            assert_eq!(report.verdict_reasons, [reason]);

            let mut text = String::new();
            write_text_report(&report, &options, &mut text).unwrap();
            assert!(text.contains(&format!("\n  {reason}\n")), "{text}");
            assert!(
                text.contains(&format!("verdict: FAIL ({reason})")),
                "{text}"
            );
            assert!(!text.contains("the mix is"), "{text}");

            let mut json_text = String::new();
            write_json_report(&report, &options, &mut json_text);
            let value = json::decode(&json_text).unwrap();
            let attempts = value.get("attempts").unwrap();
            assert_eq!(attempts.get("consistent"), Some(&Value::Bool(false)));
            assert_eq!(value.get("verdict").and_then(Value::as_str), Some("fail"));
            let reasons = value.get("verdict_reasons").and_then(Value::as_array);
            assert_eq!(reasons, Some(&[Value::String(reason.into())][..]));
        }
        assert_eq!(
            nothing_to_judge(0, 0, &BTreeMap::new()),
            "nothing to judge, no attempt was made"
        );
    }

    #[test]
    fn hung_requests_the_server_closed_first_fail_the_verdict() {
        use AttemptOutcome::{Server, Transport};
        // Two more requests that hung on the server, which closed them before the client's
        // timeout and logged them as timeouts: draws the tables could not count.
        let mut attempts = synthetic_attempts();
        for request in [101, 102] {
            let closed = Transport(TransportError::ClosedBeforeResponse);
            attempts.push(attempt(request, 1, closed, true));
            attempts.push(attempt(request, 2, Server(Outcome::Balance), true));
        }
        let mut entries = faithful_entries(&attempts);
        for entry in &mut entries {
            if matches!(
                entry.request_id.as_deref(),
                Some("feed0123-101-1" | "feed0123-102-1")
            ) {
                entry.outcome = "timeout".into();
                entry.status = None;
            }
        }
        let options = ClientOptions::default();
        let report = report_of(&options, &attempts, entries);
        assert!(
            report.reconciliation.is_clean(),
            "{:?}",
            report.reconciliation
        );
        let reason = "2 attempts were hung requests the server closed before --timeout (its \
                      --hang is shorter): the mix cannot be judged; raise the server's --hang \
                      or lower --timeout";
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.verdict_reasons, [reason]);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        assert!(
            text.contains(&format!("verdict: FAIL ({reason})")),
            "{text}"
        );
    }

    #[test]
    fn an_early_stop_counts_requests_never_sent_and_retries_dropped_apart() {
        use AttemptOutcome::{Server, Transport};
        let refused = || Transport(TransportError::ConnectionRefused);
        // Of 10 requests: one answered, one timed out and its retry was dropped, one refused
        // twice, and seven never started.
        let sent = Sent {
            attempts: vec![
                attempt(1, 1, Server(Outcome::Balance), true),
                attempt(2, 1, Server(Outcome::Timeout), true),
                attempt(3, 1, refused(), false),
                attempt(3, 2, refused(), false),
            ],
            stopped: Some(StopCause {
                failures_in_a_row: 10,
                failure: "connection refused",
                health_failure: None,
            }),
            retries_dropped: vec![2],
        };
        let account = ServerAccount {
            stats: owner_stats(),
            restart: Restart::Unknown,
            log: Err("GET /stats after the run failed: connection refused".into()),
        };
        let options = ClientOptions {
            count: 10,
            ..ClientOptions::default()
        };
        let report = report_from(&options, &sent, &account);
        assert_eq!((report.requests, report.requests_never_sent), (3, 7));
        assert_eq!(report.request_draws, 1);
        assert_eq!(
            report.request_rows[Outcome::Timeout.index()].actual_count,
            0
        );
        assert_eq!(
            report.request_other,
            BTreeMap::from([
                ("connection refused".to_string(), 1),
                (RETRY_DROPPED.to_string(), 1)
            ])
        );
        // Attempts are all counted, the dropped retry's timeout among the draws.
        assert_eq!((report.attempts, report.attempt_draws), (4, 2));
        let unreachable = "the server became unreachable: 10 connection attempts in a row \
                           failed (connection refused); 7 requests not sent, 1 retries dropped";
        assert_eq!(
            report.verdict_reasons,
            [
                unreachable,
                "reconciliation not done (GET /stats after the run failed: connection refused)"
            ]
        );
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        for expected in [
            format!("\n  stopped early: {unreachable}\n"),
            "\nPer logical request (final outcome after up to 3 retries): 3 requests, 7 more \
             never sent\n"
                .to_string(),
            format!(
                "\n  {RETRY_DROPPED:<28} {:>8}  (not a draw from the weights)\n",
                1
            ),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in\n{text}");
        }
        let mut json_text = String::new();
        write_json_report(&report, &options, &mut json_text);
        let value = json::decode(&json_text).unwrap();
        let stopped = value.get("stopped_early").unwrap();
        for (key, expected) in [
            ("failures_in_a_row", 10),
            ("requests_not_sent", 7),
            ("retries_dropped", 1),
        ] {
            assert_eq!(number_in(stopped, &[key]), Some(expected), "{key}");
        }
        assert_eq!(number_in(&value, &["requests", "never_sent"]), Some(7));
    }
}
