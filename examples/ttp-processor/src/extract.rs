//! Token movements from one `LedgerCloseMeta`.
//!
//! Transactions are walked in apply order (`tx_processing`). Each one's envelope is found in the
//! transaction set by its hash, which needs the network passphrase; a transaction that is not
//! found means the passphrase is wrong or the ledger is inconsistent, and is an error. In each
//! transaction:
//!
//! 1. CAP-67 `fee` events emitted before it applied (transaction meta V4);
//! 2. if it succeeded, each operation in order: its CAP-67 token events (`transfer`, `mint`,
//!    `burn`, `clawback`) when its meta has events; otherwise, for a classic `Payment`, the
//!    movement read from the operation (from or to the asset's issuer is a mint or a burn);
//! 3. `fee` events emitted after it applied (refunds, negative).
//!
//! Events that are not token events (other symbols, other shapes, system or diagnostic events)
//! are skipped. Only `LedgerCloseMeta` V1 and V2 are read; V0 predates generalized transaction
//! sets.

use std::collections::HashMap;

use stellar_live_source_datalake::synthetic::{asset_contract_id, asset_name, hex, network_id};
use stellar_live_source_datalake::{TokenEvent, TokenEventKind};
use stellar_xdr::{
    Asset, ContractEvent, ContractEventBody, ContractEventType, ContractId,
    FeeBumpTransactionInnerTx, GeneralizedTransactionSet, Hash, LedgerCloseMeta, MuxedAccount,
    Operation, OperationBody, ScAddress, ScVal, TransactionEnvelope, TransactionEventStage,
    TransactionMeta, TransactionPhase, TransactionResultPair, TransactionResultResult,
    TxSetComponent,
};

/// Why a ledger could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractError(pub String);

impl std::fmt::Display for ExtractError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExtractError {}

fn err(msg: impl Into<String>) -> ExtractError {
    ExtractError(msg.into())
}

/// The ledger sequence of `meta`.
pub fn ledger_sequence(meta: &LedgerCloseMeta) -> u32 {
    match meta {
        LedgerCloseMeta::V0(m) => m.ledger_header.header.ledger_seq,
        LedgerCloseMeta::V1(m) => m.ledger_header.header.ledger_seq,
        LedgerCloseMeta::V2(m) => m.ledger_header.header.ledger_seq,
    }
}

/// The token events of `meta`, in the order described in the module docs.
pub fn extract_events(
    meta: &LedgerCloseMeta,
    network_passphrase: &str,
) -> Result<Vec<TokenEvent>, ExtractError> {
    let network = network_id(network_passphrase);
    let (header, tx_set, processing): (_, _, Vec<(&TransactionResultPair, &TransactionMeta)>) =
        match meta {
            LedgerCloseMeta::V0(_) => {
                return Err(err(
                    "LedgerCloseMeta V0 is not supported (no generalized tx set)",
                ))
            }
            LedgerCloseMeta::V1(m) => (
                &m.ledger_header.header,
                &m.tx_set,
                m.tx_processing
                    .iter()
                    .map(|p| (&p.result, &p.tx_apply_processing))
                    .collect(),
            ),
            LedgerCloseMeta::V2(m) => (
                &m.ledger_header.header,
                &m.tx_set,
                m.tx_processing
                    .iter()
                    .map(|p| (&p.result, &p.tx_apply_processing))
                    .collect(),
            ),
        };
    let ledger = header.ledger_seq;
    let closed_at = i64::try_from(header.scp_value.close_time.0)
        .map_err(|_| err(format!("ledger {ledger}: close time out of range")))?;

    let mut envelopes: HashMap<[u8; 32], &TransactionEnvelope> = HashMap::new();
    for env in set_envelopes(tx_set) {
        let hash = env
            .hash(network)
            .map_err(|e| err(format!("ledger {ledger}: cannot hash a transaction: {e}")))?;
        envelopes.insert(hash, env);
    }

    let mut out = Vec::new();
    for (i, (pair, tx_meta)) in processing.into_iter().enumerate() {
        let tx_index = u32::try_from(i + 1).map_err(|_| err("too many transactions"))?;
        let tx_hash = hex(&pair.transaction_hash.0);
        let envelope = envelopes.get(&pair.transaction_hash.0).ok_or_else(|| {
            err(format!(
                "ledger {ledger}: transaction {tx_hash} is not in the transaction set \
                 (wrong network passphrase?)"
            ))
        })?;
        let mut emit =
            |op_index: u32, contract: String, kind: TokenEventKind, asset: String, amount: i128| {
                out.push(TokenEvent {
                    ledger_sequence: ledger,
                    closed_at_unix: closed_at,
                    tx_hash: tx_hash.clone(),
                    transaction_index: tx_index,
                    operation_index: op_index,
                    contract_address: contract,
                    kind,
                    asset,
                    amount,
                });
            };
        let succeeded = matches!(
            pair.result.result,
            TransactionResultResult::TxSuccess(_)
                | TransactionResultResult::TxFeeBumpInnerSuccess(_)
        );
        let (tx_source, ops) = tx_parts(envelope);

        // Fees charged before applying, then the operations, then refunds.
        let (before, after, op_events): (
            Vec<&ContractEvent>,
            Vec<&ContractEvent>,
            Vec<Vec<&ContractEvent>>,
        ) = match tx_meta {
            TransactionMeta::V4(m) => (
                m.events
                    .iter()
                    .filter(|e| e.stage == TransactionEventStage::BeforeAllTxs)
                    .map(|e| &e.event)
                    .collect(),
                m.events
                    .iter()
                    .filter(|e| e.stage != TransactionEventStage::BeforeAllTxs)
                    .map(|e| &e.event)
                    .collect(),
                m.operations
                    .iter()
                    .map(|o| o.events.iter().collect())
                    .collect(),
            ),
            // Protocol 20-22: Soroban events belong to the single operation.
            TransactionMeta::V3(m) => (
                Vec::new(),
                Vec::new(),
                vec![m
                    .soroban_meta
                    .as_ref()
                    .map(|s| s.events.iter().collect())
                    .unwrap_or_default()],
            ),
            _ => (Vec::new(), Vec::new(), Vec::new()),
        };
        for ev in before {
            if let Some(t) = token_event(ev) {
                emit(0, t.contract, t.kind, t.asset, t.amount);
            }
        }
        if succeeded {
            for (op_i, op) in ops.iter().enumerate() {
                let op_index = u32::try_from(op_i + 1).map_err(|_| err("too many operations"))?;
                let events = op_events.get(op_i).map(Vec::as_slice).unwrap_or_default();
                if !events.is_empty() {
                    for ev in events {
                        if let Some(t) = token_event(ev) {
                            emit(op_index, t.contract, t.kind, t.asset, t.amount);
                        }
                    }
                } else if let OperationBody::Payment(p) = &op.body {
                    let source = op.source_account.as_ref().unwrap_or(&tx_source);
                    let contract = asset_contract_id(network, &p.asset)
                        .map_err(|e| err(format!("ledger {ledger}: asset contract id: {e}")))?;
                    let kind = payment_kind(source, &p.destination, &p.asset);
                    emit(
                        op_index,
                        ScAddress::Contract(ContractId(Hash(contract))).to_string(),
                        kind,
                        asset_name(&p.asset),
                        i128::from(p.amount),
                    );
                }
            }
        }
        for ev in after {
            if let Some(t) = token_event(ev) {
                emit(0, t.contract, t.kind, t.asset, t.amount);
            }
        }
    }
    Ok(out)
}

/// Every envelope in a transaction set, in set order.
fn set_envelopes(set: &GeneralizedTransactionSet) -> Vec<&TransactionEnvelope> {
    let GeneralizedTransactionSet::V1(v1) = set;
    let mut out = Vec::new();
    for phase in v1.phases.iter() {
        match phase {
            TransactionPhase::V0(components) => {
                for c in components.iter() {
                    let TxSetComponent::TxsetCompTxsMaybeDiscountedFee(c) = c;
                    out.extend(c.txs.iter());
                }
            }
            TransactionPhase::V1(parallel) => {
                for stage in parallel.execution_stages.iter() {
                    for cluster in stage.0.iter() {
                        out.extend(cluster.0.iter());
                    }
                }
            }
        }
    }
    out
}

/// The (inner) transaction's source and operations.
fn tx_parts(env: &TransactionEnvelope) -> (MuxedAccount, &[Operation]) {
    match env {
        TransactionEnvelope::TxV0(e) => (
            MuxedAccount::Ed25519(e.tx.source_account_ed25519.clone()),
            &e.tx.operations,
        ),
        TransactionEnvelope::Tx(e) => (e.tx.source_account.clone(), &e.tx.operations),
        TransactionEnvelope::TxFeeBump(e) => {
            let FeeBumpTransactionInnerTx::Tx(inner) = &e.tx.inner_tx;
            (inner.tx.source_account.clone(), &inner.tx.operations)
        }
    }
}

fn ed25519(m: &MuxedAccount) -> [u8; 32] {
    match m {
        MuxedAccount::Ed25519(k) => k.0,
        MuxedAccount::MuxedEd25519(m) => m.ed25519.0,
    }
}

fn issuer(asset: &Asset) -> Option<[u8; 32]> {
    let id = match asset {
        Asset::Native => return None,
        Asset::CreditAlphanum4(a) => &a.issuer,
        Asset::CreditAlphanum12(a) => &a.issuer,
    };
    let stellar_xdr::PublicKey::PublicKeyTypeEd25519(k) = &id.0;
    Some(k.0)
}

/// A payment from an asset's issuer creates it (mint); one to its issuer destroys it (burn).
fn payment_kind(from: &MuxedAccount, to: &MuxedAccount, asset: &Asset) -> TokenEventKind {
    let issuer = issuer(asset);
    if issuer == Some(ed25519(from)) {
        TokenEventKind::Mint { to: to.to_string() }
    } else if issuer == Some(ed25519(to)) {
        TokenEventKind::Burn {
            from: from.to_string(),
        }
    } else {
        TokenEventKind::Transfer {
            from: from.to_string(),
            to: to.to_string(),
        }
    }
}

/// A token event read from a contract event.
struct Parsed {
    contract: String,
    kind: TokenEventKind,
    asset: String,
    amount: i128,
}

fn address(v: &ScVal) -> Option<String> {
    match v {
        ScVal::Address(a) => Some(a.to_string()),
        _ => None,
    }
}

fn string(v: &ScVal) -> Option<String> {
    match v {
        ScVal::String(s) => Some(s.0.to_string()),
        _ => None,
    }
}

fn i128_of(v: &ScVal) -> Option<i128> {
    match v {
        ScVal::I128(p) => Some((i128::from(p.hi) << 64) | i128::from(p.lo)),
        // CAP-67: `{amount, to_muxed_id}` when the destination is muxed.
        ScVal::Map(Some(m)) => m.0.iter().find_map(|e| match &e.key {
            ScVal::Symbol(s) if s.0.as_slice() == b"amount" => i128_of(&e.val),
            _ => None,
        }),
        _ => None,
    }
}

/// Reads a CAP-67 token event (and the pre-CAP-67 shapes of `mint` and `clawback`, which
/// carried the admin first). `None` for anything else.
fn token_event(ev: &ContractEvent) -> Option<Parsed> {
    if ev.type_ != ContractEventType::Contract {
        return None;
    }
    let contract = ScAddress::Contract(ev.contract_id.clone()?).to_string();
    let ContractEventBody::V0(body) = &ev.body;
    let topics: &[ScVal] = &body.topics;
    let ScVal::Symbol(name) = topics.first()? else {
        return None;
    };
    let amount = i128_of(&body.data)?;
    let asset_at = |i: usize| -> Option<String> {
        match topics.get(i) {
            None => Some(contract.clone()),
            Some(v) => string(v),
        }
    };
    let (kind, asset) = match (name.0.as_slice(), topics.len()) {
        (b"transfer", 3 | 4) => (
            TokenEventKind::Transfer {
                from: address(&topics[1])?,
                to: address(&topics[2])?,
            },
            asset_at(3)?,
        ),
        // CAP-67 `[mint, to, asset?]`; before it `[mint, admin, to, asset]`, and a custom
        // token's `[mint, admin, to]` (told apart by the third topic not being a string).
        (b"mint", 2) => (
            TokenEventKind::Mint {
                to: address(&topics[1])?,
            },
            contract.clone(),
        ),
        (b"mint", 3) if string(&topics[2]).is_some() => (
            TokenEventKind::Mint {
                to: address(&topics[1])?,
            },
            asset_at(2)?,
        ),
        (b"mint", 3 | 4) => (
            TokenEventKind::Mint {
                to: address(&topics[2])?,
            },
            asset_at(3)?,
        ),
        (b"burn", 2 | 3) => (
            TokenEventKind::Burn {
                from: address(&topics[1])?,
            },
            asset_at(2)?,
        ),
        (b"clawback", 2) => (
            TokenEventKind::Clawback {
                from: address(&topics[1])?,
            },
            contract.clone(),
        ),
        (b"clawback", 3) if string(&topics[2]).is_some() => (
            TokenEventKind::Clawback {
                from: address(&topics[1])?,
            },
            asset_at(2)?,
        ),
        (b"clawback", 3 | 4) => (
            TokenEventKind::Clawback {
                from: address(&topics[2])?,
            },
            asset_at(3)?,
        ),
        (b"fee", 2) => (
            TokenEventKind::Fee {
                from: address(&topics[1])?,
            },
            asset_name(&Asset::Native),
        ),
        _ => return None,
    };
    Some(Parsed {
        contract,
        kind,
        asset,
        amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_live_source_datalake::Generator;

    const TESTNET: &str = "Test SDF Network ; September 2015";

    #[test]
    fn extraction_from_generated_ledgers_yields_exactly_the_expected_events() {
        let g = Generator::new(TESTNET).unwrap();
        let mut total = 0;
        for seq in 500..=700 {
            let ledger = g.ledger(seq).unwrap();
            let got = extract_events(&ledger.meta, TESTNET).unwrap();
            assert_eq!(got, ledger.events, "ledger {seq}");
            total += got.len();
        }
        assert!(total > 1000, "only {total} events in 201 ledgers");
    }

    #[test]
    fn a_wrong_passphrase_is_reported() {
        let ledger = Generator::new(TESTNET).unwrap().ledger(5).unwrap();
        let e = extract_events(
            &ledger.meta,
            "Public Global Stellar Network ; September 2015",
        )
        .unwrap_err();
        assert!(e.0.contains("wrong network passphrase"), "{e}");
    }
}
