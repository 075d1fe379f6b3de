//! The bank simulator's admin API (docs/bank-http.md), as `onecard-sim load --bank URL` uses
//! it: opening the population's accounts in bulk, reading every balance and the totals.
//!
//! Blocking (ureq): call it off the runtime's thread (`actix_rt::task::spawn_blocking`).

use std::time::Duration;

use onecard_engine::Amount;
use serde::Deserialize;
use serde_json::json;

/// Openings sent per request: one journal write and one fdatasync each at the bank.
const OPEN_CHUNK: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{what}: {reason}")]
    Http { what: String, reason: String },
    #[error("{what}: answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unreadable answer: {reason}")]
    Answer { what: String, reason: String },
}

/// An account as `GET /admin/accounts` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct AccountLine {
    pub account: String,
    pub balance: String,
}

#[derive(Debug, Deserialize)]
struct AccountList {
    accounts: Vec<AccountLine>,
}

/// `GET /admin/totals`.
#[derive(Debug, Clone, Deserialize)]
pub struct Totals {
    pub accounts: u64,
    pub total: String,
    pub messages: u64,
    pub bookings: u64,
}

/// The admin API of the bank at `base`.
#[derive(Clone)]
pub struct BankAdmin {
    base: String,
    agent: ureq::Agent,
}

impl BankAdmin {
    pub fn new(base: &str) -> BankAdmin {
        BankAdmin {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .timeout(Duration::from_secs(120))
                .build(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn answer(
        what: &str,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, AdminError> {
        match r {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, r)) => Err(AdminError::Status {
                what: what.to_string(),
                status,
                body: r.into_string().unwrap_or_default(),
            }),
            Err(e) => Err(AdminError::Http {
                what: what.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        let what = format!("GET {}{path}", self.base);
        let r = Self::answer(
            &what,
            self.agent.get(&format!("{}{path}", self.base)).call(),
        )?;
        // Not `into_string`: it stops at 10 MB, and a large population's list is more.
        serde_json::from_reader(r.into_reader()).map_err(|e| AdminError::Answer {
            what,
            reason: e.to_string(),
        })
    }

    /// Opens every account of `list` (id, balance in cents), a chunk per request. Fails if
    /// any exists with another opening balance (the bank opens none of that chunk).
    pub fn open_accounts(&self, list: &[(String, i64)]) -> Result<(), AdminError> {
        let what = format!("POST {}/admin/accounts", self.base);
        for chunk in list.chunks(OPEN_CHUNK) {
            let body: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(account, cents)| {
                    json!({"account": account, "balance": Amount::from_cents(*cents).to_string()})
                })
                .collect();
            let body = serde_json::Value::Array(body).to_string();
            Self::answer(
                &what,
                self.agent
                    .post(&format!("{}/admin/accounts", self.base))
                    .set("Content-Type", "application/json")
                    .send_string(&body),
            )?;
        }
        Ok(())
    }

    /// Every account and its balance.
    pub fn accounts(&self) -> Result<Vec<AccountLine>, AdminError> {
        Ok(self.get::<AccountList>("/admin/accounts")?.accounts)
    }

    pub fn totals(&self) -> Result<Totals, AdminError> {
        self.get("/admin/totals")
    }
}

/// An amount the bank wrote, in cents.
pub fn cents(what: &str, s: &str) -> Result<i128, AdminError> {
    Amount::parse_non_negative(s)
        .map(|a| a.cents())
        .map_err(|e| AdminError::Answer {
            what: what.to_string(),
            reason: format!("{s:?}: {e}"),
        })
}
