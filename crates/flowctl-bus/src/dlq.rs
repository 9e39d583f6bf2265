//! Dead-letter records. A record that a component cannot process goes to the pipeline's
//! dead-letter topic with its original key and payload, its envelope headers, and headers that
//! say what failed and where the record came from, so that it can be inspected and replayed.

use crate::envelope::{Envelope, Headers, HEADER_EVENT_TYPE};
use crate::{Error, OutRecord, Record};

/// Why the record failed, as one line of text.
pub const HEADER_ERROR: &str = "flowctl-error";
/// The component that failed to process it.
pub const HEADER_COMPONENT: &str = "flowctl-component";
/// Where the record was read from: topic, partition (decimal i32) and offset (decimal i64).
pub const HEADER_SOURCE_TOPIC: &str = "flowctl-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "flowctl-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "flowctl-source-offset";
/// How many times the component tried (decimal, at least 1).
pub const HEADER_ATTEMPT: &str = "flowctl-attempt";

/// The longest `flowctl-error` value kept, in bytes; longer messages are cut at a character
/// boundary, so that one pathological error cannot make the record too large to produce.
pub const MAX_ERROR_LEN: usize = 4096;

/// The metadata of a dead-letter record: its DLQ headers and the original envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqRecord {
    pub error: String,
    pub component: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub attempt: u32,
    /// The failed record's envelope, when it had a readable one. A record can land in the DLQ
    /// precisely because its envelope was bad, so this is optional.
    pub envelope: Option<Envelope>,
}

impl DlqRecord {
    /// Describes `failed`, read by `component`, failing on the first attempt with `error`.
    pub fn for_record(
        failed: &Record,
        component: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        DlqRecord {
            error: error.into(),
            component: component.into(),
            source_topic: failed.topic.clone(),
            source_partition: failed.partition,
            source_offset: failed.offset,
            attempt: 1,
            envelope: Envelope::from_headers(&failed.headers).ok(),
        }
    }

    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    pub fn to_headers(&self) -> Headers {
        let mut h = match &self.envelope {
            Some(e) => e.to_headers(),
            None => Headers::new(),
        };
        h.set(
            HEADER_ERROR,
            truncate(&self.error, MAX_ERROR_LEN).as_bytes(),
        );
        h.set(HEADER_COMPONENT, self.component.as_bytes());
        h.set(HEADER_SOURCE_TOPIC, self.source_topic.as_bytes());
        h.set(HEADER_SOURCE_PARTITION, self.source_partition.to_string());
        h.set(HEADER_SOURCE_OFFSET, self.source_offset.to_string());
        h.set(HEADER_ATTEMPT, self.attempt.to_string());
        h
    }

    /// Reads the DLQ headers. A missing or malformed header is an error naming it; the envelope
    /// is read only if `flowctl-event-type` is present.
    pub fn from_headers(headers: &Headers) -> Result<Self, Error> {
        let envelope = match headers.get(HEADER_EVENT_TYPE) {
            Some(_) => Some(Envelope::from_headers(headers)?),
            None => None,
        };
        Ok(DlqRecord {
            error: headers.require_str(HEADER_ERROR)?.to_owned(),
            component: headers.require_str(HEADER_COMPONENT)?.to_owned(),
            source_topic: headers.require_str(HEADER_SOURCE_TOPIC)?.to_owned(),
            source_partition: number(headers, HEADER_SOURCE_PARTITION, |p: &i32| *p >= 0)?,
            source_offset: number(headers, HEADER_SOURCE_OFFSET, |o: &i64| *o >= 0)?,
            attempt: number(headers, HEADER_ATTEMPT, |a: &u32| *a >= 1)?,
            envelope,
        })
    }

    /// The record to produce to `dlq_topic`: the failed record's key and payload with these
    /// headers.
    pub fn to_out_record(&self, dlq_topic: impl Into<String>, failed: &Record) -> OutRecord {
        OutRecord {
            topic: dlq_topic.into(),
            key: failed.key.clone(),
            payload: failed.payload.clone().unwrap_or_default(),
            headers: self.to_headers(),
        }
    }
}

fn number<T: std::str::FromStr>(
    headers: &Headers,
    name: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, Error> {
    let s = headers.require_str(name)?;
    match s.parse::<T>() {
        Ok(v) if valid(&v) => Ok(v),
        _ => Err(Error::BadHeader {
            name: name.to_owned(),
            value: s.to_owned(),
            reason: "expected a non-negative decimal number (attempt: at least 1)".to_owned(),
        }),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DlqRecord {
        DlqRecord {
            error: "bad XDR: unexpected end".to_owned(),
            component: "ttp-processor".to_owned(),
            source_topic: "flowctl.p.src".to_owned(),
            source_partition: 3,
            source_offset: 42,
            attempt: 1,
            envelope: Some(Envelope::new("raw_ledger_service.RawLedgerChunk").with_schema_id("1")),
        }
    }

    #[test]
    fn dlq_headers_round_trip() {
        let r = sample();
        assert_eq!(DlqRecord::from_headers(&r.to_headers()).unwrap(), r);
        let bare = DlqRecord {
            envelope: None,
            ..sample()
        };
        assert_eq!(DlqRecord::from_headers(&bare.to_headers()).unwrap(), bare);
    }

    #[test]
    fn a_missing_or_bad_header_is_named() {
        let mut h = sample().to_headers();
        h.set(HEADER_SOURCE_OFFSET, "-4");
        let err = DlqRecord::from_headers(&h).unwrap_err().to_string();
        assert!(
            err.contains("flowctl-source-offset") && err.contains("-4"),
            "{err}"
        );

        let h: Headers = sample()
            .to_headers()
            .iter()
            .filter(|(n, _)| *n != HEADER_COMPONENT)
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect();
        let err = DlqRecord::from_headers(&h).unwrap_err().to_string();
        assert_eq!(err, "missing header flowctl-component");

        let mut h = sample().to_headers();
        h.set(HEADER_ATTEMPT, "0");
        assert!(DlqRecord::from_headers(&h).is_err());
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let r = DlqRecord {
            error: "é".repeat(MAX_ERROR_LEN),
            ..sample()
        };
        let back = DlqRecord::from_headers(&r.to_headers()).unwrap();
        assert!(back.error.len() <= MAX_ERROR_LEN);
        assert!(back.error.chars().all(|c| c == 'é'));
    }
}
