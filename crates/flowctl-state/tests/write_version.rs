//! `codec::set_write_version`: a node told to keep writing version 1 (while a cluster is
//! upgraded from a release that cannot read version 2) writes exactly what those releases
//! wrote. In its own test binary: the setting is process-wide.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_state::codec;
use flowctl_state::pipelines::DeletePipeline;
use flowctl_state::Command;

#[test]
fn a_node_kept_at_version_1_writes_json_and_reads_both() {
    let cmd = Command::DeletePipeline(DeletePipeline { name: "p".into() });
    assert_eq!(codec::write_version(), codec::V2);
    let v2 = codec::encode_command(&cmd).unwrap();
    assert_eq!(v2[0], codec::V2);

    codec::set_write_version(1).unwrap();
    let v1 = codec::encode_command(&cmd).unwrap();
    assert_eq!(
        v1,
        br#"{"DeletePipeline":{"name":"p"}}"#
            .iter()
            .fold(vec![1u8], |mut v, b| {
                v.push(*b);
                v
            })
    );
    // Whatever it writes, it reads both.
    assert_eq!(codec::decode_command(&v1).unwrap(), cmd);
    assert_eq!(codec::decode_command(&v2).unwrap(), cmd);

    let e = codec::set_write_version(3).unwrap_err();
    assert!(e.contains("codec version 3"), "{e}");
    assert_eq!(
        codec::write_version(),
        codec::V1,
        "a refused version changes nothing"
    );
    codec::set_write_version(2).unwrap();
    assert_eq!(codec::encode_command(&cmd).unwrap(), v2);
}
