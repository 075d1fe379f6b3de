//! What the engine answers about accounts and orders to callers outside it (the node's APIs):
//! plain query types, so that callers never depend on the ledger's own records (`ledger::Order`,
//! `ledger::ConsumerState`), which can change shape with the engine.

use crate::ledger::{ConsumerState, Order};
use crate::model::{OrderState, Release, Secs};
use crate::money::Amount;

/// An order as its consumer and merchant may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSummary {
    pub id: String,
    pub merchant: String,
    pub amount: Amount,
    pub state: OrderState,
    pub release: Release,
    pub placed_at: Secs,
    pub refunded: Amount,
}

impl From<&Order> for OrderSummary {
    fn from(o: &Order) -> OrderSummary {
        OrderSummary {
            id: o.id.clone(),
            merchant: o.merchant.clone(),
            amount: o.amount,
            state: o.state,
            release: o.release.clone(),
            placed_at: o.placed_at,
            refunded: o.refunded,
        }
    }
}

/// A consumer's account: the virtual account's credit, the wallet, the designated bank
/// account as stored (its reference with a data key), and the open orders in placement order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub id: String,
    pub credit_limit: Amount,
    pub reserved: Amount,
    pub available_credit: Amount,
    pub wallet: Amount,
    pub bank: String,
    pub open_orders: Vec<OrderSummary>,
}

impl From<&ConsumerState> for AccountSummary {
    fn from(c: &ConsumerState) -> AccountSummary {
        AccountSummary {
            id: c.id.clone(),
            credit_limit: c.credit_limit,
            reserved: c.reserved,
            available_credit: c.available_credit(),
            wallet: c.wallet,
            bank: c.bank.clone(),
            open_orders: c
                .open_orders_by_placement()
                .into_iter()
                .map(OrderSummary::from)
                .collect(),
        }
    }
}
