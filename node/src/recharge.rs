//! Recharge (F8), apart from HTTP: prepaid recharge codes (their format, their keyed hash, the
//! key), redeeming a code into the wallet and depositing by bank transfer through the engine's
//! credit command, and the throttle on wrong codes.
//!
//! **Codes.** 20 symbols of Crockford's base32 (`0-9`, `A-Z` without `I L O U`), 5 random bits
//! each from the operating system's RNG: 100 bits, written `XXXX-XXXX-XXXX-XXXX-XXXX`. Input
//! is normalised before anything else (case, dashes, spaces; `O` read as `0`, `I` and `L` as
//! `1`, as Crockford decodes them), so a code typed from a card reads as printed.
//!
//! **At rest.** A code is stored only as HMAC-SHA256 under the recharge key ([`RechargeKey`]),
//! in the key of its record (`rc/<hex>`); the key is derived with HKDF from a secret of the
//! node's configuration (`ONECARD_DATA_KEY`, or `ONECARD_ISSUER_KEY` without one), never
//! stored in the data directory. A copy of the data directory therefore holds nothing that
//! redeems: without the key, finding a code from its hash is a search of 2^100.
//!
//! **Once.** Redeeming is the engine's credit with id `rc-` + 32 hex digits of the code's
//! HMAC, so "once" holds in the engine (I6) even across a crash between the credit and the
//! node's mark, or with two consumers at once: the second is refused as a conflict, and the
//! credit's record names who has it. The node's record is marked from that record.
//!
//! **Throttle.** Wrong codes are counted per consumer and per source address in memory
//! ([`Throttle`]). A restart forgets them; that is accepted: at 5 guesses per 15 minutes per
//! consumer and per address, an online search of 100-bit codes stays hopeless by some 25
//! orders of magnitude even with restarts every minute, and keeping the counts in memory
//! keeps a guess from costing a journal write.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use onecard_engine::commands::CreditCmd;
use onecard_engine::ledger::{CreditRecord, CreditSource, CreditTarget};
use onecard_engine::{Amount, EngineConfig, Refusal, RefusalKind};
use rand::RngCore;
use sha2::Sha256;

use crate::app::AppError;
use crate::notify::{self, Notification, Recipient};
use crate::records::{self, Deposit, RechargeCode, Redemption};
use crate::state::Node;
use crate::store;
use onecard_protocol::wire::to_hex;

/// Crockford's base32 alphabet: no `I`, `L`, `O`, `U`.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols of a code: 20 × 5 = 100 random bits.
pub const CODE_SYMBOLS: usize = 20;
/// Symbols per group when a code is written out.
const GROUP: usize = 4;
/// The longest input looked at (a code with separators and some spaces): longer is malformed
/// without reading it.
const MAX_INPUT_CHARS: usize = 64;

/// HKDF salts: one per secret the key may come from, so the two never give the same key.
const SALT_FROM_DATA_KEY: &[u8] = b"OneCard recharge code key v1 (data key)";
const SALT_FROM_ISSUER_KEY: &[u8] = b"OneCard recharge code key v1 (issuer key)";
const KEY_INFO: &[u8] = b"recharge";
/// What the key check value is the HMAC of.
const KEY_CHECK_LABEL: &[u8] = b"OneCard recharge key check";

/// Which configured secret the recharge key is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    DataKey,
    IssuerKey,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::DataKey => "data_key",
            KeySource::IssuerKey => "issuer_key",
        }
    }
}

/// The key recharge codes are hashed under (HMAC-SHA256). Held in memory only.
#[derive(Clone)]
pub struct RechargeKey {
    key: [u8; 32],
    pub source: KeySource,
}

// The key never appears in logs or debug output (I10).
impl std::fmt::Debug for RechargeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RechargeKey(<secret> from {})", self.source.as_str())
    }
}

/// What to set when there is no recharge key: the message of the refusal to issue or redeem.
pub const NO_KEY: &str = "recharge codes need a secret key: set ONECARD_DATA_KEY (or \
     ONECARD_ISSUER_KEY) in the node's environment and restart it";

impl RechargeKey {
    /// The key from the node's configured secrets: the data key if there is one, else the
    /// issuer key; `None` without either. The data key comes first because protecting data at
    /// rest is its purpose; either stays the same for the life of a data directory (the
    /// engine refuses to open one with a data key added or removed, and card keys depend on
    /// the issuer key), so codes keep matching.
    pub fn from_config(cfg: &EngineConfig) -> Option<RechargeKey> {
        if let Some(k) = &cfg.data_key {
            return Some(RechargeKey {
                key: k.derive_subkey(SALT_FROM_DATA_KEY, KEY_INFO),
                source: KeySource::DataKey,
            });
        }
        cfg.issuer_key.as_ref().map(|k| RechargeKey {
            key: k.derive_subkey(SALT_FROM_ISSUER_KEY, KEY_INFO),
            source: KeySource::IssuerKey,
        })
    }

    /// A key of the given bytes (tests).
    pub fn from_bytes(key: [u8; 32], source: KeySource) -> RechargeKey {
        RechargeKey { key, source }
    }

    fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// The keyed hash of a normalised code ([`normalise`]), in lower-case hex: its record's
    /// key.
    pub fn code_mac(&self, code: &Code) -> String {
        to_hex(&self.mac(code.0.as_bytes()))
    }

    /// 16 hex digits that tell this key from another without revealing it.
    pub fn check_value(&self) -> String {
        to_hex(&self.mac(KEY_CHECK_LABEL)[..8])
    }
}

/// A code in its normal form: [`CODE_SYMBOLS`] symbols of [`ALPHABET`], no separators.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

// A code is a bearer secret until redeemed: never in debug output.
impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(<secret>)")
    }
}

impl Code {
    /// A new code: [`CODE_SYMBOLS`] symbols, each from 5 bits of `rng` (a byte's low 5 bits:
    /// 256 is a multiple of 32, so every symbol is equally likely).
    pub fn generate(rng: &mut impl RngCore) -> Code {
        let mut bytes = [0u8; CODE_SYMBOLS];
        rng.fill_bytes(&mut bytes);
        Code(
            bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
                .collect(),
        )
    }

    /// As printed on a card and given to the operator: groups of four joined by dashes.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(CODE_SYMBOLS + CODE_SYMBOLS / GROUP);
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 && i % GROUP == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }
}

/// Why a text is not a recharge code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeFormatError {
    #[error("a recharge code is {CODE_SYMBOLS} letters and digits (dashes and spaces are ignored), not {0}")]
    Length(usize),
    #[error("a recharge code has only the digits 0-9 and the letters A-Z without U; found {0:?}")]
    Symbol(char),
    #[error("a recharge code is at most {MAX_INPUT_CHARS} characters with its dashes and spaces")]
    TooLong,
}

/// The normal form of a code as typed: case ignored, dashes and white space dropped, `O` read
/// as `0` and `I`, `L` as `1` (Crockford's decoding).
pub fn normalise(input: &str) -> Result<Code, CodeFormatError> {
    if input.chars().count() > MAX_INPUT_CHARS {
        return Err(CodeFormatError::TooLong);
    }
    let mut out = String::with_capacity(CODE_SYMBOLS);
    for c in input.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            u if u.is_ascii() && ALPHABET.contains(&(u as u8)) => u,
            _ => return Err(CodeFormatError::Symbol(c)),
        };
        out.push(c);
    }
    if out.len() != CODE_SYMBOLS {
        return Err(CodeFormatError::Length(out.len()));
    }
    Ok(Code(out))
}

/// The engine credit id of a code: `rc-` and the first 32 hex digits of its keyed hash
/// (deterministic, so the code is redeemed once however often it is presented, I6).
pub fn credit_id(code_mac: &str) -> String {
    format!("rc-{}", code_mac.get(..32).unwrap_or(code_mac))
}

/// The engine credit id of a deposit: `dep-` and 32 hex digits of SHA-256 over the request's
/// idempotency identity (caller and key), so a retry with the same key moves money once even
/// after its stored answer is swept.
pub fn deposit_credit_id(idem_identity: &str) -> String {
    format!(
        "dep-{}",
        &records::sha256_hex(idem_identity.as_bytes())[..32]
    )
}

/// Where the part of a recharge goes that the wallet's cap has no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// To the designated bank account.
    #[default]
    Bank,
    /// Refuse the recharge (the code stays usable).
    Refuse,
}

impl Overflow {
    fn target(self) -> CreditTarget {
        match self {
            Overflow::Bank => CreditTarget::WalletOverflowToBank,
            Overflow::Refuse => CreditTarget::WalletOnly,
        }
    }
}

/// Why a code was not redeemed (business refusals; faults are [`AppError`]s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemRefusal {
    /// No such code (a wrong code: counted by the throttle).
    #[error("this is not a valid recharge code")]
    Invalid,
    /// The code's batch has expired.
    #[error("this recharge code expired at {0} (unix seconds)")]
    Expired(u64),
    /// Another consumer redeemed it.
    #[error("this recharge code has been redeemed already")]
    RedeemedByOther,
    /// The engine refused the credit (the cap with `overflow: refuse`, an unknown consumer).
    #[error("{}", .0.message)]
    Engine(Refusal),
}

/// A redeemed code: where its value went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub batch: String,
    pub value: Amount,
    pub redemption: Redemption,
}

/// Redeems the code whose keyed hash is `mac` for `consumer`. Checks, in order: the code's
/// record (unknown: [`RedeemRefusal::Invalid`]; redeemed by someone else; expired, unless
/// redeemed by this consumer already), then the engine's credit. A repeat by the consumer who
/// redeemed it answers the same redemption (and sets the node's mark if a crash came between
/// the credit and the mark). One redemption of a code at a time in this node; across a crash
/// or a race the engine's credit id decides.
pub async fn redeem(
    node: &Node,
    consumer: &str,
    mac: &str,
    overflow: Overflow,
) -> Result<Result<Redeemed, RedeemRefusal>, AppError> {
    let key = records::recharge_code_key(mac);
    let Some(mut code) = node.store.get::<RechargeCode>(&key)? else {
        return Ok(Err(RedeemRefusal::Invalid));
    };
    let credit = credit_id(mac);
    let _one_at_a_time = node.order_locks.lock(&credit).await?;
    // Read again under the lock: another request may have marked it meanwhile.
    if let Some(c) = node.store.get::<RechargeCode>(&key)? {
        code = c;
    }
    let redeemed = |r: Redemption, code: &RechargeCode| Redeemed {
        batch: code.batch.clone(),
        value: code.value,
        redemption: r,
    };
    match &code.redeemed {
        Some(r) if r.consumer == consumer => return Ok(Ok(redeemed(r.clone(), &code))),
        Some(_) => return Ok(Err(RedeemRefusal::RedeemedByOther)),
        None => {}
    }
    let now = node.now();
    // Redeemed in the engine but not marked (a crash in between): the engine's record decides,
    // expired or not.
    let first = match node.engine.credit_record(&credit)? {
        Some(record) => Some(record),
        None if now >= code.expires_at => return Ok(Err(RedeemRefusal::Expired(code.expires_at))),
        None => {
            let cmd = CreditCmd {
                id: credit.clone(),
                consumer: consumer.to_string(),
                source: CreditSource::RechargeCard {
                    batch: code.batch.clone(),
                },
                target: overflow.target(),
                amount: code.value,
            };
            match node.engine.credit(cmd, now).await? {
                Ok(_) => node.engine.credit_record(&credit)?,
                // Another node process cannot hold it (one node per data directory), but the
                // engine's record is the truth either way.
                Err(r) if r.kind == RefusalKind::Conflict => node.engine.credit_record(&credit)?,
                Err(r) => return Ok(Err(RedeemRefusal::Engine(r))),
            }
        }
    };
    let Some(CreditRecord::Consumer {
        consumer: owner,
        to_wallet,
        to_bank,
        ..
    }) = first
    else {
        return Err(AppError::Internal(format!(
            "credit {credit} of a recharge code is not a consumer's credit"
        )));
    };
    let redemption = Redemption {
        consumer: owner.clone(),
        at: now,
        credit: credit.clone(),
        to_wallet,
        to_bank,
    };
    code.redeemed = Some(redemption.clone());
    let mut writes = vec![store::json(key, &code)];
    let n = Notification {
        id: format!("ntf_{credit}"),
        recipient: Recipient::consumer(&owner),
        event_type: "recharge.redeemed".into(),
        payload: serde_json::json!({
            "batch": code.batch,
            "credit": credit,
            "value": code.value.to_string(),
            "to_wallet": to_wallet.to_string(),
            "to_bank": to_bank.to_string(),
            "currency": node.currency,
        }),
        created_at: now,
    };
    writes.extend(notify::writes(node, &n)?);
    // The mark and the notification in one commit: the consumer is told exactly when the
    // node's record says the code is theirs.
    node.store.commit(writes).await?;
    node.work_wake.notify();
    if owner != consumer {
        return Ok(Err(RedeemRefusal::RedeemedByOther));
    }
    Ok(Ok(redeemed(redemption, &code)))
}

/// Deposits `amount` from the consumer's designated bank account into the wallet, all of it
/// or nothing (the cap's room: `refused:amount`; the bank refusing: `refused:funds`), under
/// the engine credit id `credit` ([`deposit_credit_id`]). The node's record and the
/// consumer's notification are committed together once the engine has credited; a repeat
/// (same id and amount) answers the same and moves nothing.
pub async fn deposit(
    node: &Node,
    consumer: &str,
    credit: &str,
    amount: Amount,
) -> Result<Result<Deposit, Refusal>, AppError> {
    let now = node.now();
    let cmd = CreditCmd {
        id: credit.to_string(),
        consumer: consumer.to_string(),
        source: CreditSource::BankTransfer,
        target: CreditTarget::WalletOnly,
        amount,
    };
    if let Err(r) = node.engine.credit(cmd, now).await? {
        return Ok(Err(r));
    }
    let key = records::deposit_key(credit);
    if let Some(d) = node.store.get::<Deposit>(&key)? {
        return Ok(Ok(d));
    }
    let d = Deposit {
        credit: credit.to_string(),
        consumer: consumer.to_string(),
        amount,
        at: now,
    };
    let mut writes = vec![store::json(key, &d)];
    let n = Notification {
        id: format!("ntf_{credit}"),
        recipient: Recipient::consumer(consumer),
        event_type: "deposit.made".into(),
        payload: serde_json::json!({
            "credit": credit,
            "amount": amount.to_string(),
            "currency": node.currency,
        }),
        created_at: now,
    };
    writes.extend(notify::writes(node, &n)?);
    node.store.commit(writes).await?;
    node.work_wake.notify();
    Ok(Ok(d))
}

/// What the throttle counts wrong codes by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Consumer(String),
    Address(IpAddr),
}

/// Wrong recharge codes per consumer and per source address in a sliding window: at most
/// `limit` in any `window`. In memory (see the module's documentation for why).
///
/// An attempt takes a [`Strike`] *before* the code is looked up, atomically for both keys, so
/// that many attempts at once cannot all pass the check before any is counted; an attempt
/// that turns out not to be a guess (a right code, an expired one, a malformed one, a fault
/// before the look-up) gives it back by dropping the strike, and a wrong code keeps it
/// ([`Strike::wrong`]).
pub struct Throttle {
    limit: usize,
    window_ms: u64,
    inner: parking_lot::Mutex<Windows>,
    /// Wrong codes since start.
    pub wrong_codes: AtomicU64,
    /// Attempts refused by the throttle since start.
    pub throttled: AtomicU64,
}

#[derive(Default)]
struct Windows {
    /// The times (ms) of the strikes within the window, oldest first.
    strikes: HashMap<ThrottleKey, VecDeque<u64>>,
    /// The map's size at which stale entries are swept next.
    sweep_at: usize,
}

/// At most this many wrong codes per window, per consumer and per address.
pub const WRONG_CODES_LIMIT: usize = 5;
/// The window: 15 minutes.
pub const WRONG_CODES_WINDOW: Duration = Duration::from_secs(15 * 60);

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WRONG_CODES_LIMIT, WRONG_CODES_WINDOW)
    }
}

/// One attempt counted against the throttle until it is known not to be a guess.
#[must_use = "a strike is given back when dropped; call `wrong()` to keep it"]
pub struct Strike<'a> {
    throttle: &'a Throttle,
    keys: Vec<ThrottleKey>,
    at_ms: u64,
    keep: bool,
}

impl Strike<'_> {
    /// The code was wrong: the strike stays counted for the window.
    pub fn wrong(mut self) {
        self.keep = true;
        self.throttle.wrong_codes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Strike<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.throttle.give_back(&self.keys, self.at_ms);
        }
    }
}

impl Throttle {
    pub fn new(limit: usize, window: Duration) -> Throttle {
        Throttle {
            limit: limit.max(1),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            inner: parking_lot::Mutex::new(Windows {
                strikes: HashMap::new(),
                sweep_at: 1024,
            }),
            wrong_codes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    /// Takes a strike for `consumer` and `address` at `now_ms`, or says how long until the
    /// one over its limit may try again (at least a second).
    pub fn strike(
        &self,
        consumer: &str,
        address: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<Strike<'_>, Duration> {
        let mut keys = vec![ThrottleKey::Consumer(consumer.to_string())];
        keys.extend(address.map(ThrottleKey::Address));
        let mut w = self.inner.lock();
        let horizon = now_ms.saturating_sub(self.window_ms);
        let mut wait_ms = 0u64;
        for k in &keys {
            if let Some(q) = w.strikes.get_mut(k) {
                while q.front().is_some_and(|t| *t <= horizon) {
                    q.pop_front();
                }
                if q.len() >= self.limit {
                    let oldest = q.front().copied().unwrap_or(now_ms);
                    wait_ms = wait_ms.max((oldest + self.window_ms).saturating_sub(now_ms));
                }
            }
        }
        if wait_ms > 0 {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(Duration::from_millis(wait_ms.div_ceil(1000).max(1) * 1000));
        }
        for k in &keys {
            w.strikes.entry(k.clone()).or_default().push_back(now_ms);
        }
        // Stale windows are swept when the map has doubled since the last sweep: amortised
        // constant work, and the map holds only what the window still counts.
        if w.strikes.len() >= w.sweep_at {
            w.strikes
                .retain(|_, q| q.back().is_some_and(|t| *t > horizon));
            w.sweep_at = (w.strikes.len() * 2).max(1024);
        }
        Ok(Strike {
            throttle: self,
            keys,
            at_ms: now_ms,
            keep: false,
        })
    }

    fn give_back(&self, keys: &[ThrottleKey], at_ms: u64) {
        let mut w = self.inner.lock();
        for k in keys {
            if let Some(q) = w.strikes.get_mut(k) {
                if let Some(i) = q.iter().rposition(|t| *t == at_ms) {
                    q.remove(i);
                }
                if q.is_empty() {
                    w.strikes.remove(k);
                }
            }
        }
    }

    /// Consumers and addresses with strikes in memory.
    pub fn tracked(&self) -> usize {
        self.inner.lock().strikes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_100_random_bits_in_groups_of_crockford_base32() {
        let mut rng = rand::rngs::OsRng;
        let c = Code::generate(&mut rng);
        assert_eq!(c.0.len(), CODE_SYMBOLS);
        assert!(c.0.bytes().all(|b| ALPHABET.contains(&b)));
        let shown = c.display();
        assert_eq!(shown.len(), 24);
        assert_eq!(shown.split('-').count(), 5);
        assert!(shown.split('-').all(|g| g.len() == 4));
        assert_eq!(normalise(&shown).unwrap(), c);
        // Distinct (a collision of 100-bit codes in a thousand draws would be a broken RNG).
        let drawn: std::collections::HashSet<String> =
            (0..1000).map(|_| Code::generate(&mut rng).0).collect();
        assert_eq!(drawn.len(), 1000);
        assert_eq!(format!("{c:?}"), "Code(<secret>)");
    }

    #[test]
    fn input_is_normalised_in_case_separators_and_look_alikes() {
        let c = normalise("ABCD-EFGH-JKMN-PQRS-TVWX").unwrap();
        for typed in [
            "abcd-efgh-jkmn-pqrs-tvwx",
            "ABCDEFGHJKMNPQRSTVWX",
            " abcd efgh  jkmn-pqrs - tvwx\t",
        ] {
            assert_eq!(normalise(typed).unwrap(), c, "{typed:?}");
        }
        // O is 0, I and L are 1.
        assert_eq!(
            normalise("O1IL-0000-0000-0000-0000").unwrap(),
            normalise("0111-0000-0000-0000-0000").unwrap()
        );
        assert_eq!(
            normalise("ABCD-EFGH-JKMN-PQRS-TVW"),
            Err(CodeFormatError::Length(19))
        );
        assert_eq!(
            normalise("ABCD-EFGH-JKMN-PQRS-TVWXY"),
            Err(CodeFormatError::Length(21))
        );
        assert_eq!(
            normalise("ABCD-EFGH-JKMN-PQRS-TVWU"),
            Err(CodeFormatError::Symbol('U'))
        );
        assert_eq!(
            normalise("ABCD-EFGH-JKMN-PQRS-TVW\u{e9}"),
            Err(CodeFormatError::Symbol('\u{e9}'))
        );
        assert_eq!(normalise(&"-".repeat(65)), Err(CodeFormatError::TooLong));
        assert_eq!(normalise(""), Err(CodeFormatError::Length(0)));
    }

    #[test]
    fn the_keyed_hash_depends_on_the_key_and_hides_the_code() {
        let k1 = RechargeKey::from_bytes([1; 32], KeySource::DataKey);
        let k2 = RechargeKey::from_bytes([2; 32], KeySource::DataKey);
        let c = normalise("ABCD-EFGH-JKMN-PQRS-TVWX").unwrap();
        let m = k1.code_mac(&c);
        assert_eq!(m.len(), 64);
        assert_eq!(m, k1.code_mac(&normalise("abcdefghjkmnpqrstvwx").unwrap()));
        assert_ne!(m, k2.code_mac(&c));
        assert!(!m.to_uppercase().contains("ABCD"));
        assert_ne!(k1.check_value(), k2.check_value());
        assert_eq!(credit_id(&m).len(), 35);
        assert!(credit_id(&m).starts_with("rc-"));
        assert!(!format!("{k1:?}").contains("01"));
    }

    #[test]
    fn the_key_comes_from_the_data_key_first_then_the_issuer_key() {
        let mut cfg = EngineConfig::default();
        assert!(RechargeKey::from_config(&cfg).is_none());
        cfg.issuer_key = Some(onecard_engine::cards::IssuerKey::from_bytes([3; 32]));
        let from_issuer = RechargeKey::from_config(&cfg).unwrap();
        assert_eq!(from_issuer.source, KeySource::IssuerKey);
        cfg.data_key = Some(onecard_engine::DataKey::from_bytes([3; 32]));
        let from_data = RechargeKey::from_config(&cfg).unwrap();
        assert_eq!(from_data.source, KeySource::DataKey);
        // The same bytes as either secret give different keys (their own salts).
        assert_ne!(from_issuer.check_value(), from_data.check_value());
    }

    #[test]
    fn deposit_ids_are_per_caller_and_key() {
        let a = deposit_credit_id("ik/c:alice/k1");
        assert_eq!(a, deposit_credit_id("ik/c:alice/k1"));
        assert_ne!(a, deposit_credit_id("ik/c:bob/k1"));
        assert_eq!(a.len(), 36);
    }

    const IP1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const IP2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_throttle_counts_wrong_codes_per_consumer_and_per_address() {
        let t = Throttle::new(3, Duration::from_secs(60));
        for i in 0..3 {
            t.strike("alice", Some(IP1), 1_000 + i).unwrap().wrong();
        }
        // alice is over, from any address; so is the address, for anyone.
        let wait = t.strike("alice", Some(IP2), 2_000).err().unwrap();
        assert_eq!(wait, Duration::from_secs(59));
        assert!(t.strike("bob", Some(IP1), 2_000).is_err());
        // bob from elsewhere is not.
        t.strike("bob", Some(IP2), 2_000).unwrap().wrong();
        assert_eq!(t.wrong_codes.load(Ordering::Relaxed), 4);
        assert_eq!(t.throttled.load(Ordering::Relaxed), 2);
        // The window slides: a minute after the first strike, one more may try.
        assert_eq!(
            t.strike("alice", Some(IP2), 60_999).err(),
            Some(Duration::from_secs(1))
        );
        assert!(t.strike("alice", Some(IP2), 61_000).is_ok());
    }

    #[test]
    fn a_strike_that_was_no_guess_is_given_back() {
        let t = Throttle::new(2, Duration::from_secs(60));
        for _ in 0..10 {
            // A right code, an expired one: dropped, not counted.
            drop(t.strike("alice", Some(IP1), 5).unwrap());
        }
        assert_eq!(t.tracked(), 0);
        // Strikes held at once count at once: a burst cannot pass the check together.
        let a = t.strike("alice", Some(IP1), 6).unwrap();
        let b = t.strike("alice", Some(IP1), 6).unwrap();
        assert!(t.strike("alice", Some(IP1), 6).is_err());
        a.wrong();
        drop(b);
        assert!(t.strike("alice", None, 7).is_ok());
    }

    #[test]
    fn stale_windows_are_swept() {
        let t = Throttle::new(1, Duration::from_secs(1));
        for i in 0..5000u32 {
            t.strike(&format!("c{i}"), None, u64::from(i) * 10)
                .unwrap()
                .wrong();
        }
        // Only what the last second still counts (and what came since the last sweep).
        assert!(t.tracked() < 2200, "{}", t.tracked());
    }
}
