//! Versioned encodings of everything this crate persists or sends between nodes.
//!
//! Each encoding is one version byte followed by a JSON body. JSON keeps the log and
//! snapshots inspectable; the version byte lets a later release change the body without
//! guessing. Changing an encoding means a new version byte and a new golden-bytes test.

use crate::{Command, Outcome, PipelineRecord, State};
use serde::{de::DeserializeOwned, Serialize};

/// Version byte of the JSON encodings below.
pub const V1: u8 = 1;

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
}

/// Encodes any serde value with the version-1 framing.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![V1];
    serde_json::to_writer(&mut out, value).map_err(|source| Error::Json { what, source })?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        None => Err(Error::Empty { what }),
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

    #[test]
    fn command_golden_bytes() {
        let bytes = encode_command(&sample_command()).unwrap();
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
        let bytes = encode_state(&s).unwrap();
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
            decode_command(b"\x02{}"),
            Err(Error::UnknownVersion { version: 2, .. })
        ));
        assert!(matches!(decode_command(b""), Err(Error::Empty { .. })));
        assert!(matches!(decode_command(b"\x01{"), Err(Error::Json { .. })));
    }
}
