//! Deterministic synthetic ledgers: real `LedgerCloseMeta` XDR (V2, with V4 transaction meta,
//! as protocol 23 produces it) whose contents depend only on the network passphrase and the
//! ledger sequence.
//!
//! Each ledger holds two to six transactions, in two phases as a generalized transaction set
//! does: classic transactions (one to three payments of XLM or a credit asset; a payment from
//! an asset's issuer mints it, one to the issuer burns it; about one in ten such transactions
//! fails and moves nothing), then Soroban transactions invoking a Stellar Asset Contract
//! (`transfer`, `mint`, `burn`, `clawback`) or a custom token contract (`transfer`, whose
//! events carry no asset). Soroban operations emit CAP-67 token events in their operation meta;
//! unrelated contract events are mixed in, as real contracts emit them. Every transaction emits
//! a CAP-67 `fee` event before it applies, and Soroban transactions a negative `fee` event (the
//! refund) after all transactions apply. Classic payments emit no events: their movements are
//! read from the operations, as before protocol 23's unified events.
//!
//! While building a ledger the generator records the token events it contains
//! ([`SyntheticLedger::events`]), in the order a processor walks the ledger: transactions in
//! apply order; in each, the fee, the operations' movements in order, then the refund.

use sha2::{Digest, Sha256};
use stellar_xdr::{
    AccountId, AlphaNum12, AlphaNum4, Asset, AssetCode12, AssetCode4, ContractEvent,
    ContractEventBody, ContractEventType, ContractEventV0, ContractId, ContractIdPreimage,
    DecoratedSignature, ExtensionPoint, GeneralizedTransactionSet, Hash, HashIdPreimage,
    HashIdPreimageContractId, HostFunction, Int128Parts, InvokeContractArgs, InvokeHostFunctionOp,
    InvokeHostFunctionResult, LedgerCloseMeta, LedgerCloseMetaExt, LedgerCloseMetaV2, LedgerHeader,
    LedgerHeaderExt, LedgerHeaderHistoryEntry, LedgerHeaderHistoryEntryExt, Limits, Memo,
    MuxedAccount, Operation, OperationBody, OperationMetaV2, OperationResult, OperationResultTr,
    ParallelTxExecutionStage, ParallelTxsComponent, PaymentOp, PaymentResult, Preconditions,
    PublicKey, ScAddress, ScMap, ScMapEntry, ScString, ScSymbol, ScVal, SequenceNumber, Signature,
    SignatureHint, SorobanResources, SorobanTransactionData, SorobanTransactionDataExt,
    SorobanTransactionMetaExt, SorobanTransactionMetaV2, StellarValue, StellarValueExt, TimePoint,
    Transaction, TransactionEnvelope, TransactionEvent, TransactionEventStage, TransactionExt,
    TransactionMeta, TransactionMetaV4, TransactionPhase, TransactionResult, TransactionResultExt,
    TransactionResultMetaV1, TransactionResultPair, TransactionResultResult, TransactionSetV1,
    TransactionV1Envelope, TxSetComponent, TxSetComponentTxsMaybeDiscountedFee, Uint256, WriteXdr,
};

use crate::events::{TokenEvent, TokenEventKind};

/// The protocol version written into generated ledger headers.
pub const PROTOCOL_VERSION: u32 = 23;
/// Close time of ledger 0; each ledger closes [`LEDGER_CLOSE_SECONDS`] after the previous one.
pub const GENESIS_CLOSE_TIME: i64 = 1_600_000_000;
pub const LEDGER_CLOSE_SECONDS: i64 = 5;
/// The base fee per operation, in stroops.
pub const BASE_FEE: u32 = 100;

/// How many ordinary accounts move tokens.
const USERS: usize = 12;

/// A deterministic PRNG (SplitMix64). Hand-written rather than taken from `rand`, whose
/// generators may change output between versions; the data must never change.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// One asset the generator moves.
#[derive(Debug, Clone)]
struct TokenAsset {
    asset: Asset,
    /// `native` or `CODE:ISSUER`.
    name: String,
    /// Index into `Generator::issuers` for credit assets.
    issuer: Option<usize>,
    /// The asset's Stellar Asset Contract.
    sac: [u8; 32],
}

/// A synthetic ledger and the token events it contains.
#[derive(Debug, Clone)]
pub struct SyntheticLedger {
    pub sequence: u32,
    pub close_time_unix: i64,
    pub meta: LedgerCloseMeta,
    pub events: Vec<TokenEvent>,
}

impl SyntheticLedger {
    /// The ledger's `LedgerCloseMeta` as XDR bytes.
    pub fn to_xdr(&self) -> Result<Vec<u8>, stellar_xdr::Error> {
        self.meta.to_xdr(Limits::none())
    }
}

/// Makes ledgers for one network.
#[derive(Debug, Clone)]
pub struct Generator {
    network_passphrase: String,
    network_id: [u8; 32],
    users: Vec<[u8; 32]>,
    issuers: Vec<[u8; 32]>,
    assets: Vec<TokenAsset>,
    custom_token: [u8; 32],
    /// Contracts that receive tokens and emit unrelated events (pools, vaults).
    other_contracts: Vec<[u8; 32]>,
}

/// The network id Stellar hashes into transaction signatures: SHA-256 of the passphrase.
pub fn network_id(passphrase: &str) -> [u8; 32] {
    sha256(&[passphrase.as_bytes()])
}

/// The contract id of `asset`'s Stellar Asset Contract on the network `network_id`.
pub fn asset_contract_id(
    network_id: [u8; 32],
    asset: &Asset,
) -> Result<[u8; 32], stellar_xdr::Error> {
    let preimage = HashIdPreimage::ContractId(HashIdPreimageContractId {
        network_id: Hash(network_id),
        contract_id_preimage: ContractIdPreimage::Asset(asset.clone()),
    });
    Ok(sha256(&[&preimage.to_xdr(Limits::none())?]))
}

/// SEP-11 name of an asset: `native` or `CODE:ISSUER`.
pub fn asset_name(asset: &Asset) -> String {
    match asset {
        Asset::Native => "native".to_owned(),
        Asset::CreditAlphanum4(a) => format!("{}:{}", a.asset_code, a.issuer),
        Asset::CreditAlphanum12(a) => format!("{}:{}", a.asset_code, a.issuer),
    }
}

fn account_id(key: [u8; 32]) -> AccountId {
    AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(key)))
}

fn account_strkey(key: [u8; 32]) -> String {
    account_id(key).to_string()
}

fn contract_strkey(id: [u8; 32]) -> String {
    ScAddress::Contract(ContractId(Hash(id))).to_string()
}

fn symbol(s: &str) -> Result<ScVal, stellar_xdr::Error> {
    Ok(ScVal::Symbol(ScSymbol(s.parse()?)))
}

fn i128_val(v: i128) -> ScVal {
    ScVal::I128(Int128Parts {
        hi: (v >> 64) as i64,
        lo: v as u64,
    })
}

/// An account or contract on either side of a movement.
#[derive(Debug, Clone, Copy)]
enum Party {
    Account([u8; 32]),
    Contract([u8; 32]),
}

impl Party {
    fn sc_address(self) -> ScAddress {
        match self {
            Party::Account(k) => ScAddress::Account(account_id(k)),
            Party::Contract(c) => ScAddress::Contract(ContractId(Hash(c))),
        }
    }

    fn strkey(self) -> String {
        match self {
            Party::Account(k) => account_strkey(k),
            Party::Contract(c) => contract_strkey(c),
        }
    }
}

/// What one Soroban transaction does.
#[derive(Debug, Clone)]
enum Invoke {
    SacTransfer {
        asset: usize,
        from: [u8; 32],
        to: Party,
        amount: i128,
        muxed_id: Option<u64>,
    },
    SacMint {
        asset: usize,
        to: [u8; 32],
        amount: i128,
    },
    SacBurn {
        asset: usize,
        from: [u8; 32],
        amount: i128,
    },
    SacClawback {
        asset: usize,
        from: [u8; 32],
        amount: i128,
    },
    CustomTransfer {
        from: [u8; 32],
        to: Party,
        amount: i128,
    },
}

/// The parts of one transaction the ledger needs.
struct BuiltTx {
    envelope: TransactionEnvelope,
    result: TransactionResultMetaV1,
    events: Vec<TokenEvent>,
}

impl Generator {
    pub fn new(network_passphrase: &str) -> Result<Self, stellar_xdr::Error> {
        let network_id = network_id(network_passphrase);
        let key = |what: &str, i: usize| {
            sha256(&[b"flowctl synthetic ", what.as_bytes(), &i.to_be_bytes()])
        };
        let users: Vec<[u8; 32]> = (0..USERS).map(|i| key("account", i)).collect();
        let issuers: Vec<[u8; 32]> = (0..2).map(|i| key("issuer", i)).collect();
        let credit4 = |code: &[u8; 4], issuer: usize| {
            Asset::CreditAlphanum4(AlphaNum4 {
                asset_code: AssetCode4(*code),
                issuer: account_id(issuers[issuer]),
            })
        };
        let mut code12 = [0u8; 12];
        code12[..5].copy_from_slice(b"BTCLN");
        let defs = [
            (Asset::Native, None),
            (credit4(b"USDC", 0), Some(0)),
            (credit4(b"EURC", 1), Some(1)),
            (
                Asset::CreditAlphanum12(AlphaNum12 {
                    asset_code: AssetCode12(code12),
                    issuer: account_id(issuers[0]),
                }),
                Some(0),
            ),
        ];
        let mut assets = Vec::new();
        for (asset, issuer) in defs {
            assets.push(TokenAsset {
                name: asset_name(&asset),
                sac: asset_contract_id(network_id, &asset)?,
                asset,
                issuer,
            });
        }
        Ok(Generator {
            network_passphrase: network_passphrase.to_owned(),
            network_id,
            users,
            issuers,
            assets,
            custom_token: key("custom token", 0),
            other_contracts: (0..3).map(|i| key("pool", i)).collect(),
        })
    }

    pub fn network_passphrase(&self) -> &str {
        &self.network_passphrase
    }

    /// When ledger `sequence` closed, in seconds since the Unix epoch.
    pub fn close_time(sequence: u32) -> i64 {
        GENESIS_CLOSE_TIME + LEDGER_CLOSE_SECONDS * i64::from(sequence)
    }

    /// The token events of every ledger in `range`, in ledger order.
    pub fn expected_events(
        &self,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<TokenEvent>, stellar_xdr::Error> {
        let mut out = Vec::new();
        for seq in range {
            out.extend(self.ledger(seq)?.events);
        }
        Ok(out)
    }

    /// Builds ledger `sequence`.
    pub fn ledger(&self, sequence: u32) -> Result<SyntheticLedger, stellar_xdr::Error> {
        let mut rng = Rng::new(u64::from(sequence) ^ 0x5EED_F10C_7C71_0000);
        let close_time = Self::close_time(sequence);
        let previous_hash = sha256(&[
            b"flowctl synthetic ledger ",
            &sequence.wrapping_sub(1).to_be_bytes(),
        ]);

        let tx_count = 2 + rng.below(5);
        let soroban_count = rng.below(tx_count.min(3) + 1);
        let classic_count = tx_count - soroban_count;

        // Apply order: the classic phase, then the Soroban phase.
        let mut classic = Vec::new();
        let mut soroban = Vec::new();
        for i in 0..tx_count {
            let index = (i + 1) as u32;
            let account_seq = (i64::from(sequence) << 32) | i as i64;
            let tx = if i < classic_count {
                self.classic_tx(&mut rng, sequence, close_time, index, account_seq)?
            } else {
                self.soroban_tx(&mut rng, sequence, close_time, index, account_seq)?
            };
            if i < classic_count {
                classic.push(tx);
            } else {
                soroban.push(tx);
            }
        }

        // Refunds are emitted after all transactions apply, but each belongs to its own
        // transaction's meta; the walk order (fee, ops, refund per transaction) is what the
        // expected events follow.
        let mut events = Vec::new();
        let mut processing = Vec::new();
        let mut classic_envs = Vec::new();
        let mut soroban_envs = Vec::new();
        for tx in classic {
            events.extend(tx.events);
            processing.push(tx.result);
            classic_envs.push(tx.envelope);
        }
        for tx in soroban {
            events.extend(tx.events);
            processing.push(tx.result);
            soroban_envs.push(tx.envelope);
        }

        let mut phases = vec![TransactionPhase::V0(
            vec![TxSetComponent::TxsetCompTxsMaybeDiscountedFee(
                TxSetComponentTxsMaybeDiscountedFee {
                    base_fee: Some(i64::from(BASE_FEE)),
                    txs: classic_envs.try_into()?,
                },
            )]
            .try_into()?,
        )];
        let stages: Vec<ParallelTxExecutionStage> = if soroban_envs.is_empty() {
            Vec::new()
        } else {
            // One stage with one cluster: the transactions touch overlapping state.
            vec![ParallelTxExecutionStage(
                vec![stellar_xdr::DependentTxCluster(soroban_envs.try_into()?)].try_into()?,
            )]
        };
        phases.push(TransactionPhase::V1(ParallelTxsComponent {
            base_fee: None,
            execution_stages: stages.try_into()?,
        }));
        let tx_set = GeneralizedTransactionSet::V1(TransactionSetV1 {
            previous_ledger_hash: Hash(previous_hash),
            phases: phases.try_into()?,
        });
        let tx_set_hash = sha256(&[&tx_set.to_xdr(Limits::none())?]);
        let processing_xdr = processing
            .iter()
            .map(|p| p.result.to_xdr(Limits::none()))
            .collect::<Result<Vec<_>, _>>()?
            .concat();

        let header = LedgerHeader {
            ledger_version: PROTOCOL_VERSION,
            previous_ledger_hash: Hash(previous_hash),
            scp_value: StellarValue {
                tx_set_hash: Hash(tx_set_hash),
                close_time: TimePoint(close_time as u64),
                upgrades: Default::default(),
                ext: StellarValueExt::Basic,
            },
            tx_set_result_hash: Hash(sha256(&[&processing_xdr])),
            bucket_list_hash: Hash(sha256(&[b"bucket list ", &sequence.to_be_bytes()])),
            ledger_seq: sequence,
            total_coins: 1_000_000_000_000_000_000,
            fee_pool: 1_000_000_000 + i64::from(sequence) * 1_000,
            inflation_seq: 0,
            id_pool: u64::from(sequence) * 10,
            base_fee: BASE_FEE,
            base_reserve: 5_000_000,
            max_tx_set_size: 1_000,
            skip_list: Default::default(),
            ext: LedgerHeaderExt::V0,
        };
        let header_hash = sha256(&[&header.to_xdr(Limits::none())?]);
        let meta = LedgerCloseMeta::V2(LedgerCloseMetaV2 {
            ext: LedgerCloseMetaExt::V0,
            ledger_header: LedgerHeaderHistoryEntry {
                hash: Hash(header_hash),
                header,
                ext: LedgerHeaderHistoryEntryExt::V0,
            },
            tx_set,
            tx_processing: processing.try_into()?,
            upgrades_processing: Default::default(),
            scp_info: Default::default(),
            total_byte_size_of_live_soroban_state: 100_000_000 + u64::from(sequence),
            evicted_keys: Default::default(),
        });
        Ok(SyntheticLedger {
            sequence,
            close_time_unix: close_time,
            meta,
            events,
        })
    }

    fn user(&self, rng: &mut Rng) -> [u8; 32] {
        self.users[rng.below(self.users.len())]
    }

    /// A user other than `not`.
    fn other_user(&self, rng: &mut Rng, not: [u8; 32]) -> [u8; 32] {
        let at = self.users.iter().position(|u| *u == not).unwrap_or(0);
        self.users[(at + 1 + rng.below(self.users.len() - 1)) % self.users.len()]
    }

    /// Two different users.
    fn two_users(&self, rng: &mut Rng) -> ([u8; 32], [u8; 32]) {
        let a = self.user(rng);
        (a, self.other_user(rng, a))
    }

    fn fee_event(
        &self,
        from: [u8; 32],
        amount: i128,
        stage: TransactionEventStage,
    ) -> Result<TransactionEvent, stellar_xdr::Error> {
        Ok(TransactionEvent {
            stage,
            event: contract_event(
                self.assets[0].sac,
                vec![
                    symbol("fee")?,
                    ScVal::Address(Party::Account(from).sc_address()),
                ],
                i128_val(amount),
            )?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn token_event(
        &self,
        ledger: u32,
        close_time: i64,
        tx_hash: &str,
        tx_index: u32,
        op_index: u32,
        contract: [u8; 32],
        kind: TokenEventKind,
        asset: String,
        amount: i128,
    ) -> TokenEvent {
        TokenEvent {
            ledger_sequence: ledger,
            closed_at_unix: close_time,
            tx_hash: tx_hash.to_owned(),
            transaction_index: tx_index,
            operation_index: op_index,
            contract_address: contract_strkey(contract),
            kind,
            asset,
            amount,
        }
    }

    fn envelope(
        &self,
        rng: &mut Rng,
        tx: Transaction,
        signer: [u8; 32],
    ) -> Result<TransactionEnvelope, stellar_xdr::Error> {
        let mut hint = [0u8; 4];
        hint.copy_from_slice(&signer[28..]);
        let signature: [u8; 64] = rng.bytes();
        Ok(TransactionEnvelope::Tx(TransactionV1Envelope {
            tx,
            signatures: vec![DecoratedSignature {
                hint: SignatureHint(hint),
                signature: Signature(signature.to_vec().try_into()?),
            }]
            .try_into()?,
        }))
    }

    fn classic_tx(
        &self,
        rng: &mut Rng,
        ledger: u32,
        close_time: i64,
        tx_index: u32,
        account_seq: i64,
    ) -> Result<BuiltTx, stellar_xdr::Error> {
        let source = self.user(rng);
        let op_count = 1 + rng.below(3);
        let failed = rng.percent(10);
        let mut ops = Vec::new();
        // (op index, from, to, asset, amount) of each payment.
        let mut payments = Vec::new();
        for op_i in 0..op_count {
            let asset_i = rng.below(self.assets.len());
            let asset = &self.assets[asset_i];
            let amount = rng.between(1, 5_000_000_000);
            let dest = self.other_user(rng, source);
            // Some credit payments come from or go to the issuer: a mint or a burn.
            let (op_source, from, to) = match (asset.issuer, rng.below(8)) {
                (Some(i), 0) => (Some(self.issuers[i]), self.issuers[i], dest),
                (Some(i), 1) => (None, source, self.issuers[i]),
                _ => (None, source, dest),
            };
            ops.push(Operation {
                source_account: op_source.map(|k| MuxedAccount::Ed25519(Uint256(k))),
                body: OperationBody::Payment(PaymentOp {
                    destination: MuxedAccount::Ed25519(Uint256(to)),
                    asset: asset.asset.clone(),
                    amount,
                }),
            });
            payments.push(((op_i + 1) as u32, from, to, asset_i, amount));
        }
        let fee = BASE_FEE * op_count as u32;
        let tx = Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(source)),
            fee,
            seq_num: SequenceNumber(account_seq),
            cond: Preconditions::None,
            memo: if rng.percent(30) {
                Memo::Id(rng.next_u64())
            } else {
                Memo::None
            },
            operations: ops.try_into()?,
            ext: TransactionExt::V0,
        };
        let envelope = self.envelope(rng, tx, source)?;
        let hash = envelope.hash(self.network_id)?;
        let hash_hex = hex(&hash);

        let mut events = vec![self.token_event(
            ledger,
            close_time,
            &hash_hex,
            tx_index,
            0,
            self.assets[0].sac,
            TokenEventKind::Fee {
                from: account_strkey(source),
            },
            self.assets[0].name.clone(),
            i128::from(fee),
        )];
        let op_results: Vec<OperationResult> = payments
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let r = if failed && i == 0 {
                    PaymentResult::Underfunded
                } else {
                    PaymentResult::Success
                };
                OperationResult::OpInner(OperationResultTr::Payment(r))
            })
            .collect();
        if !failed {
            for (op_index, from, to, asset_i, amount) in &payments {
                let asset = &self.assets[*asset_i];
                let issuer = asset.issuer.map(|i| self.issuers[i]);
                let kind = if Some(*from) == issuer {
                    TokenEventKind::Mint {
                        to: account_strkey(*to),
                    }
                } else if Some(*to) == issuer {
                    TokenEventKind::Burn {
                        from: account_strkey(*from),
                    }
                } else {
                    TokenEventKind::Transfer {
                        from: account_strkey(*from),
                        to: account_strkey(*to),
                    }
                };
                events.push(self.token_event(
                    ledger,
                    close_time,
                    &hash_hex,
                    tx_index,
                    *op_index,
                    asset.sac,
                    kind,
                    asset.name.clone(),
                    i128::from(*amount),
                ));
            }
        }
        let result = TransactionResult {
            fee_charged: i64::from(fee),
            result: if failed {
                TransactionResultResult::TxFailed(op_results.try_into()?)
            } else {
                TransactionResultResult::TxSuccess(op_results.try_into()?)
            },
            ext: TransactionResultExt::V0,
        };
        let operations: Vec<OperationMetaV2> = if failed {
            Vec::new()
        } else {
            payments
                .iter()
                .map(|_| OperationMetaV2::default())
                .collect()
        };
        let meta = TransactionMetaV4 {
            ext: ExtensionPoint::V0,
            tx_changes_before: Default::default(),
            operations: operations.try_into()?,
            tx_changes_after: Default::default(),
            soroban_meta: None,
            events: vec![self.fee_event(
                source,
                i128::from(fee),
                TransactionEventStage::BeforeAllTxs,
            )?]
            .try_into()?,
            diagnostic_events: Default::default(),
        };
        Ok(BuiltTx {
            envelope,
            result: result_meta(hash, result, meta),
            events,
        })
    }

    fn pick_invoke(&self, rng: &mut Rng) -> Invoke {
        let credit = 1 + rng.below(self.assets.len() - 1);
        let amount = i128::from(rng.between(1, 2_000_000_000_000));
        match rng.below(10) {
            0..=3 => {
                let (from, to) = self.two_users(rng);
                let to = if rng.percent(25) {
                    Party::Contract(self.other_contracts[rng.below(self.other_contracts.len())])
                } else {
                    Party::Account(to)
                };
                let muxed_id = match to {
                    Party::Account(_) if rng.percent(20) => Some(rng.next_u64()),
                    _ => None,
                };
                Invoke::SacTransfer {
                    asset: rng.below(self.assets.len()),
                    from,
                    to,
                    amount,
                    muxed_id,
                }
            }
            4 | 5 => Invoke::SacMint {
                asset: credit,
                to: self.user(rng),
                amount,
            },
            6 => Invoke::SacBurn {
                asset: credit,
                from: self.user(rng),
                amount,
            },
            7 => Invoke::SacClawback {
                asset: credit,
                from: self.user(rng),
                amount,
            },
            _ => {
                let (from, to) = self.two_users(rng);
                Invoke::CustomTransfer {
                    from,
                    to: Party::Account(to),
                    amount,
                }
            }
        }
    }

    fn soroban_tx(
        &self,
        rng: &mut Rng,
        ledger: u32,
        close_time: i64,
        tx_index: u32,
        account_seq: i64,
    ) -> Result<BuiltTx, stellar_xdr::Error> {
        let invoke = self.pick_invoke(rng);
        let asset_sym = |i: usize| -> Result<ScVal, stellar_xdr::Error> {
            Ok(ScVal::String(ScString(self.assets[i].name.parse()?)))
        };
        let addr = |p: Party| ScVal::Address(p.sc_address());
        // (tx source, contract, function, args, event topics, event data, movement, asset name)
        let (source, contract, function, args, topics, data, kind, asset) = match &invoke {
            Invoke::SacTransfer {
                asset,
                from,
                to,
                amount,
                muxed_id,
            } => {
                let data = match muxed_id {
                    // CAP-67: a transfer to a muxed destination carries its id next to the amount.
                    Some(id) => ScVal::Map(Some(ScMap(
                        vec![
                            ScMapEntry {
                                key: symbol("amount")?,
                                val: i128_val(*amount),
                            },
                            ScMapEntry {
                                key: symbol("to_muxed_id")?,
                                val: ScVal::U64(*id),
                            },
                        ]
                        .try_into()?,
                    ))),
                    None => i128_val(*amount),
                };
                (
                    *from,
                    self.assets[*asset].sac,
                    "transfer",
                    vec![addr(Party::Account(*from)), addr(*to), i128_val(*amount)],
                    vec![
                        symbol("transfer")?,
                        addr(Party::Account(*from)),
                        addr(*to),
                        asset_sym(*asset)?,
                    ],
                    data,
                    TokenEventKind::Transfer {
                        from: account_strkey(*from),
                        to: to.strkey(),
                    },
                    self.assets[*asset].name.clone(),
                )
            }
            Invoke::SacMint { asset, to, amount } => {
                let issuer = self.issuers[self.assets[*asset].issuer.unwrap_or(0)];
                (
                    issuer,
                    self.assets[*asset].sac,
                    "mint",
                    vec![addr(Party::Account(*to)), i128_val(*amount)],
                    vec![
                        symbol("mint")?,
                        addr(Party::Account(*to)),
                        asset_sym(*asset)?,
                    ],
                    i128_val(*amount),
                    TokenEventKind::Mint {
                        to: account_strkey(*to),
                    },
                    self.assets[*asset].name.clone(),
                )
            }
            Invoke::SacBurn {
                asset,
                from,
                amount,
            } => (
                *from,
                self.assets[*asset].sac,
                "burn",
                vec![addr(Party::Account(*from)), i128_val(*amount)],
                vec![
                    symbol("burn")?,
                    addr(Party::Account(*from)),
                    asset_sym(*asset)?,
                ],
                i128_val(*amount),
                TokenEventKind::Burn {
                    from: account_strkey(*from),
                },
                self.assets[*asset].name.clone(),
            ),
            Invoke::SacClawback {
                asset,
                from,
                amount,
            } => {
                let issuer = self.issuers[self.assets[*asset].issuer.unwrap_or(0)];
                (
                    issuer,
                    self.assets[*asset].sac,
                    "clawback",
                    vec![addr(Party::Account(*from)), i128_val(*amount)],
                    vec![
                        symbol("clawback")?,
                        addr(Party::Account(*from)),
                        asset_sym(*asset)?,
                    ],
                    i128_val(*amount),
                    TokenEventKind::Clawback {
                        from: account_strkey(*from),
                    },
                    self.assets[*asset].name.clone(),
                )
            }
            Invoke::CustomTransfer { from, to, amount } => (
                *from,
                self.custom_token,
                "transfer",
                vec![addr(Party::Account(*from)), addr(*to), i128_val(*amount)],
                // A custom token has no SEP-11 asset, so its events carry none.
                vec![symbol("transfer")?, addr(Party::Account(*from)), addr(*to)],
                i128_val(*amount),
                TokenEventKind::Transfer {
                    from: account_strkey(*from),
                    to: to.strkey(),
                },
                contract_strkey(self.custom_token),
            ),
        };
        let amount = match &invoke {
            Invoke::SacTransfer { amount, .. }
            | Invoke::SacMint { amount, .. }
            | Invoke::SacBurn { amount, .. }
            | Invoke::SacClawback { amount, .. }
            | Invoke::CustomTransfer { amount, .. } => *amount,
        };

        let resource_fee = rng.between(20_000, 400_000);
        let declared_fee = i64::from(BASE_FEE) + resource_fee;
        let refund = rng.between(0, resource_fee / 2);
        let op = Operation {
            source_account: None,
            body: OperationBody::InvokeHostFunction(InvokeHostFunctionOp {
                host_function: HostFunction::InvokeContract(InvokeContractArgs {
                    contract_address: ScAddress::Contract(ContractId(Hash(contract))),
                    function_name: ScSymbol(function.parse()?),
                    args: args.try_into()?,
                }),
                auth: Default::default(),
            }),
        };
        let tx = Transaction {
            source_account: MuxedAccount::Ed25519(Uint256(source)),
            fee: declared_fee as u32,
            seq_num: SequenceNumber(account_seq),
            cond: Preconditions::None,
            memo: Memo::None,
            operations: vec![op].try_into()?,
            ext: TransactionExt::V1(SorobanTransactionData {
                ext: SorobanTransactionDataExt::V0,
                resources: SorobanResources {
                    footprint: Default::default(),
                    instructions: rng.between(1_000_000, 20_000_000) as u32,
                    disk_read_bytes: rng.between(0, 10_000) as u32,
                    write_bytes: rng.between(100, 5_000) as u32,
                },
                resource_fee,
            }),
        };
        let envelope = self.envelope(rng, tx, source)?;
        let hash = envelope.hash(self.network_id)?;
        let hash_hex = hex(&hash);

        let mut op_events = vec![contract_event(contract, topics, data)?];
        if rng.percent(30) {
            // Contracts emit events of their own; a token-event reader must skip them.
            let pool = self.other_contracts[rng.below(self.other_contracts.len())];
            op_events.push(contract_event(
                pool,
                vec![symbol("sync")?, ScVal::U32(rng.below(1000) as u32)],
                ScVal::U64(rng.next_u64()),
            )?);
        }
        let mut tx_events = vec![self.fee_event(
            source,
            i128::from(declared_fee),
            TransactionEventStage::BeforeAllTxs,
        )?];
        let mut events = vec![
            self.token_event(
                ledger,
                close_time,
                &hash_hex,
                tx_index,
                0,
                self.assets[0].sac,
                TokenEventKind::Fee {
                    from: account_strkey(source),
                },
                self.assets[0].name.clone(),
                i128::from(declared_fee),
            ),
            self.token_event(
                ledger, close_time, &hash_hex, tx_index, 1, contract, kind, asset, amount,
            ),
        ];
        if refund > 0 {
            tx_events.push(self.fee_event(
                source,
                -i128::from(refund),
                TransactionEventStage::AfterAllTxs,
            )?);
            events.push(self.token_event(
                ledger,
                close_time,
                &hash_hex,
                tx_index,
                0,
                self.assets[0].sac,
                TokenEventKind::Fee {
                    from: account_strkey(source),
                },
                self.assets[0].name.clone(),
                -i128::from(refund),
            ));
        }
        let return_hash = sha256(&[&hash, b"return"]);
        let result = TransactionResult {
            fee_charged: declared_fee - refund,
            result: TransactionResultResult::TxSuccess(
                vec![OperationResult::OpInner(
                    OperationResultTr::InvokeHostFunction(InvokeHostFunctionResult::Success(Hash(
                        return_hash,
                    ))),
                )]
                .try_into()?,
            ),
            ext: TransactionResultExt::V0,
        };
        let meta = TransactionMetaV4 {
            ext: ExtensionPoint::V0,
            tx_changes_before: Default::default(),
            operations: vec![OperationMetaV2 {
                ext: ExtensionPoint::V0,
                changes: Default::default(),
                events: op_events.try_into()?,
            }]
            .try_into()?,
            tx_changes_after: Default::default(),
            soroban_meta: Some(SorobanTransactionMetaV2 {
                ext: SorobanTransactionMetaExt::V0,
                return_value: Some(ScVal::Void),
            }),
            events: tx_events.try_into()?,
            diagnostic_events: Default::default(),
        };
        Ok(BuiltTx {
            envelope,
            result: result_meta(hash, result, meta),
            events,
        })
    }
}

fn contract_event(
    contract: [u8; 32],
    topics: Vec<ScVal>,
    data: ScVal,
) -> Result<ContractEvent, stellar_xdr::Error> {
    Ok(ContractEvent {
        ext: ExtensionPoint::V0,
        contract_id: Some(ContractId(Hash(contract))),
        type_: ContractEventType::Contract,
        body: ContractEventBody::V0(ContractEventV0 {
            topics: topics.try_into()?,
            data,
        }),
    })
}

fn result_meta(
    hash: [u8; 32],
    result: TransactionResult,
    meta: TransactionMetaV4,
) -> TransactionResultMetaV1 {
    TransactionResultMetaV1 {
        ext: ExtensionPoint::V0,
        result: TransactionResultPair {
            transaction_hash: Hash(hash),
            result,
        },
        fee_processing: Default::default(),
        tx_apply_processing: TransactionMeta::V4(meta),
        post_tx_apply_fee_processing: Default::default(),
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_xdr::ReadXdr;

    const TESTNET: &str = "Test SDF Network ; September 2015";

    #[test]
    fn ledgers_are_deterministic_and_decode() {
        let g = Generator::new(TESTNET).unwrap();
        for seq in [1, 2, 123_456, u32::MAX] {
            let a = g.ledger(seq).unwrap();
            let b = Generator::new(TESTNET).unwrap().ledger(seq).unwrap();
            let xdr = a.to_xdr().unwrap();
            assert_eq!(
                xdr,
                b.to_xdr().unwrap(),
                "ledger {seq} differs between runs"
            );
            assert_eq!(a.events, b.events);
            let back = LedgerCloseMeta::from_xdr(&xdr, Limits::none()).unwrap();
            assert_eq!(back, a.meta);
            let LedgerCloseMeta::V2(v2) = back else {
                panic!("not V2")
            };
            assert_eq!(v2.ledger_header.header.ledger_seq, seq);
            assert_eq!(
                v2.ledger_header.header.scp_value.close_time.0 as i64,
                a.close_time_unix
            );
            assert!(
                !a.events.is_empty(),
                "every ledger charges at least one fee"
            );
        }
    }

    #[test]
    fn a_range_covers_every_kind_of_event_and_asset() {
        let g = Generator::new(TESTNET).unwrap();
        let events = g.expected_events(1000..=1200).unwrap();
        for kind in ["transfer", "mint", "burn", "clawback", "fee"] {
            assert!(
                events.iter().any(|e| e.kind.name() == kind),
                "no {kind} event"
            );
        }
        assert!(events.iter().any(|e| e.amount < 0), "no refund");
        for asset in &g.assets {
            assert!(
                events.iter().any(|e| e.asset == asset.name),
                "no event for {}",
                asset.name
            );
        }
        assert!(
            events.iter().any(|e| e.asset.starts_with('C')),
            "no custom-token event"
        );
    }

    #[test]
    fn different_networks_hash_transactions_differently() {
        let a = Generator::new(TESTNET).unwrap().ledger(7).unwrap();
        let b = Generator::new("Public Global Stellar Network ; September 2015")
            .unwrap()
            .ledger(7)
            .unwrap();
        assert_ne!(a.events[0].tx_hash, b.events[0].tx_hash);
    }

    #[test]
    fn the_native_asset_contract_id_matches_the_network() {
        // The testnet XLM Stellar Asset Contract, as published by SDF.
        let g = Generator::new(TESTNET).unwrap();
        assert_eq!(
            contract_strkey(g.assets[0].sac),
            "CDLZFC3SYJYDZT7K67VZ75HPJVIEUVNIXF47ZG2FB2RMQQVU2HHGCYSC"
        );
    }
}
