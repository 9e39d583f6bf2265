//! The output payload: `token_transfer.TokenTransferEvent`, written with prost's derive.
//!
//! ```proto
//! package token_transfer;
//! message EventMeta {
//!   uint32 ledger_sequence = 1; int64 closed_at_unix = 2; string tx_hash = 3;
//!   uint32 transaction_index = 4; uint32 operation_index = 5; string contract_address = 6;
//! }
//! message Transfer { string from = 1; string to = 2; string asset = 3; string amount = 4; }
//! message Mint     { string to = 1;   string asset = 2; string amount = 3; }
//! message Burn     { string from = 1; string asset = 2; string amount = 3; }
//! message Clawback { string from = 1; string asset = 2; string amount = 3; }
//! message Fee      { string from = 1; string asset = 2; string amount = 3; }
//! message TokenTransferEvent {
//!   EventMeta meta = 1;
//!   oneof event { Transfer transfer = 2; Mint mint = 3; Burn burn = 4; Clawback clawback = 5; Fee fee = 6; }
//! }
//! ```
//!
//! Amounts are decimal strings of i128 in the asset's smallest unit; a negative `Fee` amount is
//! a refund. `transaction_index` is 1-based in apply order; `operation_index` is 1-based, 0 for
//! fees and refunds.

use stellar_live_source_datalake::{TokenEvent, TokenEventKind};

/// The event type in the `flowctl-event-type` header of every record this processor writes.
pub const TOKEN_TRANSFER_EVENT_TYPE: &str = "token_transfer.TokenTransferEvent";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EventMeta {
    #[prost(uint32, tag = "1")]
    pub ledger_sequence: u32,
    #[prost(int64, tag = "2")]
    pub closed_at_unix: i64,
    #[prost(string, tag = "3")]
    pub tx_hash: String,
    #[prost(uint32, tag = "4")]
    pub transaction_index: u32,
    #[prost(uint32, tag = "5")]
    pub operation_index: u32,
    #[prost(string, tag = "6")]
    pub contract_address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Transfer {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub to: String,
    #[prost(string, tag = "3")]
    pub asset: String,
    #[prost(string, tag = "4")]
    pub amount: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mint {
    #[prost(string, tag = "1")]
    pub to: String,
    #[prost(string, tag = "2")]
    pub asset: String,
    #[prost(string, tag = "3")]
    pub amount: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Burn {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub asset: String,
    #[prost(string, tag = "3")]
    pub amount: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Clawback {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub asset: String,
    #[prost(string, tag = "3")]
    pub amount: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fee {
    #[prost(string, tag = "1")]
    pub from: String,
    #[prost(string, tag = "2")]
    pub asset: String,
    #[prost(string, tag = "3")]
    pub amount: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenTransferEvent {
    #[prost(message, optional, tag = "1")]
    pub meta: Option<EventMeta>,
    #[prost(oneof = "token_transfer_event::Event", tags = "2, 3, 4, 5, 6")]
    pub event: Option<token_transfer_event::Event>,
}

pub mod token_transfer_event {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "2")]
        Transfer(super::Transfer),
        #[prost(message, tag = "3")]
        Mint(super::Mint),
        #[prost(message, tag = "4")]
        Burn(super::Burn),
        #[prost(message, tag = "5")]
        Clawback(super::Clawback),
        #[prost(message, tag = "6")]
        Fee(super::Fee),
    }
}

use token_transfer_event::Event;

impl From<&TokenEvent> for TokenTransferEvent {
    fn from(e: &TokenEvent) -> Self {
        let asset = e.asset.clone();
        let amount = e.amount.to_string();
        let event = match &e.kind {
            TokenEventKind::Transfer { from, to } => Event::Transfer(Transfer {
                from: from.clone(),
                to: to.clone(),
                asset,
                amount,
            }),
            TokenEventKind::Mint { to } => Event::Mint(Mint {
                to: to.clone(),
                asset,
                amount,
            }),
            TokenEventKind::Burn { from } => Event::Burn(Burn {
                from: from.clone(),
                asset,
                amount,
            }),
            TokenEventKind::Clawback { from } => Event::Clawback(Clawback {
                from: from.clone(),
                asset,
                amount,
            }),
            TokenEventKind::Fee { from } => Event::Fee(Fee {
                from: from.clone(),
                asset,
                amount,
            }),
        };
        TokenTransferEvent {
            meta: Some(EventMeta {
                ledger_sequence: e.ledger_sequence,
                closed_at_unix: e.closed_at_unix,
                tx_hash: e.tx_hash.clone(),
                transaction_index: e.transaction_index,
                operation_index: e.operation_index,
                contract_address: e.contract_address.clone(),
            }),
            event: Some(event),
        }
    }
}

impl TryFrom<&TokenTransferEvent> for TokenEvent {
    type Error = String;

    /// Fails on a missing meta or event, or an amount that is not an i128.
    fn try_from(p: &TokenTransferEvent) -> Result<Self, String> {
        let meta = p.meta.as_ref().ok_or("the event has no meta")?;
        let parse = |a: &str| {
            a.parse::<i128>()
                .map_err(|_| format!("amount {a:?} is not an integer"))
        };
        let (kind, asset, amount) = match p.event.as_ref().ok_or("the event has no kind")? {
            Event::Transfer(t) => (
                TokenEventKind::Transfer {
                    from: t.from.clone(),
                    to: t.to.clone(),
                },
                &t.asset,
                parse(&t.amount)?,
            ),
            Event::Mint(m) => (
                TokenEventKind::Mint { to: m.to.clone() },
                &m.asset,
                parse(&m.amount)?,
            ),
            Event::Burn(b) => (
                TokenEventKind::Burn {
                    from: b.from.clone(),
                },
                &b.asset,
                parse(&b.amount)?,
            ),
            Event::Clawback(c) => (
                TokenEventKind::Clawback {
                    from: c.from.clone(),
                },
                &c.asset,
                parse(&c.amount)?,
            ),
            Event::Fee(f) => (
                TokenEventKind::Fee {
                    from: f.from.clone(),
                },
                &f.asset,
                parse(&f.amount)?,
            ),
        };
        Ok(TokenEvent {
            ledger_sequence: meta.ledger_sequence,
            closed_at_unix: meta.closed_at_unix,
            tx_hash: meta.tx_hash.clone(),
            transaction_index: meta.transaction_index,
            operation_index: meta.operation_index,
            contract_address: meta.contract_address.clone(),
            kind,
            asset: asset.clone(),
            amount,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn events_round_trip_through_the_wire_format() {
        for kind in [
            TokenEventKind::Transfer {
                from: "GA".into(),
                to: "CB".into(),
            },
            TokenEventKind::Mint { to: "GC".into() },
            TokenEventKind::Burn { from: "GD".into() },
            TokenEventKind::Clawback { from: "GE".into() },
            TokenEventKind::Fee { from: "GF".into() },
        ] {
            let e = TokenEvent {
                ledger_sequence: 9,
                closed_at_unix: 45,
                tx_hash: "ab".into(),
                transaction_index: 1,
                operation_index: 2,
                contract_address: "CX".into(),
                kind,
                asset: "native".into(),
                amount: -170_141_183_460_469_231_731_687_303_715_884_105_728,
            };
            let wire = TokenTransferEvent::from(&e).encode_to_vec();
            let back = TokenTransferEvent::decode(&wire[..]).unwrap();
            assert_eq!(TokenEvent::try_from(&back).unwrap(), e);
        }
    }
}
