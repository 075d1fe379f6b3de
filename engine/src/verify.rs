//! `onecard verify`: replays the whole journal from its first record and checks I1–I6 and I8.
//!
//! Independent of the running engine: it opens the store itself, checks every record's
//! framing, checksum, sequence number and hash link, applies every entry to a fresh ledger
//! (which refuses unbalanced events, wallets out of range, credit above the limit, double
//! settlement, over-refunds and reused ids), recomputes every account's balance from the
//! postings alone and compares, checks that all balances sum to zero, and checks that the
//! account-state view (what the node starts from) equals the replayed state, account by
//! account and order by order.
//!
//! A running node holds the view's store (locked), so [`verify`] runs on a stopped node's
//! data or a copy. Beside a running node, [`verify_log`] does every check of the log alone up
//! to its last durable record (`Engine::verify_log`), without the view comparison.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use std::sync::Arc;

use onecard_storage::wal::{WalError, WalReader};

use crate::journal::{self, JournalError, Layout, ViewStore};
use crate::ledger::{AccountRef, EventKind, LedgerState};
use crate::model::{OrderState, RulesConfig};
use crate::money::Amount;
use crate::view::{Overlay, StateView, ViewError, ViewWrite};

/// Where verification failed, naming the record when there is one.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("record {seq}: {reason}")]
    Record { seq: u64, reason: String },
    #[error("{0}")]
    Final(String),
}

/// What a successful verification saw.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub records: u64,
    pub entries: u64,
    pub events: u64,
    pub consumers: usize,
    pub merchants: usize,
    pub clearing_accounts: usize,
    pub wallets_total: Amount,
    pub merchants_total: Amount,
    pub clearing_total: Amount,
    pub orders_by_state: BTreeMap<&'static str, usize>,
    /// Top-ups the bank paid, and top-ups it refused (the wallet stayed as it was).
    pub topups_done: u64,
    pub topups_refused: u64,
    /// The record the account-state view is at, once it was found equal to the replay.
    pub view_checked: Option<u64>,
    /// The log alone was checked ([`verify_log`], beside a running node): the account-state
    /// view was not compared.
    pub log_only: bool,
    pub state: LedgerState,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "journal: {} records, {} entries, {} events; hash chain intact",
            self.records, self.entries, self.events
        )?;
        writeln!(
            f,
            "accounts: {} consumers (wallets), {} merchants, {} bank clearing accounts",
            self.consumers, self.merchants, self.clearing_accounts
        )?;
        writeln!(
            f,
            "totals: wallets {}, merchants {}, bank clearing {}",
            self.wallets_total, self.merchants_total, self.clearing_total
        )?;
        let sum = self
            .wallets_total
            .checked_add(self.merchants_total)
            .and_then(|s| s.checked_add(self.clearing_total))
            .unwrap_or(Amount::ZERO);
        writeln!(f, "sum of all balances: {sum} (I2)")?;
        let orders: Vec<String> = self
            .orders_by_state
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "orders: {}",
            if orders.is_empty() {
                "none".to_string()
            } else {
                orders.join(", ")
            }
        )?;
        writeln!(
            f,
            "top-ups: {} paid by the bank, {} refused by the bank",
            self.topups_done, self.topups_refused
        )?;
        match self.view_checked {
            Some(s) => writeln!(
                f,
                "account-state view at record {s}: matches the replay, account by account"
            )?,
            None if self.log_only => writeln!(
                f,
                "account-state view: not compared (the log alone, read beside the running node)"
            )?,
            None => writeln!(f, "account-state view: empty journal")?,
        }
        write!(f, "invariants I1-I6 and I8: ok")
    }
}

/// Verifies the journal in `data_dir` (the directory `onecard demo --data` or `serve` used).
/// Never panics on a damaged store: a panic inside the storage library is caught and reported.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_with_archive(data_dir, None)
}

/// [`verify`] for a node whose log moves old segments to `archive_dir`: the replay still
/// starts at record 1, reading the archived segments first.
pub fn verify_with_archive(
    data_dir: &Path,
    archive_dir: Option<&Path>,
) -> Result<VerifyReport, VerifyError> {
    let layout = Layout::of(data_dir);
    if !layout.log.is_dir() {
        let reason = if data_dir.join("journal").exists() {
            "it holds a journal in the older sled format (DIR/journal), which this version does not read"
        } else {
            "no journal here"
        };
        return Err(VerifyError::Open {
            path: layout.log.display().to_string(),
            reason: reason.into(),
        });
    }
    // sled would create an empty store where the files are gone; that is damage, not a view.
    for file in ["conf", "db"] {
        if !layout.view.join(file).is_file() {
            return Err(VerifyError::Open {
                path: layout.view.display().to_string(),
                reason: format!("the view's {file} file is missing"),
            });
        }
    }
    let dir = data_dir.to_path_buf();
    let archive = archive_dir.map(Path::to_path_buf);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || verify_store(&dir, archive.as_deref()));
    std::panic::set_hook(hook);
    match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(VerifyError::Open {
                path: data_dir.display().to_string(),
                reason: format!("the store is damaged: {msg}"),
            })
        }
    }
}

/// The checks of [`verify`] that need the log alone, for a node that is running: every record
/// from record 1 up to record `upto` (a durable one: nothing being written is read) is checked
/// for framing, checksum, sequence number and hash link (I8), every entry is applied to a
/// fresh ledger (I1, I3-I6 as the ledger refuses them), the balances moved by the postings
/// alone are compared with the ledger's, and everything must sum to zero (I2). The
/// account-state view is not compared with the replay: the running node holds it (its store is
/// locked) and it is ahead of `upto` by then; [`VerifyReport::log_only`] says so. Reads only the
/// log's files; blocking, and as costly as a full replay.
pub fn verify_log(
    data_dir: &Path,
    archive_dir: Option<&Path>,
    upto: u64,
) -> Result<VerifyReport, VerifyError> {
    let open_err = |e: String| VerifyError::Open {
        path: data_dir.display().to_string(),
        reason: e,
    };
    let mut replay = Replay::default();
    let records =
        journal::read_log_upto(data_dir, archive_dir, upto).map_err(|e| open_err(e.to_string()))?;
    for rec in records {
        let (rec, _writes) = rec.map_err(rec_err(replay.last_seq))?;
        replay.record(&rec)?;
    }
    if replay.last_seq < upto {
        return Err(VerifyError::Record {
            seq: replay.last_seq + 1,
            reason: format!(
                "missing: the journal is at record {upto} but the log ends at record {}",
                replay.last_seq
            ),
        });
    }
    let mut report = replay.finish()?;
    report.log_only = true;
    Ok(report)
}

/// A journal error as the record it is about.
fn rec_err(last_seq: u64) -> impl Fn(JournalError) -> VerifyError {
    move |e| match e {
        JournalError::Corrupt { seq, reason } => VerifyError::Record { seq, reason },
        JournalError::Log(WalError::Corrupt { seq, .. }) => VerifyError::Record {
            seq,
            reason: e.to_string(),
        },
        other => VerifyError::Record {
            seq: last_seq + 1,
            reason: other.to_string(),
        },
    }
}

/// The replay of the log's entries into a fresh ledger, record by record, and the checks on
/// it: what [`verify`] and [`verify_log`] share.
struct Replay {
    state: LedgerState,
    /// The sum of every posting so far (I2: zero at the end).
    posted: Amount,
    report: VerifyReport,
    last_seq: u64,
}

impl Default for Replay {
    fn default() -> Replay {
        Replay {
            state: LedgerState::new(RulesConfig::default()),
            posted: Amount::ZERO,
            report: VerifyReport::default(),
            last_seq: 0,
        }
    }
}

impl Replay {
    /// Applies a record's entries, checking each entry's postings against the ledger.
    fn record(&mut self, rec: &journal::DecodedRecord) -> Result<(), VerifyError> {
        for entry in &rec.entries {
            let record_err = |reason: String| VerifyError::Record {
                seq: rec.seq,
                reason,
            };
            // What the entry's postings move, per account, and the ledger's balances before.
            let mut moved: Vec<(&AccountRef, Amount)> = Vec::new();
            for p in entry.events.iter().flat_map(|ev| &ev.postings) {
                self.posted = self
                    .posted
                    .checked_add(p.amount)
                    .map_err(|e| record_err(e.to_string()))?;
                match moved.iter_mut().find(|(a, _)| *a == &p.account) {
                    Some((_, m)) => {
                        *m = m
                            .checked_add(p.amount)
                            .map_err(|e| record_err(e.to_string()))?
                    }
                    None => moved.push((&p.account, p.amount)),
                }
            }
            let before: Vec<Option<Amount>> = moved
                .iter()
                .map(|(a, _)| balance_of(&self.state, a))
                .collect();
            self.state
                .apply_entry(entry)
                .map_err(|e| record_err(e.to_string()))?;
            // Balances from the postings alone must move as the ledger's did: checked entry by
            // entry, so that no second copy of every balance is held.
            for ((account, amount), before) in moved.iter().zip(before) {
                let after = balance_of(&self.state, account);
                let expected = before.unwrap_or(Amount::ZERO).checked_add(*amount).ok();
                if after.is_none() || after != expected {
                    return Err(record_err(format!(
                        "{} {account:?}: its postings move {amount} from {} but the ledger holds {after:?}",
                        account.kind(),
                        before.unwrap_or(Amount::ZERO)
                    )));
                }
            }
            for ev in &entry.events {
                self.report.events += 1;
                match ev.kind {
                    EventKind::WalletToppedUp { .. } => self.report.topups_done += 1,
                    EventKind::TopUpRefused { .. } => self.report.topups_refused += 1,
                    _ => {}
                }
            }
            self.report.entries += 1;
        }
        self.last_seq = rec.seq;
        self.report.records += 1;
        Ok(())
    }

    /// The checks on the whole replay: everything sums to zero (I2), every consumer's
    /// reserved credit is what its open orders add up to. The report, with the state.
    fn finish(self) -> Result<VerifyReport, VerifyError> {
        let Replay {
            state,
            posted,
            mut report,
            ..
        } = self;
        // Every posting sums to zero (I2), and so do the balances they made.
        fn total(
            mut amounts: impl Iterator<Item = Amount>,
        ) -> Result<Amount, crate::money::AmountError> {
            amounts.try_fold(Amount::ZERO, |t, a| t.checked_add(a))
        }
        let final_err = |e: crate::money::AmountError| VerifyError::Final(e.to_string());
        report.wallets_total =
            total(state.consumers.values().map(|c| c.wallet)).map_err(final_err)?;
        report.merchants_total =
            total(state.merchants.values().map(|m| m.balance)).map_err(final_err)?;
        // The clearing accounts of consumers' and merchants' (payouts) bank accounts.
        report.clearing_total = total(
            state
                .consumers
                .values()
                .flat_map(|c| {
                    std::iter::once(c.bank_clearing).chain(c.linked.values().map(|l| l.clearing))
                })
                .chain(state.merchant_clearing.values().copied()),
        )
        .map_err(final_err)?;
        let sum = report
            .wallets_total
            .checked_add(report.merchants_total)
            .and_then(|s| s.checked_add(report.clearing_total))
            .map_err(final_err)?;
        if !posted.is_zero() || sum != posted {
            return Err(VerifyError::Final(format!(
                "I2 violated: the postings sum to {posted} and the balances to {sum}, not zero"
            )));
        }
        report.consumers = state.consumers.len();
        report.merchants = state.merchants.len();
        report.clearing_accounts = state.bank_owner.len();
        for c in state.consumers.values() {
            for o in c.orders.values() {
                *report.orders_by_state.entry(o.state.as_str()).or_default() += 1;
            }
            // No final `reserved <= credit_limit` here: I4 holds at the moment of every
            // reservation (the replay checks it at each `OrderPlaced`), and a limit lowered
            // later (SPEC F10) keeps what is reserved, so a consumer may end above a lowered
            // limit.
            let reserved: Amount = c
                .orders
                .values()
                .filter(|o| {
                    o.reserved
                        && matches!(
                            o.state,
                            OrderState::Pending | OrderState::Disputed | OrderState::AwaitingFunds
                        )
                })
                .try_fold(Amount::ZERO, |s, o| s.checked_add(o.amount))
                .map_err(|e| VerifyError::Final(e.to_string()))?;
            if reserved != c.reserved {
                return Err(VerifyError::Final(format!(
                    "{}: reserved {} but its open orders add up to {reserved}",
                    c.id, c.reserved
                )));
            }
        }
        report.state = state;
        Ok(report)
    }
}

/// An account's balance as the ledger holds it; `None` if the account does not exist.
fn balance_of(state: &LedgerState, account: &AccountRef) -> Option<Amount> {
    match account {
        AccountRef::Wallet(c) => state.consumers.get(c).map(|c| c.wallet),
        AccountRef::Merchant(m) => state.merchants.get(m).map(|m| m.balance),
        AccountRef::BankClearing(b) => match state.bank_owner.get(b) {
            Some(c) => state.consumers.get(c).and_then(|c| {
                if c.bank == *b {
                    Some(c.bank_clearing)
                } else {
                    c.linked.get(b).map(|l| l.clearing)
                }
            }),
            // A merchant's bank account (payouts).
            None => state.merchant_clearing.get(b).copied(),
        },
    }
}

fn verify_store(dir: &Path, archive_dir: Option<&Path>) -> Result<VerifyReport, VerifyError> {
    let open_err = |e: String| VerifyError::Open {
        path: dir.display().to_string(),
        reason: e,
    };
    // A small cache: verify reads the checkpoint once, in key order.
    let store =
        ViewStore::open_to_check(dir, Some(16 << 20)).map_err(|e| open_err(e.to_string()))?;
    let checkpoint = StateView::new(store.runs.clone(), Arc::new(Overlay::default()));
    let checkpoint_seq = checkpoint
        .meta()
        .map_err(|e| open_err(e.to_string()))?
        .map_or(0, |m| m.last_seq);
    let store_id = checkpoint.store_id().map_err(|e| open_err(e.to_string()))?;
    let reader =
        WalReader::open(&Layout::of(dir).log, archive_dir).map_err(|e| open_err(e.to_string()))?;
    if let (Some(view_id), Some(log_id)) = (store_id, reader.store_id()) {
        if view_id != log_id {
            return Err(open_err(
                "the view's checkpoint belongs to another store than the log".into(),
            ));
        }
    }
    if reader.first_seq().is_some_and(|f| f > 1) {
        return Err(open_err(format!(
            "the log's segments start at record {}: records 1 to {} are neither here nor in the archive directory",
            reader.first_seq().unwrap_or(0),
            reader.first_seq().unwrap_or(1) - 1
        )));
    }
    let stamp = checkpoint
        .checkpoint_stamp()
        .map_err(|e| open_err(e.to_string()))?;
    // The tail after the checkpoint, as the node would replay it at opening.
    let tail = Arc::new(Overlay::default());
    // The keys no replay of the entries derives, rebuilt from every record's writes.
    let mut non_ledger: BTreeMap<Box<[u8]>, Option<WrittenDigest>> = BTreeMap::new();
    let mut replay = Replay::default();
    for rec in journal::read_log(dir, archive_dir).map_err(|e| open_err(e.to_string()))? {
        let (rec, writes) = rec.map_err(rec_err(replay.last_seq))?;
        if rec.seq == checkpoint_seq {
            let reason = match stamp {
                Some((seq, hash)) if seq == rec.seq && hash == rec.hash => None,
                Some((seq, _)) if seq != rec.seq => Some(format!(
                    "the view's checkpoint covers this record but its stamp names record {seq}"
                )),
                Some(_) => Some(
                    "altered: it is not the record the view's checkpoint covers (its hash differs from the checkpoint's stamp)".to_string(),
                ),
                None => Some(
                    "the view's checkpoint covers this record but has no stamp (written by an older version?)".to_string(),
                ),
            };
            if let Some(reason) = reason {
                return Err(VerifyError::Record {
                    seq: rec.seq,
                    reason,
                });
            }
        }
        for w in &writes {
            if w.key()
                .first()
                .is_some_and(|p| StateView::NON_LEDGER_PREFIXES.contains(p))
            {
                let value = match w {
                    ViewWrite::Put(_, v) => Some(written_digest(v)),
                    ViewWrite::Remove(_) => None,
                };
                non_ledger.insert(w.key().into(), value);
            }
        }
        if rec.seq > checkpoint_seq {
            tail.apply(rec.seq, writes);
        }
        replay.record(&rec)?;
    }
    let last_seq = replay.last_seq;
    if checkpoint_seq > last_seq {
        return Err(VerifyError::Record {
            seq: last_seq + 1,
            reason: format!(
                "missing: the view's checkpoint covers record {checkpoint_seq} but the log ends at record {last_seq}"
            ),
        });
    }
    let view = StateView::new(store.runs.clone(), tail);
    check_view(&view, last_seq, &replay.state)?;
    check_non_ledger(&view, non_ledger)?;
    let mut report = replay.finish()?;
    if last_seq > 0 {
        report.view_checked = Some(last_seq);
    }
    drop(store);
    Ok(report)
}

/// The view's keys that are not the ledger's (the simulated bank's accounts, the
/// bank-operation index) must equal what the log's records wrote, key by key.
/// What verify keeps of a value the log wrote to a key no replay derives: its digest (SHA-256,
/// first 16 bytes), not the value (a million simulated bank accounts at a million consumers).
type WrittenDigest = [u8; 16];

fn written_digest(value: &[u8]) -> WrittenDigest {
    use sha2::Digest;
    let full = sha2::Sha256::digest(value);
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

fn check_non_ledger(
    view: &StateView,
    mut written: BTreeMap<Box<[u8]>, Option<WrittenDigest>>,
) -> Result<(), VerifyError> {
    let differs = |what: String| {
        Err(VerifyError::Final(format!(
            "account-state view differs from the log's records: {what}"
        )))
    };
    let shown = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for prefix in StateView::NON_LEDGER_PREFIXES {
        for kv in view.entries_under(&[prefix]) {
            let (k, v) = kv.map_err(|e| VerifyError::Final(format!("account-state view: {e}")))?;
            match written.remove(k.as_slice()) {
                Some(Some(w)) if w == written_digest(&v) => {}
                Some(Some(_)) => return differs(format!("key {} holds another value", shown(&k))),
                _ => return differs(format!("key {} was never written", shown(&k))),
            }
        }
    }
    match written.into_iter().find(|(_, v)| v.is_some()) {
        Some((k, _)) => differs(format!("key {} is missing", shown(&k))),
        None => Ok(()),
    }
}

/// The account-state view must be at the last record and equal the replay exactly. Names the
/// first account or order that differs.
fn check_view(view: &StateView, last_seq: u64, replayed: &LedgerState) -> Result<(), VerifyError> {
    let damaged = |e: ViewError| VerifyError::Final(format!("account-state view: {e}"));
    let meta = view.meta().map_err(damaged)?;
    if last_seq == 0 {
        return match meta {
            None => Ok(()),
            Some(_) => Err(VerifyError::Final(
                "account-state view: present, but the journal is empty".into(),
            )),
        };
    }
    let meta = meta.ok_or_else(|| {
        VerifyError::Final("account-state view: missing (written by an older version?)".into())
    })?;
    if meta.last_seq != last_seq {
        return Err(VerifyError::Final(format!(
            "account-state view: at record {}, but the journal ends at record {last_seq}",
            meta.last_seq
        )));
    }
    match view.differs_from(replayed).map_err(damaged)? {
        Ok(()) => Ok(()),
        Err(what) => Err(VerifyError::Final(format!(
            "account-state view differs from the replay: {what}"
        ))),
    }
}
