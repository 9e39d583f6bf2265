//! Turning one input record into output records, as a pure function: no I/O, so the decision
//! (events or dead letter) is testable apart from Kafka.

use flowctl_bus::{Envelope, OutRecord, Record};
use prost::Message as _;
use stellar_live_source_datalake::{RawLedgerChunk, RAW_LEDGER_CHUNK_EVENT_TYPE};
use stellar_xdr::{LedgerCloseMeta, Limits, ReadXdr};

use crate::extract::{extract_events, ledger_sequence};
use crate::proto::{TokenTransferEvent, TOKEN_TRANSFER_EVENT_TYPE};

/// The deepest XDR nesting accepted from input; real ledgers stay far below it, and the limit
/// keeps a hostile record from exhausting the stack.
const XDR_DEPTH_LIMIT: u32 = 500;

/// What the processing of one record needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessOptions {
    pub output_topic: String,
    pub schema_id: Option<String>,
    /// The fraction of ledgers failed on purpose (see [`fails_injected`]).
    pub fail_fraction: f64,
}

/// The result of processing one input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The ledger's events, in order (possibly none).
    Events {
        ledger: u32,
        records: Vec<OutRecord>,
    },
    /// The record cannot be processed; it goes to the DLQ with this reason.
    Dead { reason: String },
}

/// Whether ledger `sequence` is failed on purpose when a `fraction` of ledgers is. The choice is
/// a hash of the sequence, so it is the same on every run and every replica, and a test can
/// predict it. `fraction <= 0` fails none, `fraction >= 1` fails all.
pub fn fails_injected(sequence: u32, fraction: f64) -> bool {
    if fraction <= 0.0 || fraction.is_nan() {
        return false;
    }
    // SplitMix64's finalizer: consecutive sequences map to unrelated values.
    let mut z = u64::from(sequence) ^ 0x7A11_F0C7_D1C3_0000;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The top 53 bits as a uniform number in [0, 1).
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    u < fraction
}

/// Decides what `record` becomes.
pub fn process(record: &Record, options: &ProcessOptions) -> Outcome {
    match try_process(record, options) {
        Ok(o) => o,
        Err(reason) => Outcome::Dead { reason },
    }
}

fn try_process(record: &Record, options: &ProcessOptions) -> Result<Outcome, String> {
    let envelope = record.envelope().map_err(|e| e.to_string())?;
    if envelope.event_type != RAW_LEDGER_CHUNK_EVENT_TYPE {
        return Err(format!(
            "unexpected event type {:?} (expected {RAW_LEDGER_CHUNK_EVENT_TYPE})",
            envelope.event_type
        ));
    }
    let payload = record.payload.as_deref().unwrap_or_default();
    let chunk =
        RawLedgerChunk::decode(payload).map_err(|e| format!("bad RawLedgerChunk protobuf: {e}"))?;
    if fails_injected(chunk.start_ledger, options.fail_fraction) {
        return Err(format!(
            "injected failure for ledger {} (TTP_FAIL_FRACTION={})",
            chunk.start_ledger, options.fail_fraction
        ));
    }
    let limits = Limits {
        depth: XDR_DEPTH_LIMIT,
        len: chunk.ledger_close_meta_xdr.len(),
    };
    let meta = LedgerCloseMeta::from_xdr(&chunk.ledger_close_meta_xdr, limits).map_err(|e| {
        format!(
            "bad LedgerCloseMeta XDR for ledger {}: {e}",
            chunk.start_ledger
        )
    })?;
    let ledger = ledger_sequence(&meta);
    let events = extract_events(&meta, &chunk.network_passphrase).map_err(|e| e.to_string())?;

    let mut out_envelope = Envelope::new(TOKEN_TRANSFER_EVENT_TYPE);
    out_envelope.schema_id = options.schema_id.clone();
    let records = events
        .iter()
        .map(|e| {
            OutRecord::new(
                &options.output_topic,
                TokenTransferEvent::from(e).encode_to_vec(),
            )
            .with_ledger_key(u64::from(ledger))
            .with_envelope(&out_envelope)
        })
        .collect();
    Ok(Outcome::Events { ledger, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowctl_bus::Headers;
    use stellar_live_source_datalake::{ledger_record, Generator, SourceConfig};

    const TESTNET: &str = "Test SDF Network ; September 2015";

    fn options(fail_fraction: f64) -> ProcessOptions {
        ProcessOptions {
            output_topic: "out".into(),
            schema_id: None,
            fail_fraction,
        }
    }

    fn input(seq: u32) -> Record {
        let config =
            SourceConfig::from_vars(|k| (k == "OUTPUT_TOPIC").then(|| "in".to_owned())).unwrap();
        let out = ledger_record(&Generator::new(TESTNET).unwrap(), &config, seq).unwrap();
        Record {
            topic: out.topic,
            partition: 0,
            offset: 0,
            key: out.key,
            payload: Some(out.payload),
            headers: out.headers,
            timestamp_ms: None,
        }
    }

    #[test]
    fn failure_injection_is_deterministic_and_close_to_the_fraction() {
        let picked: Vec<u32> = (0..20_000).filter(|s| fails_injected(*s, 0.05)).collect();
        let again: Vec<u32> = (0..20_000).filter(|s| fails_injected(*s, 0.05)).collect();
        assert_eq!(picked, again);
        assert!(
            (800..1200).contains(&picked.len()),
            "{} of 20000",
            picked.len()
        );
        assert!(!(0..1000).any(|s| fails_injected(s, 0.0)));
        assert!((0..1000).all(|s| fails_injected(s, 1.0)));
    }

    #[test]
    fn a_ledger_becomes_its_events_keyed_by_sequence() {
        let g = Generator::new(TESTNET).unwrap();
        let Outcome::Events { ledger, records } = process(&input(42), &options(0.0)) else {
            panic!("not processed");
        };
        assert_eq!(ledger, 42);
        assert_eq!(records.len(), g.ledger(42).unwrap().events.len());
        for r in &records {
            assert_eq!(r.key.as_deref(), Some(&b"42"[..]));
            assert_eq!(
                Envelope::from_headers(&r.headers).unwrap().event_type,
                TOKEN_TRANSFER_EVENT_TYPE
            );
        }
    }

    #[test]
    fn bad_input_and_injected_failures_are_dead_letters() {
        let failing = (1..1000).find(|s| fails_injected(*s, 0.05)).unwrap();
        let Outcome::Dead { reason } = process(&input(failing), &options(0.05)) else {
            panic!("not failed");
        };
        assert!(reason.contains("injected failure"), "{reason}");

        let mut bad = input(7);
        let mut chunk = RawLedgerChunk::decode(bad.payload.as_deref().unwrap()).unwrap();
        chunk.ledger_close_meta_xdr.truncate(100);
        bad.payload = Some(chunk.encode_to_vec());
        let Outcome::Dead { reason } = process(&bad, &options(0.0)) else {
            panic!("not failed");
        };
        assert!(
            reason.starts_with("bad LedgerCloseMeta XDR for ledger 7"),
            "{reason}"
        );

        let mut no_envelope = input(7);
        no_envelope.headers = Headers::new();
        assert_eq!(
            process(&no_envelope, &options(0.0)),
            Outcome::Dead {
                reason: "missing header flowctl-event-type".into()
            }
        );
    }
}
