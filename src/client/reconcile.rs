//! Reconciliation: every attempt of the run against the server's log entries that carry its
//! request id. Pure, so every case is tested without a server.
//!
//! Invariant: each attempt lands in exactly one bucket (matched, not sent, transport error logged
//! or not, missing, mismatched, logged twice); entries without this run's prefix are ignored.
//!
//! Decisions worth knowing:
//! - An attempt that failed before its request was written ("not sent") has no server entry by
//!   right. One that failed after (reset, closed) may or may not have one, and either is accepted.

use super::admin::LogEntry;
use super::send::AttemptRecord;
use super::wire::{request_id, AttemptOutcome};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A client attempt and its server entry disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub request_id: String,
    /// What the client saw (`timeout`, `403`, … or `not sent (connection refused)`).
    pub client: String,
    /// The entry's outcome.
    pub server: String,
}

/// Attempts against entries, by request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Entries of this run on the server.
    pub server_entries: u64,
    /// Attempts whose one entry has the same outcome.
    pub matched: u64,
    /// Attempts that failed before the request was written and, rightly, have no entry.
    pub not_sent: u64,
    /// Transport failures after sending that the server logged (any outcome is accepted).
    pub transport_logged: u64,
    /// The server's outcomes for those, by name: `timeout` here means the server gave up on a
    /// hung request before the client's timeout (its `--hang` is shorter).
    pub transport_logged_outcomes: BTreeMap<String, u64>,
    /// Transport failures after sending that the server did not log (the request may never
    /// have arrived, e.g. a keep-alive connection the server was closing).
    pub transport_unlogged: u64,
    /// Answered or timed-out attempts with no entry.
    pub missing_on_server: Vec<String>,
    /// Entries with this run's prefix for requests the client never sent.
    pub unknown_to_client: Vec<String>,
    pub mismatches: Vec<Mismatch>,
    /// Request ids with more than one entry.
    pub duplicates: Vec<String>,
}

impl Reconciliation {
    /// Every attempt and every entry accounted for.
    pub fn is_clean(&self) -> bool {
        self.missing_on_server.is_empty()
            && self.unknown_to_client.is_empty()
            && self.mismatches.is_empty()
            && self.duplicates.is_empty()
    }
}

/// Matches every attempt with the entries carrying its request id. Entries without this run's
/// prefix are ignored; a request id the client sent twice cannot occur (ids are unique).
pub fn reconcile(run_id: &str, attempts: &[AttemptRecord], entries: &[LogEntry]) -> Reconciliation {
    let prefix = format!("{run_id}-");
    let mut by_id: HashMap<&str, Vec<&LogEntry>> = HashMap::new();
    let mut result = Reconciliation::default();
    for entry in entries {
        if let Some(id) = entry
            .request_id
            .as_deref()
            .filter(|id| id.starts_with(&prefix))
        {
            by_id.entry(id).or_default().push(entry);
            result.server_entries += 1;
        }
    }
    let mut sent_ids = HashSet::new();
    for attempt in attempts {
        let id = request_id(run_id, attempt.request, attempt.attempt);
        let found = by_id.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        match found {
            [] if !attempt.sent => result.not_sent += 1,
            [] if matches!(attempt.outcome, AttemptOutcome::Transport(_)) => {
                result.transport_unlogged += 1
            }
            [] => result.missing_on_server.push(id.clone()),
            [entry] if !attempt.sent => result.mismatches.push(Mismatch {
                request_id: id.clone(),
                client: format!("not sent ({})", attempt.outcome.category()),
                server: entry.outcome.clone(),
            }),
            [entry] if matches!(attempt.outcome, AttemptOutcome::Transport(_)) => {
                result.transport_logged += 1;
                *result
                    .transport_logged_outcomes
                    .entry(entry.outcome.clone())
                    .or_insert(0) += 1;
            }
            [entry] => {
                if outcome_matches(&attempt.outcome, entry) {
                    result.matched += 1;
                } else {
                    result.mismatches.push(Mismatch {
                        request_id: id.clone(),
                        client: attempt.outcome.category(),
                        server: entry.outcome.clone(),
                    });
                }
            }
            _ => result.duplicates.push(id.clone()),
        }
        sent_ids.insert(id);
    }
    let mut unknown: Vec<&LogEntry> = by_id
        .iter()
        .filter(|(id, _)| !sent_ids.contains(**id))
        .flat_map(|(_, found)| found.iter().copied())
        .collect();
    unknown.sort_by_key(|entry| entry.id);
    result.unknown_to_client = unknown
        .iter()
        .filter_map(|entry| entry.request_id.clone())
        .collect();
    result
}

fn outcome_matches(outcome: &AttemptOutcome, entry: &LogEntry) -> bool {
    match outcome {
        AttemptOutcome::Server(outcome) => entry.outcome == outcome.name(),
        AttemptOutcome::OtherStatus(status) => entry.status == Some(*status),
        AttemptOutcome::Transport(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::Outcome;
    use crate::client::test_support::{attempt, entry};
    use crate::client::wire::TransportError;

    #[test]
    fn reconciliation_sorts_every_attempt_and_entry_into_one_bucket() {
        use AttemptOutcome::{Server, Transport};
        let attempts = [
            attempt(1, 1, Server(Outcome::Timeout), true),
            attempt(1, 2, Server(Outcome::Balance), true),
            attempt(2, 1, Transport(TransportError::ConnectionRefused), false),
            attempt(2, 2, Server(Outcome::Forbidden), true),
            attempt(3, 1, Server(Outcome::ServerError), true),
            attempt(4, 1, Server(Outcome::Balance), true),
            attempt(5, 1, Transport(TransportError::ClosedBeforeResponse), true),
            attempt(5, 2, Transport(TransportError::ConnectionReset), true),
            attempt(5, 3, Server(Outcome::Balance), true),
            attempt(6, 1, Server(Outcome::Balance), true),
            attempt(7, 1, Transport(TransportError::ConnectTimeout), false),
        ];
        let entries = [
            entry(1, Some("r-1-1"), "timeout"),
            entry(2, Some("r-1-2"), "200"),
            entry(3, Some("r-2-2"), "403"),
            entry(4, Some("r-3-1"), "200"),
            // r-4-1 missing
            entry(5, Some("r-5-2"), "timeout"),
            entry(6, Some("r-5-3"), "200"),
            entry(7, Some("r-6-1"), "200"),
            entry(8, Some("r-6-1"), "200"),
            entry(9, Some("r-9-1"), "200"),
            entry(10, Some("r-7-1"), "403"),
            entry(11, Some("other-1-1"), "200"),
            entry(12, None, "200"),
        ];
        let result = reconcile("r", &attempts, &entries);
        assert_eq!(result.server_entries, 10);
        assert_eq!(result.matched, 4);
        assert_eq!(result.not_sent, 1);
        assert_eq!(result.transport_logged, 1);
        assert_eq!(
            result.transport_logged_outcomes,
            BTreeMap::from([("timeout".to_string(), 1)])
        );
        assert_eq!(result.transport_unlogged, 1);
        assert_eq!(result.missing_on_server, ["r-4-1"]);
        assert_eq!(result.unknown_to_client, ["r-9-1"]);
        assert_eq!(result.duplicates, ["r-6-1"]);
        assert_eq!(
            result.mismatches,
            [
                Mismatch {
                    request_id: "r-3-1".into(),
                    client: "500".into(),
                    server: "200".into()
                },
                Mismatch {
                    request_id: "r-7-1".into(),
                    client: "not sent (connect timeout)".into(),
                    server: "403".into()
                },
            ]
        );
        assert!(!result.is_clean());
        let total = result.matched
            + result.not_sent
            + result.transport_logged
            + result.transport_unlogged
            + (result.missing_on_server.len() + result.mismatches.len() + result.duplicates.len())
                as u64;
        assert_eq!(total, attempts.len() as u64);
    }

    #[test]
    fn a_faithful_log_reconciles_clean() {
        let attempts = [
            attempt(1, 1, AttemptOutcome::Server(Outcome::Balance), true),
            attempt(2, 1, AttemptOutcome::OtherStatus(404), true),
        ];
        let mut not_found = entry(2, Some("r-2-1"), "200");
        not_found.status = Some(404);
        let entries = [entry(1, Some("r-1-1"), "200"), not_found];
        let result = reconcile("r", &attempts, &entries);
        assert!(result.is_clean(), "{result:?}");
        assert_eq!(result.matched, 2);
        assert!(reconcile("r", &[], &[]).is_clean());
    }
}
