//! Versioned encodings of everything this crate persists or sends between nodes.
//!
//! Each encoding is one version byte followed by a body:
//! - version 1: JSON. Written by releases before the binary codec; still decoded, so that
//!   data dirs (logs, snapshots, state records) written by them open.
//! - version 2: MessagePack with field names (`rmp_serde::to_vec_named`). Written now. It
//!   copies strings (pipeline documents, schemas) as they are instead of escaping them, and
//!   numbers as binary; field names are kept so that `#[serde(default)]` and
//!   `skip_serializing_if` fields, added over time, keep working exactly as in JSON.
//!
//! Changing an encoding means a new version byte and a new golden-bytes test; decoders of
//! every earlier version stay.

use crate::{Command, Outcome, PipelineRecord, State};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU8, Ordering};

/// Version byte of the JSON encodings (decoded, no longer written).
pub const V1: u8 = 1;
/// Version byte of the MessagePack encodings (written).
pub const V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty encoding of {what}")]
    Empty { what: &'static str },
    #[error("unknown encoding version {version} of {what}")]
    UnknownVersion { what: &'static str, version: u8 },
    #[error("cannot encode or decode {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    #[error("cannot decode {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
}

/// Deepest nesting a version-2 body may have (serde_json's limit for version 1).
const MAX_DEPTH: usize = 128;

/// The version [`encode`] writes: [`V2`] unless the node was started to keep writing
/// [`V1`] (`flowctl server --codec-version 1`), which a cluster being upgraded from a release
/// before version 2 needs until every member runs this one (those releases cannot read
/// version 2).
static WRITE_VERSION: AtomicU8 = AtomicU8::new(V2);

/// Sets the version [`encode`] writes, for the whole process: 1 or 2.
pub fn set_write_version(version: u8) -> Result<(), String> {
    match version {
        V1 | V2 => {
            WRITE_VERSION.store(version, Ordering::Relaxed);
            Ok(())
        }
        v => Err(format!("codec version {v}: this release writes 1 or 2")),
    }
}

/// The version [`encode`] writes.
pub fn write_version() -> u8 {
    WRITE_VERSION.load(Ordering::Relaxed)
}

/// Encodes any serde value with the framing of [`write_version`] (version 2 by default).
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    if write_version() == V1 {
        return encode_v1(what, value);
    }
    let mut out = Vec::with_capacity(128);
    out.push(V2);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .map_err(|source| Error::Encode { what, source })?;
    Ok(out)
}

/// Encodes with the version-1 (JSON) framing: what releases before version 2 wrote. Kept
/// for tests of the old format and for tools that want a readable dump.
pub fn encode_v1<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![V1];
    serde_json::to_writer(&mut out, value).map_err(|source| Error::Json { what, source })?;
    Ok(out)
}

/// Decodes a value written by [`encode`] or by an earlier release's [`encode_v1`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        None => Err(Error::Empty { what }),
        Some((&V2, body)) => {
            // A reader (not a borrowed slice): it grows a string as its bytes arrive, so a
            // length prefix larger than the input allocates nothing. Nesting is limited as
            // serde_json limits it.
            let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
            de.set_max_depth(MAX_DEPTH);
            let v = T::deserialize(&mut de).map_err(|source| Error::Decode { what, source })?;
            if de.position() as usize != body.len() {
                return Err(Error::Decode {
                    what,
                    source: rmp_serde::decode::Error::Syntax(format!(
                        "{} bytes after the value",
                        body.len() - de.position() as usize
                    )),
                });
            }
            Ok(v)
        }
        Some((&V1, body)) => {
            serde_json::from_slice(body).map_err(|source| Error::Json { what, source })
        }
        Some((&version, _)) => Err(Error::UnknownVersion { what, version }),
    }
}

pub fn encode_command(c: &Command) -> Result<Vec<u8>, Error> {
    encode("command", c)
}

pub fn decode_command(b: &[u8]) -> Result<Command, Error> {
    decode("command", b)
}

pub fn encode_outcome(o: &Outcome) -> Result<Vec<u8>, Error> {
    encode("outcome", o)
}

pub fn decode_outcome(b: &[u8]) -> Result<Outcome, Error> {
    decode("outcome", b)
}

pub fn encode_state(s: &State) -> Result<Vec<u8>, Error> {
    encode("state", s)
}

pub fn decode_state(b: &[u8]) -> Result<State, Error> {
    decode("state", b)
}

pub fn encode_pipeline(p: &PipelineRecord) -> Result<Vec<u8>, Error> {
    encode("pipeline record", p)
}

pub fn decode_pipeline(b: &[u8]) -> Result<PipelineRecord, Error> {
    decode("pipeline record", b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::ApplyPipeline;
    use crate::PipelineId;

    fn sample_command() -> Command {
        Command::ApplyPipeline(ApplyPipeline {
            name: "demo".into(),
            id_if_new: PipelineId::from_random(0xabcdef),
            spec_yaml: "kind: Pipeline\n".into(),
            canonical: "{\"kind\":\"Pipeline\"}".into(),
            at_ms: 1_700_000_000_000,
            if_generation: None,
        })
    }

    // Golden bytes: if these change, persisted logs written by earlier releases no longer
    // decode. Add a new version instead of editing them.
    const GOLDEN_COMMAND: &str = "\u{1}{\"ApplyPipeline\":{\"name\":\"demo\",\"id_if_new\":\"pl-0000000000abcdef\",\"spec_yaml\":\"kind: Pipeline\\n\",\"canonical\":\"{\\\"kind\\\":\\\"Pipeline\\\"}\",\"at_ms\":1700000000000}}";

    /// The same command as written now (version 2), as hex.
    const GOLDEN_COMMAND_V2: &str = "0281ad4170706c79506970656c696e6585a46e616d65a464656d6fa969645f69665f6e6577b3706c2d30303030303030303030616263646566a9737065635f79616d6caf6b696e643a20506970656c696e650aa963616e6f6e6963616cb37b226b696e64223a22506970656c696e65227da561745f6d73cf0000018bcfe56800";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn command_golden_bytes_v2() {
        let bytes = encode_command(&sample_command()).unwrap();
        assert_eq!(hex(&bytes), GOLDEN_COMMAND_V2);
        assert_eq!(
            decode_command(&unhex(GOLDEN_COMMAND_V2)).unwrap(),
            sample_command()
        );
        // Trailing bytes after the value are an error, not ignored.
        let mut longer = bytes.clone();
        longer.push(0xc0);
        assert!(matches!(decode_command(&longer), Err(Error::Decode { .. })));
    }

    #[test]
    fn command_golden_bytes() {
        let bytes = encode_v1("command", &sample_command()).unwrap();
        assert_eq!(bytes, GOLDEN_COMMAND.as_bytes());
        assert_eq!(
            decode_command(GOLDEN_COMMAND.as_bytes()).unwrap(),
            sample_command()
        );
    }

    #[test]
    fn state_golden_bytes() {
        let mut s = State::default();
        crate::apply(&mut s, 3, &sample_command());
        s.removed_nodes.insert(crate::NodeId(9));
        let bytes = encode_v1("state", &s).unwrap();
        assert_eq!(decode_state(&encode_state(&s).unwrap()).unwrap(), s);
        let golden = "\u{1}{\"pipelines\":{\"demo\":{\"name\":\"demo\",\"id\":\"pl-0000000000abcdef\",\"generation\":1,\"spec_yaml\":\"kind: Pipeline\\n\",\"canonical\":\"{\\\"kind\\\":\\\"Pipeline\\\"}\",\"created_at_ms\":1700000000000,\"updated_at_ms\":1700000000000,\"revision\":3}},\"removed_nodes\":[9]}";
        // State written before the component registry existed still decodes (the field
        // defaults to empty); state written now carries the registry.
        assert_eq!(decode_state(golden.as_bytes()).unwrap(), s);
        let golden_with_components = golden.replace(
            "\"removed_nodes\":[9]}",
            "\"removed_nodes\":[9],\"components\":{},\"placements\":{}}",
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), golden_with_components);
        assert_eq!(decode_state(golden_with_components.as_bytes()).unwrap(), s);
    }

    #[test]
    fn unknown_version_is_an_error_not_a_panic() {
        assert!(matches!(
            decode_command(b"\x03{}"),
            Err(Error::UnknownVersion { version: 3, .. })
        ));
        assert!(matches!(decode_command(b""), Err(Error::Empty { .. })));
        assert!(matches!(decode_command(b"\x01{"), Err(Error::Json { .. })));
        assert!(matches!(
            decode_command(b"\x02\x81"),
            Err(Error::Decode { .. })
        ));
        // A length prefix far beyond the input (a 4 GiB string) is an error, and no 4 GiB
        // buffer is made for it.
        assert!(matches!(
            decode::<String>("string", b"\x02\xdb\xff\xff\xff\xffabc"),
            Err(Error::Decode { .. })
        ));
        // Nesting deeper than the limit is an error, not a stack overflow.
        let mut deep = vec![V2];
        deep.extend(std::iter::repeat_n(0x91u8, 10_000));
        deep.push(0xc0);
        assert!(matches!(
            decode::<serde_json::Value>("value", &deep),
            Err(Error::Decode { .. })
        ));
    }
}
