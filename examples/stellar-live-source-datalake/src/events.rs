//! The token movements a ledger is expected to contain, in plain Rust. The generator records
//! them while it builds each ledger, so a test can compare what a processor extracts from the
//! XDR with what was put in.

use std::fmt;

/// What kind of movement, with its parties (strkeys: `G…` accounts, `C…` contracts).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenEventKind {
    Transfer {
        from: String,
        to: String,
    },
    Mint {
        to: String,
    },
    Burn {
        from: String,
    },
    Clawback {
        from: String,
    },
    /// A fee charged to `from`; a negative amount is a refund.
    Fee {
        from: String,
    },
}

impl TokenEventKind {
    /// `transfer`, `mint`, `burn`, `clawback` or `fee`.
    pub fn name(&self) -> &'static str {
        match self {
            TokenEventKind::Transfer { .. } => "transfer",
            TokenEventKind::Mint { .. } => "mint",
            TokenEventKind::Burn { .. } => "burn",
            TokenEventKind::Clawback { .. } => "clawback",
            TokenEventKind::Fee { .. } => "fee",
        }
    }
}

/// One token event, located in its ledger.
///
/// `transaction_index` is the transaction's 1-based position in the ledger's apply order;
/// `operation_index` is the operation's 1-based position in its transaction, and 0 for events
/// of the transaction as a whole (fees and refunds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenEvent {
    pub ledger_sequence: u32,
    pub closed_at_unix: i64,
    /// Lower-case hex of the transaction hash.
    pub tx_hash: String,
    pub transaction_index: u32,
    pub operation_index: u32,
    /// The token contract (for classic payments, the asset's Stellar Asset Contract).
    pub contract_address: String,
    pub kind: TokenEventKind,
    /// `native`, `CODE:ISSUER` (SEP-11), or the contract address of a token with no asset.
    pub asset: String,
    /// In the asset's smallest unit (stroops for XLM).
    pub amount: i128,
}

impl fmt::Display for TokenEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ledger {} tx {} op {}: {} {} {}",
            self.ledger_sequence,
            self.transaction_index,
            self.operation_index,
            self.kind.name(),
            self.amount,
            self.asset
        )
    }
}
