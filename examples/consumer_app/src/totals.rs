//! Running totals of token events: pure bookkeeping, no I/O.

use std::collections::BTreeMap;

use serde::Serialize;
use stellar_live_source_datalake::TokenEvent;

/// What the consumer has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub events_total: u64,
    /// Events per kind (`transfer`, `mint`, `burn`, `clawback`, `fee`).
    pub events_by_kind: BTreeMap<String, u64>,
    /// Per asset, the sum of amounts per kind (fees net of refunds).
    pub amounts: BTreeMap<String, BTreeMap<String, i128>>,
    /// Ledgers with at least one event.
    pub ledgers_seen: u64,
    /// The highest ledger seen.
    pub last_ledger: u32,
    /// Records that could not be decoded (sent to the DLQ when one is configured).
    pub undecodable: u64,
    /// The last ledger per input partition: a new ledger starts when it changes. All events of
    /// one ledger share its key, so they arrive together on one partition.
    last_per_partition: BTreeMap<(String, i32), u32>,
}

/// [`Totals`] as JSON: amounts are decimal strings, since i128 does not fit a JSON number.
#[derive(Debug, Serialize)]
struct TotalsJson<'a> {
    events_total: u64,
    events_by_kind: &'a BTreeMap<String, u64>,
    amounts: BTreeMap<&'a str, BTreeMap<&'a str, String>>,
    ledgers_seen: u64,
    last_ledger: u32,
    undecodable: u64,
}

impl Totals {
    /// Counts `event`, read from `partition` of `topic`.
    pub fn apply(&mut self, topic: &str, partition: i32, event: &TokenEvent) {
        let kind = event.kind.name();
        self.events_total += 1;
        *self.events_by_kind.entry(kind.to_owned()).or_default() += 1;
        *self
            .amounts
            .entry(event.asset.clone())
            .or_default()
            .entry(kind.to_owned())
            .or_default() += event.amount;
        let key = (topic.to_owned(), partition);
        if self.last_per_partition.get(&key) != Some(&event.ledger_sequence) {
            self.ledgers_seen += 1;
            self.last_per_partition.insert(key, event.ledger_sequence);
        }
        self.last_ledger = self.last_ledger.max(event.ledger_sequence);
    }

    /// The totals of `events` read in order from one partition (what a test expects).
    pub fn of_events<'a>(events: impl IntoIterator<Item = &'a TokenEvent>) -> Self {
        let mut t = Totals::default();
        for e in events {
            t.apply("", 0, e);
        }
        t
    }

    /// The totals without the per-partition bookkeeping, for comparing runs that read from
    /// different partitions.
    pub fn summary(&self) -> Self {
        Totals {
            last_per_partition: BTreeMap::new(),
            ..self.clone()
        }
    }

    pub fn to_json(&self) -> String {
        let json = TotalsJson {
            events_total: self.events_total,
            events_by_kind: &self.events_by_kind,
            amounts: self
                .amounts
                .iter()
                .map(|(asset, kinds)| {
                    (
                        asset.as_str(),
                        kinds
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.to_string()))
                            .collect(),
                    )
                })
                .collect(),
            ledgers_seen: self.ledgers_seen,
            last_ledger: self.last_ledger,
            undecodable: self.undecodable,
        };
        // Serializing maps of strings and numbers cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// One log line.
    pub fn summary_line(&self) -> String {
        let kinds: Vec<String> = self
            .events_by_kind
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "{} events ({}) in {} ledgers, last ledger {}, {} assets, {} undecodable",
            self.events_total,
            kinds.join(" "),
            self.ledgers_seen,
            self.last_ledger,
            self.amounts.len(),
            self.undecodable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_live_source_datalake::TokenEventKind;

    fn event(ledger: u32, kind: TokenEventKind, asset: &str, amount: i128) -> TokenEvent {
        TokenEvent {
            ledger_sequence: ledger,
            closed_at_unix: 0,
            tx_hash: String::new(),
            transaction_index: 1,
            operation_index: 0,
            contract_address: String::new(),
            kind,
            asset: asset.into(),
            amount,
        }
    }

    #[test]
    fn totals_count_kinds_sum_amounts_and_ledgers() {
        let fee = || TokenEventKind::Fee { from: "G".into() };
        let events = [
            event(5, fee(), "native", 300),
            event(5, TokenEventKind::Mint { to: "G".into() }, "USDC:G", 10),
            event(5, fee(), "native", -100),
            event(6, TokenEventKind::Burn { from: "G".into() }, "USDC:G", 4),
        ];
        let t = Totals::of_events(&events);
        assert_eq!(t.events_total, 4);
        assert_eq!(t.events_by_kind["fee"], 2);
        assert_eq!(t.amounts["native"]["fee"], 200);
        assert_eq!(t.amounts["USDC:G"]["burn"], 4);
        assert_eq!((t.ledgers_seen, t.last_ledger), (2, 6));
        let json: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(json["amounts"]["native"]["fee"], "200");
        assert_eq!(json["ledgers_seen"], 2);
    }

    #[test]
    fn ledgers_on_different_partitions_are_counted_once_each() {
        let fee = || TokenEventKind::Fee { from: "G".into() };
        let mut t = Totals::default();
        t.apply("t", 0, &event(1, fee(), "native", 1));
        t.apply("t", 1, &event(2, fee(), "native", 1));
        t.apply("t", 0, &event(1, fee(), "native", 1));
        t.apply("t", 1, &event(3, fee(), "native", 1));
        assert_eq!(t.ledgers_seen, 3);
    }
}
