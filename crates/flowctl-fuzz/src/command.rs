//! The `command` target: a replicated log entry as a follower reads it.

use crate::state_codec::round_trip;
use flowctl_state::{apply, codec, requests, State};

/// Decodes `data` as an encoded `Command` and checks the round trip. A command that decodes
/// is then applied twice to a fresh state (the second time as a retry at a later index, which
/// reaches the update and conflict paths), as a follower applies whatever the leader
/// replicated: `apply` must never panic. Each outcome and the resulting state must survive
/// their codecs too, since outcomes go back to the proposer and state goes into snapshots.
pub fn command(data: &[u8]) {
    let Some(cmd) = round_trip(data, codec::decode_command, codec::encode_command) else {
        return;
    };
    let _ = (cmd.approx_bytes(), requests::kind(&cmd));
    let mut state = State::default();
    for index in [1, 2] {
        let (outcome, _touched) = apply(&mut state, index, &cmd);
        let bytes = codec::encode_outcome(&outcome).expect("an outcome encodes");
        round_trip(&bytes, codec::decode_outcome, codec::encode_outcome);
    }
    let bytes = codec::encode_state(&state).expect("a state encodes");
    let mut loaded = round_trip(&bytes, codec::decode_state, codec::encode_state)
        .expect("an encoded state decodes");
    // A node that restarted from the snapshot applies the next entry as the others do.
    let mut expected = state.clone();
    let (want, _) = apply(&mut expected, 3, &cmd);
    let (got, _) = apply(&mut loaded, 3, &cmd);
    assert_eq!(
        got, want,
        "apply after a snapshot round trip answers differently"
    );
    assert_eq!(
        loaded, expected,
        "apply after a snapshot round trip diverges"
    );
}
