//! The record envelope: what every flowctl record carries besides its payload.
//!
//! - Header `flowctl-event-type` (required): the protobuf message type of the payload, such as
//!   `raw_ledger_service.RawLedgerChunk`.
//! - Header `flowctl-schema-id` (optional): the id under which the payload's schema is
//!   registered, when the producer knows one.
//! - Key: the ledger sequence as a **decimal ASCII string** (`b"123456"`). Decimal rather than
//!   big-endian bytes so that `kcat` and the Kafka console tools show it as it is, and so that a
//!   key is never ambiguous (an 8-byte key is also a valid 8-digit number). Records with the same
//!   key land on the same partition, so everything about one ledger stays in order.

use std::fmt;

use crate::Error;

/// Header naming the payload's message type.
pub const HEADER_EVENT_TYPE: &str = "flowctl-event-type";
/// Header naming the payload's registered schema.
pub const HEADER_SCHEMA_ID: &str = "flowctl-schema-id";

/// Kafka record headers in their wire order. Kafka allows a name more than once; [`get`]
/// returns the last value, so a later header overrides an earlier one.
///
/// [`get`]: Headers::get
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The last value of header `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The last value of header `name` as UTF-8; an error names the header.
    pub fn get_str(&self, name: &str) -> Result<Option<&str>, Error> {
        self.get(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| Error::BadHeader {
                    name: name.to_owned(),
                    value: String::from_utf8_lossy(v).into_owned(),
                    reason: "not valid UTF-8".to_owned(),
                })
            })
            .transpose()
    }

    /// The value of header `name`, which must be present and UTF-8.
    pub fn require_str(&self, name: &str) -> Result<&str, Error> {
        self.get_str(name)?.ok_or_else(|| Error::MissingHeader {
            name: name.to_owned(),
        })
    }

    /// Sets header `name`, replacing every earlier value of it.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), value.into()));
    }

    /// Appends a header without removing earlier values of the same name.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// The event type and schema id of a record (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_type: String,
    pub schema_id: Option<String>,
}

impl Envelope {
    pub fn new(event_type: impl Into<String>) -> Self {
        Envelope {
            event_type: event_type.into(),
            schema_id: None,
        }
    }

    pub fn with_schema_id(mut self, schema_id: impl Into<String>) -> Self {
        self.schema_id = Some(schema_id.into());
        self
    }

    /// Writes the envelope headers into `headers`, replacing earlier values.
    pub fn write_to(&self, headers: &mut Headers) {
        headers.set(HEADER_EVENT_TYPE, self.event_type.as_bytes());
        match &self.schema_id {
            Some(id) => headers.set(HEADER_SCHEMA_ID, id.as_bytes()),
            None => headers.0.retain(|(n, _)| n != HEADER_SCHEMA_ID),
        }
    }

    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        self.write_to(&mut h);
        h
    }

    /// Reads the envelope; the event type must be present and non-empty.
    pub fn from_headers(headers: &Headers) -> Result<Self, Error> {
        let event_type = headers.require_str(HEADER_EVENT_TYPE)?;
        if event_type.is_empty() {
            return Err(Error::BadHeader {
                name: HEADER_EVENT_TYPE.to_owned(),
                value: String::new(),
                reason: "empty".to_owned(),
            });
        }
        let schema_id = headers
            .get_str(HEADER_SCHEMA_ID)?
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(Envelope {
            event_type: event_type.to_owned(),
            schema_id,
        })
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema_id {
            Some(id) => write!(f, "{} (schema {id})", self.event_type),
            None => f.write_str(&self.event_type),
        }
    }
}

/// The record key of ledger `sequence`: its decimal digits.
pub fn ledger_key(sequence: u64) -> Vec<u8> {
    sequence.to_string().into_bytes()
}

/// Parses a key written by [`ledger_key`]. An error says what the key was.
pub fn parse_ledger_key(key: &[u8]) -> Result<u64, Error> {
    let bad = |reason: &str| Error::BadKey {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    };
    let s = std::str::from_utf8(key).map_err(|_| bad("not valid UTF-8"))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected the ledger sequence as decimal digits"));
    }
    s.parse().map_err(|_| bad("out of range for a u64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_through_headers() {
        let e = Envelope::new("token_transfer.TokenTransferEvent").with_schema_id("7");
        assert_eq!(Envelope::from_headers(&e.to_headers()).unwrap(), e);
        let bare = Envelope::new("x.Y");
        assert_eq!(Envelope::from_headers(&bare.to_headers()).unwrap(), bare);
    }

    #[test]
    fn missing_event_type_names_the_header() {
        let err = Envelope::from_headers(&Headers::new()).unwrap_err();
        assert_eq!(err.to_string(), "missing header flowctl-event-type");
    }

    #[test]
    fn later_header_overrides_earlier() {
        let mut h = Headers::new();
        h.push("a", "1");
        h.push("a", "2");
        assert_eq!(h.get("a"), Some(&b"2"[..]));
        h.set("a", "3");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn ledger_keys_are_decimal() {
        assert_eq!(ledger_key(123_456), b"123456");
        assert_eq!(parse_ledger_key(b"123456").unwrap(), 123_456);
        assert!(parse_ledger_key(&42u64.to_be_bytes()).is_err());
        assert!(parse_ledger_key(b"").is_err());
        assert!(parse_ledger_key(b"-1").is_err());
        assert!(parse_ledger_key(b"99999999999999999999999").is_err());
    }
}
