//! Writing a [`Report`]: the text for people and the `--json` document for programs (see
//! [`write_json_report`] for its members).
//!
//! Invariant: no string from the server reaches the text report raw; the JSON keeps every one
//! exact, under its own escaping.
//!
//! Decisions worth knowing:
//! - The text report shows every string from the server through [`visible`] (controls, bidi
//!   and invisible format characters as escapes): the server's log holds whatever its clients
//!   sent, and none of it may reach the terminal raw.

use super::admin::LogEntry;
use super::reconcile::Mismatch;
use super::report::{unreachable_reason, DistributionRow, Report, Restart};
use super::wire::AttemptOutcome;
use super::{format_duration, group_thousands, Verdict, USER_AGENT};
use crate::chaos::Outcome;
use crate::cli::ClientOptions;
use crate::json::{ArrayWriter, ObjectWriter};
use crate::stats::GoodnessOfFit;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Width in characters of the bars in the distribution tables, besides the marker.
pub const BAR_WIDTH: usize = 40;
/// Request ids the text report lists per reconciliation problem (the JSON lists all of them).
pub const MAX_LISTED_IDS: usize = 10;
/// A p-value below this is reported as unlikely under the configured weights.
pub const SIGNIFICANCE: f64 = 0.05;
/// Characters that the text report shows as escapes when they come from the server, besides
/// the controls (C0, DEL, C1): each can move the cursor, reorder or hide what follows, or
/// make a line look like another. Unicode's format characters (General_Category Cf), the line
/// and paragraph separators (Zl, Zp) and the Default_Ignorable_Code_Point ones (fillers,
/// variation selectors, tags), as of Unicode 15, in code point order.
const INVISIBLE_CHARACTERS: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),       // soft hyphen
    ('\u{34f}', '\u{34f}'),     // combining grapheme joiner
    ('\u{600}', '\u{605}'),     // Arabic number signs
    ('\u{61c}', '\u{61c}'),     // Arabic letter mark (bidi)
    ('\u{6dd}', '\u{6dd}'),     // Arabic end of ayah
    ('\u{70f}', '\u{70f}'),     // Syriac abbreviation mark
    ('\u{890}', '\u{891}'),     // Arabic pound and piastre marks above
    ('\u{8e2}', '\u{8e2}'),     // Arabic disputed end of ayah
    ('\u{115f}', '\u{1160}'),   // Hangul fillers
    ('\u{17b4}', '\u{17b5}'),   // Khmer inherent vowels
    ('\u{180b}', '\u{180f}'),   // Mongolian variation selectors, vowel separator
    ('\u{200b}', '\u{200f}'),   // zero width space, (non-)joiner, LRM, RLM
    ('\u{2028}', '\u{202e}'),   // line and paragraph separators, bidi embeddings, overrides
    ('\u{2060}', '\u{206f}'),   // word joiner, invisible operators, bidi isolates
    ('\u{3164}', '\u{3164}'),   // Hangul filler
    ('\u{fe00}', '\u{fe0f}'),   // variation selectors
    ('\u{feff}', '\u{feff}'),   // zero width no-break space (byte order mark)
    ('\u{ffa0}', '\u{ffa0}'),   // halfwidth Hangul filler
    ('\u{fff0}', '\u{fffb}'),   // reserved ignorables, interlinear annotation
    ('\u{110bd}', '\u{110bd}'), // Kaithi number sign
    ('\u{110cd}', '\u{110cd}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343f}'), // Egyptian hieroglyph format controls
    ('\u{1bca0}', '\u{1bca3}'), // shorthand format controls
    ('\u{1d173}', '\u{1d17a}'), // musical symbol format controls
    ('\u{e0000}', '\u{e0fff}'), // tags, variation selectors supplement
];

/// A test statistic for people: three decimals, or a mantissa and an exponent once it is
/// large (a weight of 1e-300 observed makes it about 1e300, which `{:.3}` spells in full).
fn statistic_text(statistic: f64) -> String {
    if statistic.abs() < 1e9 {
        format!("{statistic:.3}")
    } else {
        format!("{statistic:.3e}")
    }
}

/// A text bar: `#` for the actual share, `|` where the expected share ends.
///
/// The marker goes between cells, not on one: on a cell it hid that cell, so a share one cell
/// past the expected one drew the same bar as the expected share itself. So every cell of the
/// actual share shows, and the bar is one character wider than [`BAR_WIDTH`] at most.
pub fn bar(actual: f64, expected: f64) -> String {
    let cells = |share: f64| (share.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize;
    let filled = cells(actual);
    let marker = cells(expected);
    let mut drawn = String::with_capacity(BAR_WIDTH + 1);
    for cell in 0..=BAR_WIDTH {
        if cell == marker {
            drawn.push('|');
        }
        if cell < BAR_WIDTH {
            drawn.push(if cell < filled { '#' } else { ' ' });
        }
    }
    drawn.trim_end().to_string()
}

/// Mismatches where the client gave up but the server answered (`client timeout, server 200`):
/// the answer came after the client's timeout.
fn late_answers(mismatches: &[Mismatch]) -> usize {
    mismatches
        .iter()
        .filter(|mismatch| {
            mismatch.client == Outcome::Timeout.name()
                && Outcome::from_name(&mismatch.server).is_some_and(|o| o.status().is_some())
        })
        .count()
}

/// Server-supplied text as the text report shows it (see [`visible`]).
#[derive(Debug, Clone, Copy)]
pub struct Visible<'a>(&'a str);

/// `text` with every control character (C0, DEL, C1) and every character of
/// [`INVISIBLE_CHARACTERS`] written as an escape like `\u{1b}`, and a backslash as `\\`, so
/// that text from the server can neither drive the terminal (colours, cursor moves, a fake
/// line after a CR or LF), nor reorder or hide what follows it, nor pass for an escape. The
/// JSON report has its own escaping and does not use this.
pub fn visible(text: &str) -> Visible<'_> {
    Visible(text)
}

fn needs_escape(character: char) -> bool {
    character.is_control()
        || INVISIBLE_CHARACTERS
            .binary_search_by(|&(first, last)| {
                if last < character {
                    std::cmp::Ordering::Less
                } else if first > character {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

impl std::fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        // Runs that need nothing are copied as slices, as nearly all text is such a run.
        let mut start = 0;
        for (index, character) in text.char_indices() {
            let escaped = character == '\\' || needs_escape(character);
            if !escaped {
                continue;
            }
            f.write_str(&text[start..index])?;
            if character == '\\' {
                f.write_str("\\\\")?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(character))?;
            }
            start = index + character.len_utf8();
        }
        f.write_str(&text[start..])
    }
}

/// `2024-10-23T23:55:31.705Z` in the original tool's style `2024-10-23 23:55:31,705`; anything
/// not shaped like that is shown as sent.
pub fn log_style_time(rfc3339: &str) -> String {
    let bytes = rfc3339.as_bytes();
    if bytes.len() == 24 && bytes[10] == b'T' && bytes[19] == b'.' && bytes[23] == b'Z' {
        format!(
            "{} {},{}",
            &rfc3339[..10],
            &rfc3339[11..19],
            &rfc3339[20..23]
        )
    } else {
        rfc3339.to_string()
    }
}

/// One server entry in the original style plus its request id:
/// `2024-10-23 23:55:31,705 - 127.0.0.1 - 200 OK  [abc-1-1]`, its text made [`visible`].
pub fn format_log_entry(entry: &LogEntry) -> String {
    let label = Outcome::from_name(&entry.outcome)
        .map(Outcome::text_label)
        .unwrap_or(entry.outcome.as_str());
    format!(
        "{} - {} - {}  [{}]",
        visible(&log_style_time(&entry.time)),
        visible(&entry.client_ip),
        visible(label),
        visible(entry.request_id.as_deref().unwrap_or("-"))
    )
}

/// The sentence judging the chi-square p-value, whole: the report prints it as it is.
/// Only for a run with draws; one without has its `nothing to judge` reason instead.
pub fn fit_sentence(fit: &GoodnessOfFit) -> String {
    if fit.impossible_observed > 0 {
        "the mix is impossible under the configured weights: an outcome of weight 0 was seen \
         (the test is over the others)"
            .to_string()
    } else if fit.p_value >= SIGNIFICANCE {
        format!(
            "the mix is consistent with the configured weights (p = {:.3} >= {SIGNIFICANCE})",
            fit.p_value
        )
    } else {
        format!(
            "the mix is unlikely under the configured weights (p = {:.3e})",
            fit.p_value
        )
    }
}

/// Whether the chi-square found the mix consistent with the weights; never without a draw,
/// nor with an outcome the weights make impossible.
fn is_consistent(report: &Report) -> bool {
    report.attempt_draws > 0
        && report.fit.impossible_observed == 0
        && report.fit.p_value >= SIGNIFICANCE
}

fn write_distribution(
    text: &mut String,
    title: &str,
    rows: &[DistributionRow],
    other: &BTreeMap<String, u64>,
) -> std::fmt::Result {
    writeln!(text, "{title}")?;
    writeln!(
        text,
        "  {:<8} {:>9} {:>10} {:>8} {:>8}  {:<17}  # actual, | expected",
        "outcome", "expected", "exp.count", "count", "actual", "95% interval"
    )?;
    for row in rows {
        let interval = format!(
            "[{:.1}%, {:.1}%]",
            row.interval.0 * 100.0,
            row.interval.1 * 100.0
        );
        writeln!(
            text,
            "  {:<8} {:>8.1}% {:>10.1} {:>8} {:>7.1}%  {:<17}  {}",
            row.outcome.name(),
            row.expected_probability * 100.0,
            row.expected_count,
            row.actual_count,
            row.actual_proportion * 100.0,
            interval,
            bar(row.actual_proportion, row.expected_probability)
        )?;
    }
    for (category, count) in other {
        writeln!(
            text,
            "  {category:<28} {count:>8}  (not a draw from the weights)"
        )?;
    }
    Ok(())
}

/// Request ids, [`visible`]: some come from the server (entries the client never sent).
fn write_id_list(text: &mut String, label: &str, ids: &[String]) -> std::fmt::Result {
    if ids.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = ids
        .iter()
        .take(MAX_LISTED_IDS)
        .map(|id| visible(id).to_string())
        .collect();
    let more = ids.len().saturating_sub(MAX_LISTED_IDS);
    write!(text, "  {label}: {} ({}", ids.len(), listed.join(", "))?;
    if more > 0 {
        write!(text, ", … {more} more")?;
    }
    writeln!(text, ")")
}

/// The human report.
pub fn write_text_report(
    report: &Report,
    options: &ClientOptions,
    text: &mut String,
) -> std::fmt::Result {
    writeln!(
        text,
        "{USER_AGENT}: run {} against {}",
        report.run_id, report.target
    )?;
    let retry_on: Vec<&str> = options.retry_on.iter().map(|o| o.name()).collect();
    let retries = if retry_on.is_empty() {
        "no retries (--retry-on none)".to_string()
    } else {
        format!("retries {} on [{}]", options.retries, retry_on.join(", "))
    };
    writeln!(
        text,
        "  {} requests, concurrency {}, timeout {}, {retries}, backoff {} up to {}, interval {}",
        options.count,
        options.concurrency,
        format_duration(options.timeout),
        format_duration(options.backoff),
        format_duration(options.max_backoff),
        format_duration(options.interval)
    )?;
    let weights: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| {
            format!(
                "{} {:.1}%",
                o.name(),
                report.probabilities[o.index()] * 100.0
            )
        })
        .collect();
    let seed = report
        .seed
        .map(|seed| seed.to_string())
        .unwrap_or_else(|| "unknown".into());
    writeln!(text, "  server seed {seed}, weights {}", weights.join(", "))?;
    if let Some(cause) = &report.stopped {
        writeln!(
            text,
            "  stopped early: {}",
            unreachable_reason(cause, report.requests_never_sent, report.retries_dropped)
        )?;
    }

    if !report.shown_entries.is_empty() {
        writeln!(text)?;
        writeln!(
            text,
            "Server log (last {} of this run's {} entries)",
            report.shown_entries.len(),
            report.reconciliation.server_entries
        )?;
        for entry in &report.shown_entries {
            writeln!(text, "  {}", format_log_entry(entry))?;
        }
    }

    writeln!(text)?;
    write_distribution(
        text,
        &format!(
            "Per attempt (each attempt is one draw): {} attempts, {} draws",
            report.attempts, report.attempt_draws
        ),
        &report.attempt_rows,
        &report.attempt_other,
    )?;
    for (category, detail) in &report.transport_details {
        writeln!(text, "  first {category}: {detail}")?;
    }
    if report.attempt_draws == 0 {
        // The first reason (build_report puts it there) says what the attempts ended in.
        writeln!(text, "  no chi-square: there is no draw to test")?;
        if let Some(reason) = report.verdict_reasons.first() {
            writeln!(text, "  {reason}")?;
        }
    } else {
        writeln!(
            text,
            "  chi-square {}, {} degrees of freedom, p-value {:.4} ({})",
            statistic_text(report.fit.statistic),
            report.fit.degrees_of_freedom,
            report.fit.p_value,
            report.fit.method.name()
        )?;
        writeln!(text, "  {}", fit_sentence(&report.fit))?;
    }
    if let Some(precision) = &report.precision {
        writeln!(
            text,
            "  precision: with {} attempts each percentage is known to about ±{:.1} points; \
             ~{} attempts give ±1",
            group_thousands(precision.draws),
            precision.half_width_points,
            group_thousands(precision.draws_for_one_point)
        )?;
    }

    writeln!(text)?;
    let retries = if options.retry_on.is_empty() || options.retries == 0 {
        "final outcome (no retries)".to_string()
    } else {
        format!("final outcome after up to {} retries", options.retries)
    };
    let mut title = format!(
        "Per logical request ({retries}): {} requests",
        report.requests
    );
    if report.requests_never_sent > 0 {
        let _ = write!(
            title,
            ", {} more never sent",
            group_thousands(report.requests_never_sent)
        );
    }
    write_distribution(text, &title, &report.request_rows, &report.request_other)?;
    writeln!(
        text,
        "  mean attempts per request {:.3} (theory {:.3})",
        report.mean_attempts, report.expected_mean_attempts
    )?;
    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.attempts as f64 / seconds
    } else {
        0.0
    };
    writeln!(
        text,
        "  wall time of all attempts {} (workers in parallel, backoffs included), {rate:.1} attempts/s",
        format_duration(report.elapsed)
    )?;

    writeln!(text)?;
    writeln!(
        text,
        "Latency per attempt (ms; its own connect, send and receive, no backoff)"
    )?;
    writeln!(
        text,
        "  {:<24} {:>8} {:>10} {:>10} {:>10}",
        "outcome", "count", "p50", "p90", "p99"
    )?;
    for row in &report.latency {
        writeln!(
            text,
            "  {:<24} {:>8} {:>10.2} {:>10.2} {:>10.2}",
            row.category, row.count, row.p50, row.p90, row.p99
        )?;
    }

    let reconciliation = &report.reconciliation;
    writeln!(text)?;
    match &report.reconciliation_not_done {
        Some(reason) => writeln!(
            text,
            "Reconciliation: {} attempts, not done ({reason})",
            report.attempts
        )?,
        None => {
            writeln!(
                text,
                "Reconciliation: {} attempts, {} server entries",
                report.attempts, reconciliation.server_entries
            )?;
            writeln!(
                text,
                "  matched {}, not sent {}, transport errors logged {} / not logged {}",
                reconciliation.matched,
                reconciliation.not_sent,
                reconciliation.transport_logged,
                reconciliation.transport_unlogged
            )?;
        }
    }
    if let Restart::Yes(reason) = &report.restart {
        // Named here because it explains the entries missing below.
        writeln!(
            text,
            "  note: {reason}: its log in memory started over, so attempts before the restart \
             have no entry there"
        )?;
    }
    if !reconciliation.transport_logged_outcomes.is_empty() {
        let outcomes: Vec<String> = reconciliation
            .transport_logged_outcomes
            .iter()
            .map(|(outcome, count)| format!("{} {count}", visible(outcome)))
            .collect();
        writeln!(
            text,
            "  the server logged those transport errors as: {}",
            outcomes.join(", ")
        )?;
        if reconciliation
            .transport_logged_outcomes
            .contains_key("timeout")
        {
            writeln!(
                text,
                "  hint: the server closed hung requests before the client's timeout; \
                 give the server a longer --hang than the client's --timeout"
            )?;
        }
    }
    write_id_list(
        text,
        "missing on the server",
        &reconciliation.missing_on_server,
    )?;
    write_id_list(
        text,
        "unknown to the client",
        &reconciliation.unknown_to_client,
    )?;
    write_id_list(text, "logged more than once", &reconciliation.duplicates)?;
    if !reconciliation.mismatches.is_empty() {
        writeln!(
            text,
            "  outcome mismatches: {}",
            reconciliation.mismatches.len()
        )?;
        for mismatch in reconciliation.mismatches.iter().take(MAX_LISTED_IDS) {
            writeln!(
                text,
                "    {}: client {}, server {}",
                visible(&mismatch.request_id),
                visible(&mismatch.client),
                visible(&mismatch.server)
            )?;
        }
        let late = late_answers(&reconciliation.mismatches);
        if late > 0 {
            writeln!(
                text,
                "  note: {late} attempts timed out here but the server answered them: the \
                 answers came after --timeout (network delay or loss?): raise --timeout"
            )?;
        }
    }
    // The server's drops are named only to explain entries missing here.
    let missing = !reconciliation.missing_on_server.is_empty();
    match (report.dropped_by_server, report.dropped_since_run_began) {
        (0, _) => {}
        _ if !missing => {}
        (_, Some(during)) if during > 0 => writeln!(
            text,
            "  note: the server keeps only its newest entries in memory (its --log-capacity): \
             {during} logged since this run began were dropped before they were read, and \
             missing entries may be among them; raise its --log-capacity above the run's attempts"
        )?,
        (dropped, Some(_)) => writeln!(
            text,
            "  note: the server's log ring dropped {dropped} entries, all logged before this run \
             began: none of the missing ones is among them"
        )?,
        (dropped, None) => writeln!(
            text,
            "  note: the server's log ring dropped {dropped} entries; missing entries may be among \
             them"
        )?,
    }
    // A server answers 503 without logging past its --max-connections or while its log file
    // cannot be written, so those attempts are "missing" for a reason worth naming.
    let busy = report
        .attempt_other
        .get(&AttemptOutcome::OtherStatus(503).category())
        .copied()
        .unwrap_or(0);
    if busy > 0 && !reconciliation.missing_on_server.is_empty() {
        writeln!(
            text,
            "  note: {busy} attempts got 503, which the server does not log: past its \
             --max-connections it refuses a connection (lower --concurrency or raise it), and \
             while its log file cannot be written it refuses /getbalance (see its stderr)"
        )?;
    }

    writeln!(text)?;
    match report.verdict {
        Verdict::Pass => writeln!(text, "verdict: PASS"),
        Verdict::Fail => writeln!(
            text,
            "verdict: FAIL ({})",
            report.verdict_reasons.join("; ")
        ),
    }
}

fn write_string_array(out: &mut String, items: &[String]) {
    let mut array = ArrayWriter::new(out);
    for item in items {
        array.string(item);
    }
    array.finish();
}

fn write_count_object(out: &mut String, counts: &BTreeMap<String, u64>) {
    let mut object = ObjectWriter::new(out);
    for (category, count) in counts {
        object.u64(category, *count);
    }
    object.finish();
}

fn write_outcome_counts(out: &mut String, rows: &[DistributionRow]) {
    let mut object = ObjectWriter::new(out);
    for row in rows {
        object.u64(row.outcome.name(), row.actual_count);
    }
    object.finish();
}

fn write_rows(out: &mut String, rows: &[DistributionRow]) {
    let mut array = ArrayWriter::new(out);
    for row in rows {
        let mut object = ObjectWriter::new(array.item());
        object
            .string("outcome", row.outcome.name())
            .f64("expected_probability", row.expected_probability)
            .f64("expected_count", row.expected_count)
            .u64("actual_count", row.actual_count)
            .f64("actual_proportion", row.actual_proportion)
            .f64("interval_low", row.interval.0)
            .f64("interval_high", row.interval.1);
        object.finish();
    }
    array.finish();
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `--json` document: one object with these members.
///
/// - `version`: the client's version.
/// - `run_id`: the hex run id; every request id is `<run_id>-<request>-<attempt>`.
/// - `target`: the address connected to, e.g. `127.0.0.1:8080`.
/// - `configuration`: `host`, `port`, `count`, `concurrency`, `timeout_ms`, `retries`,
///   `retry_on` (outcome names), `backoff_ms`, `max_backoff_ms`, `interval_ms`,
///   `tolerance_points` (number or null).
/// - `server`: `seed` (number or null) and `probabilities` (outcome name → probability, from
///   `/stats` before the run), `restarted` (whether `/stats` after the run says the server
///   restarted meanwhile; null when it could not be read).
/// - `attempts`: `total`, `counts` (outcome name → count), `other` (category → count, for other
///   statuses like `status 404` and transport errors like `connection refused`), `draws` (the
///   attempts that are outcomes), `rows` (see below), `chi_square` (`statistic`,
///   `degrees_of_freedom`, `p_value`, `method`), `consistent` (p-value ≥ 0.05 and at least
///   one draw; false without a draw, whose chi-square is a trivial 0 with p-value 1),
///   `precision_points` (± half-width of the largest outcome's interval, or null).
/// - `requests`: `total` (requests with an attempt), `never_sent` (without one: the run stopped
///   early), `counts`, `other` (final outcomes; `retry dropped` for a request whose retry the
///   early stop gave up), `draws`, `rows` (expected from the retry theory), `mean_attempts`,
///   `expected_mean_attempts`.
/// - rows are objects: `outcome`, `expected_probability`, `expected_count`, `actual_count`,
///   `actual_proportion`, `interval_low`, `interval_high` (95% Wilson interval, proportions).
/// - `latency_ms`: array of `category`, `count`, `p50`, `p90`, `p99`.
/// - `elapsed_seconds` (wall time of all attempts, backoffs included), `attempts_per_second`.
/// - `stopped_early`: null, or, when the server became unreachable or stopped answering
///   mid-run, `cause` (`unreachable` or `stopped answering`), `failures_in_a_row`, `failure`
///   (the last: `connection refused`, `connect timeout`, `no route to host`, …, `timeout`),
///   `health_check` (why `/health` did not answer, or null), `requests_not_sent`,
///   `retries_dropped`.
/// - `reconciliation`: `server_entries`, `matched`, `not_sent`, `transport_logged`,
///   `transport_unlogged`, `transport_logged_outcomes` (server outcome → count for the logged
///   transport errors), `missing_on_server`, `unknown_to_client`, `duplicates` (arrays of request
///   ids), `mismatches` (array of `request_id`, `client`, `server`), `dropped_by_server`,
///   `dropped_since_run_began` (of those, the ones logged after the run's first `/stats`, or null),
///   `clean` (bool; false when not done), `done` (bool: the log could be read after the run),
///   `not_done_because` (why not, or null).
/// - `logs`: the shown server entries: `id`, `time`, `client_ip`, `outcome`, `status` (or null),
///   `request_id` (or null).
/// - `tolerance_violations`: outcome names whose interval lies outside expected ± tolerance.
/// - `verdict_reasons`: why the verdict failed, one line each as in the text report (nothing
///   to judge without a draw, a server that became unreachable, a reconciliation not done, a
///   restart, logs that disagree, hung requests closed by the server, tolerance violations);
///   empty on a pass.
/// - `verdict`: `pass` or `fail`.
pub fn write_json_report(report: &Report, options: &ClientOptions, out: &mut String) {
    let mut document = ObjectWriter::new(out);
    document
        .string("version", env!("CARGO_PKG_VERSION"))
        .string("run_id", &report.run_id)
        .string("target", &report.target);
    {
        let mut configuration = ObjectWriter::new(document.key("configuration"));
        configuration
            .string("host", &options.host)
            .u64("port", u64::from(options.port))
            .u64("count", options.count)
            .u64("concurrency", options.concurrency as u64)
            .f64("timeout_ms", milliseconds(options.timeout))
            .u64("retries", u64::from(options.retries));
        let names: Vec<String> = options
            .retry_on
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        write_string_array(configuration.key("retry_on"), &names);
        configuration
            .f64("backoff_ms", milliseconds(options.backoff))
            .f64("max_backoff_ms", milliseconds(options.max_backoff))
            .f64("interval_ms", milliseconds(options.interval));
        match options.tolerance {
            Some(tolerance) => configuration.f64("tolerance_points", tolerance),
            None => configuration.null("tolerance_points"),
        };
        configuration.finish();
    }
    {
        let mut server = ObjectWriter::new(document.key("server"));
        match report.seed {
            Some(seed) => server.u64("seed", seed),
            None => server.null("seed"),
        };
        {
            let mut probabilities = ObjectWriter::new(server.key("probabilities"));
            for outcome in Outcome::ALL {
                probabilities.f64(outcome.name(), report.probabilities[outcome.index()]);
            }
            probabilities.finish();
        }
        match &report.restart {
            Restart::Unknown => server.null("restarted"),
            Restart::No => server.bool("restarted", false),
            Restart::Yes(_) => server.bool("restarted", true),
        };
        server.finish();
    }
    {
        let mut attempts = ObjectWriter::new(document.key("attempts"));
        attempts.u64("total", report.attempts);
        write_outcome_counts(attempts.key("counts"), &report.attempt_rows);
        write_count_object(attempts.key("other"), &report.attempt_other);
        attempts.u64("draws", report.attempt_draws);
        write_rows(attempts.key("rows"), &report.attempt_rows);
        {
            let mut fit = ObjectWriter::new(attempts.key("chi_square"));
            fit.f64("statistic", report.fit.statistic)
                .u64(
                    "degrees_of_freedom",
                    u64::from(report.fit.degrees_of_freedom),
                )
                .f64("p_value", report.fit.p_value)
                .string("method", report.fit.method.name());
            fit.finish();
        }
        attempts.bool("consistent", is_consistent(report));
        match &report.precision {
            Some(precision) => attempts.f64("precision_points", precision.half_width_points),
            None => attempts.null("precision_points"),
        };
        attempts.finish();
    }
    {
        let mut requests = ObjectWriter::new(document.key("requests"));
        requests
            .u64("total", report.requests)
            .u64("never_sent", report.requests_never_sent);
        write_outcome_counts(requests.key("counts"), &report.request_rows);
        write_count_object(requests.key("other"), &report.request_other);
        requests.u64("draws", report.request_draws);
        write_rows(requests.key("rows"), &report.request_rows);
        requests
            .f64("mean_attempts", report.mean_attempts)
            .f64("expected_mean_attempts", report.expected_mean_attempts);
        requests.finish();
    }
    {
        let mut latency = ArrayWriter::new(document.key("latency_ms"));
        for row in &report.latency {
            let mut object = ObjectWriter::new(latency.item());
            object
                .string("category", &row.category)
                .u64("count", row.count)
                .f64("p50", row.p50)
                .f64("p90", row.p90)
                .f64("p99", row.p99);
            object.finish();
        }
        latency.finish();
    }
    let seconds = report.elapsed.as_secs_f64();
    document.f64("elapsed_seconds", seconds).f64(
        "attempts_per_second",
        if seconds > 0.0 {
            report.attempts as f64 / seconds
        } else {
            0.0
        },
    );
    match &report.stopped {
        Some(cause) => {
            let mut stopped = ObjectWriter::new(document.key("stopped_early"));
            stopped
                .string(
                    "cause",
                    match cause.health_failure {
                        None => "unreachable",
                        Some(_) => "stopped answering",
                    },
                )
                .u64("failures_in_a_row", cause.failures_in_a_row)
                .string("failure", cause.failure)
                .optional_string("health_check", cause.health_failure.as_deref())
                .u64("requests_not_sent", report.requests_never_sent)
                .u64("retries_dropped", report.retries_dropped);
            stopped.finish();
        }
        None => {
            document.null("stopped_early");
        }
    }
    {
        let reconciliation = &report.reconciliation;
        let mut object = ObjectWriter::new(document.key("reconciliation"));
        object
            .u64("server_entries", reconciliation.server_entries)
            .u64("matched", reconciliation.matched)
            .u64("not_sent", reconciliation.not_sent)
            .u64("transport_logged", reconciliation.transport_logged)
            .u64("transport_unlogged", reconciliation.transport_unlogged);
        write_count_object(
            object.key("transport_logged_outcomes"),
            &reconciliation.transport_logged_outcomes,
        );
        write_string_array(
            object.key("missing_on_server"),
            &reconciliation.missing_on_server,
        );
        write_string_array(
            object.key("unknown_to_client"),
            &reconciliation.unknown_to_client,
        );
        write_string_array(object.key("duplicates"), &reconciliation.duplicates);
        {
            let mut mismatches = ArrayWriter::new(object.key("mismatches"));
            for mismatch in &reconciliation.mismatches {
                let mut item = ObjectWriter::new(mismatches.item());
                item.string("request_id", &mismatch.request_id)
                    .string("client", &mismatch.client)
                    .string("server", &mismatch.server);
                item.finish();
            }
            mismatches.finish();
        }
        let done = report.reconciliation_not_done.is_none();
        object
            .u64("dropped_by_server", report.dropped_by_server)
            .optional_u64("dropped_since_run_began", report.dropped_since_run_began)
            .bool("clean", done && reconciliation.is_clean())
            .bool("done", done)
            .optional_string(
                "not_done_because",
                report.reconciliation_not_done.as_deref(),
            );
        object.finish();
    }
    {
        let mut logs = ArrayWriter::new(document.key("logs"));
        for entry in &report.shown_entries {
            let mut object = ObjectWriter::new(logs.item());
            object
                .u64("id", entry.id)
                .string("time", &entry.time)
                .string("client_ip", &entry.client_ip)
                .string("outcome", &entry.outcome);
            match entry.status {
                Some(status) => object.u64("status", u64::from(status)),
                None => object.null("status"),
            };
            object.optional_string("request_id", entry.request_id.as_deref());
            object.finish();
        }
        logs.finish();
    }
    let violations: Vec<String> = report
        .tolerance_violations
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    write_string_array(document.key("tolerance_violations"), &violations);
    write_string_array(document.key("verdict_reasons"), &report.verdict_reasons);
    document.string(
        "verdict",
        match report.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        },
    );
    document.finish();
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ShowLogs;
    use crate::client::test_support::{attempt, entry, report_of, synthetic_report};
    use crate::client::wire::TransportError;
    use crate::json::{self, Value};

    #[test]
    fn bars_show_every_cell_of_the_actual_share_with_the_marker_between_cells() {
        let cases = [
            // The audit's case: 10.0% and 13.4% against 10% drew the same `####|`.
            (0.100, 0.1, "####|".to_string()),
            (0.134, 0.1, "####|#".to_string()),
            (0.05, 0.1, "##  |".to_string()),
            (0.0, 0.25, format!("{}|", " ".repeat(BAR_WIDTH / 4))),
            (0.1, 0.0, format!("|{}", "#".repeat(BAR_WIDTH / 10))),
            (
                1.0,
                0.5,
                format!(
                    "{}|{}",
                    "#".repeat(BAR_WIDTH / 2),
                    "#".repeat(BAR_WIDTH / 2)
                ),
            ),
            (1.0, 1.0, format!("{}|", "#".repeat(BAR_WIDTH))),
            (2.0, 2.0, format!("{}|", "#".repeat(BAR_WIDTH))),
            (f64::NAN, 0.5, format!("{}|", " ".repeat(BAR_WIDTH / 2))),
        ];
        for (actual, expected, drawn) in cases {
            assert_eq!(bar(actual, expected), drawn, "{actual} against {expected}");
        }
        // Whatever the expectation, each cell of the actual share shows: bars one cell apart
        // differ, and there is exactly one marker.
        for marker in 0..=BAR_WIDTH {
            let expected = marker as f64 / BAR_WIDTH as f64;
            for filled in 0..=BAR_WIDTH {
                let drawn = bar(filled as f64 / BAR_WIDTH as f64, expected);
                assert_eq!(drawn.matches('#').count(), filled, "{drawn:?}");
                assert_eq!(drawn.matches('|').count(), 1, "{drawn:?}");
                assert!(drawn.chars().count() <= BAR_WIDTH + 1, "{drawn:?}");
            }
        }
    }

    #[test]
    fn server_text_shows_controls_and_invisible_format_characters_as_escapes() {
        let cases = [
            ("127.0.0.1", "127.0.0.1"),
            ("ab12cd34-7-1", "ab12cd34-7-1"),
            ("Grüße, 世界 😀 ﬁ", "Grüße, 世界 😀 ﬁ"),
            ("\x1b[31mRED\x1b[0m", "\\u{1b}[31mRED\\u{1b}[0m"),
            (
                "\0\x01\x07\t\n\r\x1f",
                "\\u{0}\\u{1}\\u{7}\\u{9}\\u{a}\\u{d}\\u{1f}",
            ),
            ("del\x7f", "del\\u{7f}"),
            // C1 controls, CSI among them.
            (
                "\u{80}\u{85}\u{9b}31m\u{9f}",
                "\\u{80}\\u{85}\\u{9b}31m\\u{9f}",
            ),
            // Bidi marks, embeddings, overrides and isolates.
            ("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}"),
            ("a\u{202a}b\u{202e}c", "a\\u{202a}b\\u{202e}c"),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            // Invisible: zero widths, joiners, separators, BOM, soft hyphen, tags, fillers.
            (
                "\u{200b}\u{200d}\u{2060}\u{feff}\u{ad}",
                "\\u{200b}\\u{200d}\\u{2060}\\u{feff}\\u{ad}",
            ),
            ("\u{2028}\u{2029}", "\\u{2028}\\u{2029}"),
            (
                "\u{e0041}\u{e007f}\u{3164}\u{fe0f}",
                "\\u{e0041}\\u{e007f}\\u{3164}\\u{fe0f}",
            ),
            // A backslash is doubled, so no text can pass for an escape.
            ("\\u{1b}", "\\\\u{1b}"),
            ("", ""),
        ];
        for (raw, shown) in cases {
            assert_eq!(visible(raw).to_string(), shown, "{raw:?}");
        }
        for code in (0..0x20).chain(0x7f..0xa0) {
            let control = char::from_u32(code).unwrap().to_string();
            assert_eq!(visible(&control).to_string(), format!("\\u{{{code:x}}}"));
        }
        // Sorted and apart, as the binary search needs.
        for pair in INVISIBLE_CHARACTERS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        for range in INVISIBLE_CHARACTERS {
            for character in [range.0, range.1] {
                let raw = character.to_string();
                assert!(visible(&raw).to_string().starts_with("\\u{"), "{raw:?}");
            }
        }
    }

    #[test]
    fn the_text_report_escapes_every_server_string_and_json_keeps_them_exact() {
        use AttemptOutcome::{Server, Transport};
        let hostile_time = "2024\n\r\x07\u{1b}[2J";
        let hostile_ip = "\u{1}\u{2029}\u{202e}";
        let injected = "feed0123-\u{9b}31mINJECT\u{9b}0m\u{202e}-1";
        let attempts = [
            attempt(1, 1, Server(Outcome::Balance), true),
            attempt(2, 1, Transport(TransportError::ClosedBeforeResponse), true),
            attempt(3, 1, Transport(TransportError::ConnectionRefused), false),
        ];
        let mut entries = vec![
            entry(1, Some("feed0123-1-1"), "2\u{1b}[0m00"),
            entry(2, Some("feed0123-2-1"), "time\u{200f}out\x7f"),
            entry(3, Some(injected), "200"),
        ];
        entries[2].time = hostile_time.into();
        entries[2].client_ip = hostile_ip.into();
        let options = ClientOptions {
            show_logs: ShowLogs::All,
            ..ClientOptions::default()
        };
        let report = report_of(&options, &attempts, entries);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        let escaped_id = "feed0123-\\u{9b}31mINJECT\\u{9b}0m\\u{202e}-1";
        for expected in [
            // The shown log: time, address, outcome and request id.
            format!(
                "  2024\\u{{a}}\\u{{d}}\\u{{7}}\\u{{1b}}[2J - \\u{{1}}\\u{{2029}}\\u{{202e}} - \
                 200 OK  [{escaped_id}]\n"
            ),
            "- 127.0.0.1 - 2\\u{1b}[0m00  [feed0123-1-1]\n".into(),
            // Entries the client never sent, mismatches, and what the server logged.
            format!("unknown to the client: 1 ({escaped_id})\n"),
            "feed0123-1-1: client 200, server 2\\u{1b}[0m00\n".into(),
            "logged those transport errors as: time\\u{200f}out\\u{7f} 1\n".into(),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in\n{text}");
        }
        let raw = ['\0', '\r', '\x07', '\x1b', '\x7f', '\u{1}', '\u{9b}'];
        let invisible = ['\u{200f}', '\u{202e}', '\u{2029}'];
        for character in raw.iter().chain(&invisible) {
            assert!(!text.contains(*character), "raw {character:?} in\n{text}");
        }

        // The JSON document escapes by its own rules and keeps every string exact.
        let mut json_text = String::new();
        write_json_report(&report, &options, &mut json_text);
        let value = json::decode(&json_text).unwrap();
        let logs = value.get("logs").and_then(Value::as_array).unwrap();
        let injected_entry = &logs[2];
        assert_eq!(
            injected_entry.get("time").and_then(Value::as_str),
            Some(hostile_time)
        );
        assert_eq!(
            injected_entry.get("client_ip").and_then(Value::as_str),
            Some(hostile_ip)
        );
        assert_eq!(
            injected_entry.get("request_id").and_then(Value::as_str),
            Some(injected)
        );
    }

    #[test]
    fn id_lists_stop_at_the_listing_limit() {
        let ids: Vec<String> = (1..=MAX_LISTED_IDS + 3)
            .map(|n| format!("r-{n}-1"))
            .collect();
        let mut text = String::new();
        write_id_list(&mut text, "missing", &ids).unwrap();
        assert!(text.contains(&format!("r-{MAX_LISTED_IDS}-1")));
        assert!(!text.contains(&format!("r-{}-1", MAX_LISTED_IDS + 1)));
        assert!(text.contains("… 3 more"), "{text}");
    }

    #[test]
    fn text_report_has_the_expected_rows() {
        let options = ClientOptions {
            show_logs: ShowLogs::Last(2),
            ..ClientOptions::default()
        };
        let report = synthetic_report(&options);
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!(report.attempts, 120);
        assert_eq!(report.attempt_draws, 120);
        assert_eq!(report.reconciliation.matched, 120);
        assert_eq!(report.shown_entries.len(), 2);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        for expected in [
            "run feed0123 against 127.0.0.1:8080",
            "server seed 123",
            "Per attempt (each attempt is one draw): 120 attempts, 120 draws",
            "Per logical request",
            "mean attempts per request 1.200 (theory 1.248)",
            "matched 120, not sent 0",
            "- 127.0.0.1 - Timeout occurred  [feed0123-100-1]",
            "- 127.0.0.1 - 200 OK  [feed0123-100-2]",
            "the mix is consistent with the configured weights",
            "precision: with 120 attempts each percentage is known to about ±",
            "points; ~9,600 attempts give ±1",
            "verdict: PASS",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // Per attempt: 20 timeouts of 120 draws against an expected 24.
        let row = text
            .lines()
            .find(|line| line.trim_start().starts_with("timeout "))
            .unwrap();
        assert!(
            row.contains("20.0%") && row.contains("24.0") && row.contains("16.7%"),
            "{row}"
        );
    }

    #[test]
    fn timeouts_the_server_answered_get_a_note_to_raise_the_timeout() {
        use AttemptOutcome::Server;
        let attempts = [
            attempt(1, 1, Server(Outcome::Timeout), true),
            attempt(2, 1, Server(Outcome::Timeout), true),
            attempt(3, 1, Server(Outcome::Timeout), true),
            attempt(4, 1, Server(Outcome::ServerError), true),
        ];
        // The server answered two of the client's timeouts (late), logged the third as a
        // timeout too, and the 500 as a 200: that one is no late answer.
        let entries = vec![
            entry(1, Some("feed0123-1-1"), "200"),
            entry(2, Some("feed0123-2-1"), "403"),
            entry(3, Some("feed0123-3-1"), "timeout"),
            entry(4, Some("feed0123-4-1"), "200"),
        ];
        let options = ClientOptions::default();
        let report = report_of(&options, &attempts, entries);
        assert_eq!(late_answers(&report.reconciliation.mismatches), 2);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        assert!(
            text.contains(
                "\n  note: 2 attempts timed out here but the server answered them: the answers \
                 came after --timeout (network delay or loss?): raise --timeout\n"
            ),
            "{text}"
        );
        let faithful = synthetic_report(&options);
        let mut text = String::new();
        write_text_report(&faithful, &options, &mut text).unwrap();
        assert!(!text.contains("timed out here"), "{text}");
    }

    #[test]
    fn the_request_table_says_no_retries_when_there_are_none() {
        let cases = [
            (
                vec![],
                3,
                "Per logical request (final outcome (no retries)): 100 requests",
            ),
            (
                vec![Outcome::Timeout],
                0,
                "Per logical request (final outcome (no retries)): 100 requests",
            ),
            (
                vec![Outcome::Timeout],
                3,
                "Per logical request (final outcome after up to 3 retries): 100 requests",
            ),
        ];
        for (retry_on, retries, title) in cases {
            let options = ClientOptions {
                retry_on,
                retries,
                ..ClientOptions::default()
            };
            let mut text = String::new();
            write_text_report(&synthetic_report(&options), &options, &mut text).unwrap();
            assert!(
                text.contains(&format!("\n{title}\n")),
                "no {title:?} in\n{text}"
            );
        }
    }

    #[test]
    fn json_report_is_valid_json_with_the_documented_fields() {
        let options = ClientOptions::default();
        let report = synthetic_report(&options);
        let mut text = String::new();
        write_json_report(&report, &options, &mut text);
        let value = json::decode(&text).unwrap();
        for key in [
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
            "reconciliation",
            "logs",
            "tolerance_violations",
            "verdict_reasons",
            "verdict",
        ] {
            assert!(value.get(key).is_some(), "no {key} in {text}");
        }
        assert_eq!(value.get("verdict").and_then(Value::as_str), Some("pass"));
        assert_eq!(
            value.get("verdict_reasons").and_then(Value::as_array),
            Some(&[][..])
        );
        let consistent = value.get("attempts").and_then(|a| a.get("consistent"));
        assert_eq!(consistent, Some(&Value::Bool(true)));
        let attempts = value.get("attempts").unwrap();
        assert_eq!(attempts.get("total").and_then(Value::as_u64), Some(120));
        let counts = attempts.get("counts").unwrap();
        assert_eq!(counts.get("timeout").and_then(Value::as_u64), Some(20));
        assert_eq!(counts.get("200").and_then(Value::as_u64), Some(70));
        let rows = attempts.get("rows").and_then(Value::as_array).unwrap();
        assert_eq!(rows.len(), Outcome::COUNT);
        assert_eq!(
            attempts
                .get("chi_square")
                .and_then(|c| c.get("degrees_of_freedom"))
                .and_then(Value::as_u64),
            Some(3)
        );
        let configuration = value.get("configuration").unwrap();
        assert!(configuration.get("tolerance_points") == Some(&Value::Null));
        assert_eq!(
            value
                .get("reconciliation")
                .and_then(|r| r.get("matched"))
                .and_then(Value::as_u64),
            Some(120)
        );
    }

    #[test]
    fn huge_statistics_are_written_with_an_exponent() {
        assert_eq!(statistic_text(7.81473), "7.815");
        assert_eq!(statistic_text(123_456_789.0), "123456789.000");
        assert_eq!(statistic_text(2.5e300), "2.500e300");
        assert_eq!(statistic_text(f64::INFINITY), "inf");
    }
}
