//! The record payload: `raw_ledger_service.RawLedgerChunk`, matching
//! `examples/protos/raw_ledger_service.proto`. Written with prost's derive rather than generated,
//! so the example needs no build script; the field numbers are the contract.

/// The event type in the `flowctl-event-type` header of every record this source writes.
pub const RAW_LEDGER_CHUNK_EVENT_TYPE: &str = "raw_ledger_service.RawLedgerChunk";

/// A range of ledgers with their close meta. This source writes one ledger per chunk
/// (`start_ledger == end_ledger`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawLedgerChunk {
    #[prost(uint32, tag = "1")]
    pub start_ledger: u32,
    #[prost(uint32, tag = "2")]
    pub end_ledger: u32,
    /// XDR of one `LedgerCloseMeta`.
    #[prost(bytes = "vec", tag = "3")]
    pub ledger_close_meta_xdr: Vec<u8>,
    #[prost(string, tag = "4")]
    pub network_passphrase: String,
    #[prost(int64, tag = "5")]
    pub close_time_unix: i64,
    #[prost(string, tag = "6")]
    pub job_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn field_numbers_are_the_proto_contract() {
        let chunk = RawLedgerChunk {
            start_ledger: 1,
            end_ledger: 2,
            ledger_close_meta_xdr: vec![0xAB],
            network_passphrase: "n".into(),
            close_time_unix: 3,
            job_id: "j".into(),
        };
        // Tag bytes: (field << 3) | wire type.
        assert_eq!(
            chunk.encode_to_vec(),
            [0x08, 1, 0x10, 2, 0x1A, 1, 0xAB, 0x22, 1, b'n', 0x28, 3, 0x32, 1, b'j']
        );
        assert_eq!(
            RawLedgerChunk::decode(&chunk.encode_to_vec()[..]).unwrap(),
            chunk
        );
    }
}
