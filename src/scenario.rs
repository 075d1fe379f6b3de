//! `onecard scenario FILE...`: plays scenario files (`shared/scenarios/FORMAT.md`) against a
//! fresh engine — the real actors, the journal on sled in a temporary directory and the
//! simulated bank — and reports every expectation that fails.

use std::path::Path;
use std::sync::Arc;

use onecard_engine::commands::{
    parse_release, BankTransferCmd, CreditCmd, FundCmd, PlaceCmd, ReaderPayment,
};
use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::ledger::{recharge_clearing, GatewayRules};
use onecard_engine::model::{CommandResult, RulesConfig};
use onecard_engine::{
    verify, Amount, CreditSource, CreditTarget, Engine, EngineError, Outcome, Refusal, Release,
    SimBank, SimBankPort,
};
use serde_json::{Map, Value};

/// The result of one scenario file.
pub struct ScenarioOutcome {
    pub name: String,
    pub steps: usize,
    pub failures: Vec<String>,
}

/// Reads the rules of a scenario's `config`, with FORMAT.md's defaults (not config.toml's).
fn scenario_rules(cfg: Option<&Value>) -> Result<RulesConfig, String> {
    let d = RulesConfig::default();
    let empty = Map::new();
    let cfg = match cfg {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => return Err(format!("config must be an object, got {other}")),
    };
    let amount = |k: &str| -> Result<Option<Amount>, String> {
        match cfg.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Amount::parse(s)
                .map(Some)
                .map_err(|e| format!("config.{k}: {e}")),
            Some(v) => Err(format!("config.{k} must be an amount string, got {v}")),
        }
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match cfg.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("config.{k} must be a non-negative integer")),
        }
    };
    let wallet_cap = amount("wallet_cap")?.unwrap_or(d.wallet_cap);
    let rules = RulesConfig {
        wallet_cap,
        topup_threshold: amount("topup_threshold")?.unwrap_or(wallet_cap),
        direct_max: amount("direct_max")?.unwrap_or(d.direct_max),
        order_expiry_secs: int("order_expiry_secs")?.unwrap_or(d.order_expiry_secs),
        code_attempts_max: int("code_attempts_max")?
            .map(|n| {
                u32::try_from(n).map_err(|_| "config.code_attempts_max is too large".to_string())
            })
            .transpose()?
            .unwrap_or(d.code_attempts_max),
        auth: d.auth.clone(),
    };
    rules.validate()?;
    Ok(rules)
}

fn outcome_str(r: &CommandResult) -> String {
    match r {
        Ok(o) => o.as_str().to_string(),
        Err(refusal) => refusal.code_str(),
    }
}

/// A text field; `None` when it is absent or not a string.
fn text<'a>(step: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    step.get(key).and_then(Value::as_str)
}

/// An amount field as given. A value that is not a string can never be a valid amount, so it
/// is passed on in a form the amount parser refuses.
fn amount_text(step: &Map<String, Value>, key: &str) -> String {
    match step.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => format!("<not a string: {other}>"),
        None => "<missing>".to_string(),
    }
}

/// Where a player keeps its data: a temporary directory (scenarios) or one the user named.
enum DataDir {
    Temp(tempfile::TempDir),
    Given(std::path::PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }
}

struct Player {
    dir: DataDir,
    cfg: EngineConfig,
    engine: Option<Engine>,
    bank: Option<Arc<SimBank>>,
    clock: u64,
}

impl Player {
    /// Opens the simulated bank and the engine; returns how long each took, in ms.
    async fn open(&mut self) -> Result<(f64, f64), String> {
        let started = std::time::Instant::now();
        let bank = SimBank::open(self.dir.path()).map_err(|e| e.to_string())?;
        let bank_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        let engine = Engine::open(
            self.dir.path(),
            self.cfg.clone(),
            Arc::new(SimBankPort(bank.clone())),
        )
        .await
        .map_err(|e| e.to_string())?;
        let engine_ms = started.elapsed().as_secs_f64() * 1e3;
        self.clock = self.clock.max(engine.clock());
        self.engine = Some(engine);
        self.bank = Some(bank);
        Ok((bank_ms, engine_ms))
    }

    async fn close(&mut self) -> Result<(), String> {
        if let Some(e) = self.engine.take() {
            e.close().await.map_err(|e| e.to_string())?;
        }
        if let Some(b) = self.bank.take() {
            b.close();
        }
        Ok(())
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("engine open between steps")
    }

    fn bank(&self) -> &SimBank {
        self.bank.as_ref().expect("bank open between steps")
    }

    /// Runs one command; `Ok` is the outcome string (`ok`, `settled`, `refused:credit`, …).
    async fn command(&mut self, op: &str, step: &Map<String, Value>) -> Result<String, String> {
        if op == "restart" {
            self.close().await?;
            self.open().await?;
            return Ok(outcome_str(&Ok(onecard_engine::Outcome::Ok)));
        }
        self.run(op, step, self.clock).await
    }

    /// Runs one command other than `restart` at the clock `now`.
    async fn run(&self, op: &str, step: &Map<String, Value>, now: u64) -> Result<String, String> {
        let fault = |e: EngineError| format!("engine fault: {e}");
        let result: CommandResult = match op {
            "open_consumer" => self.open_consumer(step, now).await.map_err(fault)?,
            "open_merchant" => self.open_merchant(step, now).await.map_err(fault)?,
            "bank_mode" => {
                let bank = text(step, "bank").unwrap_or_default();
                match step.get("refuse").and_then(Value::as_bool) {
                    None => Err(Refusal::invalid("bank_mode needs a boolean \"refuse\"")),
                    Some(_) if !self.bank().exists(bank) => {
                        Err(Refusal::unknown(format!("no bank account {bank:?}")))
                    }
                    Some(refuse) => self
                        .bank()
                        .set_refuse(bank, refuse)
                        .map(|_| onecard_engine::Outcome::Ok)
                        .map_err(|e| Refusal::unknown(e.to_string())),
                }
            }
            "bank_deposit" => {
                let bank = text(step, "bank").unwrap_or_default();
                match Amount::parse_positive(&amount_text(step, "amount")) {
                    Err(e) => Err(Refusal::amount(e.to_string())),
                    Ok(_) if !self.bank().exists(bank) => {
                        Err(Refusal::unknown(format!("no bank account {bank:?}")))
                    }
                    Ok(a) => self
                        .bank()
                        .deposit(bank, a)
                        .map(|_| onecard_engine::Outcome::Ok)
                        .map_err(|e| match e {
                            onecard_engine::bank::BankError::Overflow(_) => {
                                Refusal::amount(e.to_string())
                            }
                            _ => Refusal::unknown(e.to_string()),
                        }),
                }
            }
            "place_order" => {
                let req = PlaceOrder {
                    id: text(step, "id").unwrap_or_default().to_string(),
                    consumer: text(step, "consumer").unwrap_or_default().to_string(),
                    merchant: text(step, "merchant").unwrap_or_default().to_string(),
                    amount: amount_text(step, "amount"),
                    release: step.get("release").cloned().unwrap_or(Value::Null),
                };
                self.engine().place_order(req, now).await.map_err(fault)?
            }
            "confirm_receipt" => {
                let order = text(step, "order").unwrap_or_default();
                match step.get("satisfied") {
                    None => self
                        .engine()
                        .confirm_receipt(order, true, now)
                        .await
                        .map_err(fault)?,
                    Some(Value::Bool(b)) => self
                        .engine()
                        .confirm_receipt(order, *b, now)
                        .await
                        .map_err(fault)?,
                    Some(_) => Err(Refusal::invalid("\"satisfied\" must be a boolean")),
                }
            }
            "enter_code" => {
                let order = text(step, "order").unwrap_or_default();
                match text(step, "code") {
                    Some(code) => self
                        .engine()
                        .enter_code(order, code, now)
                        .await
                        .map_err(fault)?,
                    None => Err(Refusal::invalid("enter_code needs a \"code\" string")),
                }
            }
            "cancel_order" => {
                let order = text(step, "order").unwrap_or_default();
                self.engine()
                    .cancel_order(order, now)
                    .await
                    .map_err(fault)?
            }
            "refund" => {
                let req = RefundRequest {
                    id: text(step, "id").unwrap_or_default().to_string(),
                    order: text(step, "order").unwrap_or_default().to_string(),
                    amount: amount_text(step, "amount"),
                };
                self.engine().refund(req, now).await.map_err(fault)?
            }
            "tick" => self.engine().tick(now).await.map_err(fault)?,
            other => match self.service(other, step, now).await.map_err(fault)? {
                Some(result) => result,
                None => return Err(format!("unknown command {other:?}")),
            },
        };
        Ok(outcome_str(&result))
    }

    async fn open_consumer(
        &self,
        step: &Map<String, Value>,
        now: u64,
    ) -> Result<CommandResult, EngineError> {
        let consumer = text(step, "consumer").unwrap_or_default();
        let bank = text(step, "bank").unwrap_or_default();
        let engine = self.engine();
        if engine.has_consumer(consumer)?
            || engine.has_merchant(consumer)
            || self.bank().exists(bank)
        {
            return Ok(Err(Refusal::conflict(format!(
                "consumer {consumer:?} or bank account {bank:?} already exists"
            ))));
        }
        let parse = |k: &str| {
            Amount::parse_non_negative(&amount_text(step, k))
                .map_err(|e| Refusal::amount(format!("{k}: {e}")))
        };
        let (limit, balance, wallet) = match (
            parse("credit_limit"),
            parse("bank_balance"),
            parse("wallet"),
        ) {
            (Ok(l), Ok(b), Ok(w)) => (l, b, w),
            (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return Ok(Err(r)),
        };
        if wallet > engine.rules().wallet_cap {
            return Ok(Err(Refusal::amount(format!(
                "wallet {wallet} is above the cap {}",
                engine.rules().wallet_cap
            ))));
        }
        if wallet > balance {
            return Ok(Err(Refusal::amount(format!(
                "wallet {wallet} is above the bank balance {balance}"
            ))));
        }
        if bank.is_empty() {
            return Ok(Err(Refusal::invalid("open_consumer needs a \"bank\"")));
        }
        self.bank().open_account(bank, balance)?;
        let req = OpenConsumer {
            consumer: consumer.to_string(),
            credit_limit: limit.to_string(),
            bank: bank.to_string(),
            wallet: wallet.to_string(),
        };
        engine.open_consumer(req, now).await
    }

    async fn open_merchant(
        &self,
        step: &Map<String, Value>,
        now: u64,
    ) -> Result<CommandResult, EngineError> {
        let merchant = text(step, "merchant").unwrap_or_default();
        let bank = text(step, "bank");
        let engine = self.engine();
        if engine.has_merchant(merchant)
            || engine.has_consumer(merchant)?
            || bank.is_some_and(|b| self.bank().exists(b))
        {
            return Ok(Err(Refusal::conflict(format!(
                "merchant {merchant:?} or its bank account already exists"
            ))));
        }
        let balance = match step.get("bank_balance") {
            None => Amount::ZERO,
            Some(_) => match Amount::parse_non_negative(&amount_text(step, "bank_balance")) {
                Ok(a) => a,
                Err(e) => return Ok(Err(Refusal::amount(format!("bank_balance: {e}")))),
            },
        };
        if let Some(b) = bank {
            self.bank().open_account(b, balance)?;
        }
        engine.open_merchant(merchant, bank, now).await
    }

    /// The services' commands (docs/scenarios-services.md): recharges, fundings, salaries,
    /// deposits, bills, credit limits, gateway rules, payments at readers and linked bank
    /// accounts. `None` for a command that is none of them.
    ///
    /// Each goes to the engine's typed command. A field the typed command cannot carry (a
    /// malformed amount, an `overflow` or `to` that is not one of its words, a bad release) is
    /// refused here in FORMAT.md's precedence: a malformed amount is sent as zero, which the
    /// engine refuses for `conflict` when the id is used already and for `amount` otherwise;
    /// any other malformed field is [`shape_refusal`].
    async fn service(
        &self,
        op: &str,
        step: &Map<String, Value>,
        now: u64,
    ) -> Result<Option<CommandResult>, EngineError> {
        let engine = self.engine();
        let id = text(step, "id").unwrap_or_default().to_string();
        let consumer = text(step, "consumer").unwrap_or_default().to_string();
        let amount = Amount::parse(&amount_text(step, "amount")).unwrap_or(Amount::ZERO);
        // Whether a malformed field of a credit or a funding comes after a conflict.
        let credit_used =
            || -> Result<bool, EngineError> { Ok(engine.credit_record(&id)?.is_some()) };
        let credit = |source: CreditSource, target: CreditTarget| CreditCmd {
            id: id.clone(),
            consumer: consumer.clone(),
            source,
            target,
            amount,
        };
        let result = match op {
            "recharge" => {
                let batch = text(step, "batch").unwrap_or_default().to_string();
                let target = match text(step, "overflow") {
                    Some("bank") => CreditTarget::WalletOverflowToBank,
                    Some("refuse") => CreditTarget::WalletOnly,
                    _ => {
                        return Ok(Some(Err(shape_refusal(
                            credit_used()?,
                            amount,
                            "a recharge needs \"overflow\": \"bank\" or \"refuse\"",
                        ))))
                    }
                };
                let source = CreditSource::RechargeCard { batch };
                engine.credit(credit(source, target), now).await?
            }
            "salary" => {
                let employer = text(step, "employer").unwrap_or_default().to_string();
                let target = match text(step, "to") {
                    Some("wallet") => CreditTarget::WalletOverflowToBank,
                    Some("bank") => CreditTarget::Bank,
                    _ => {
                        return Ok(Some(Err(shape_refusal(
                            credit_used()?,
                            amount,
                            "a salary needs \"to\": \"wallet\" or \"bank\"",
                        ))))
                    }
                };
                let source = CreditSource::Employer { employer };
                engine.credit(credit(source, target), now).await?
            }
            "deposit" => {
                let source = match step.get("from") {
                    None => CreditSource::BankTransfer,
                    Some(Value::String(bank)) => CreditSource::LinkedBank { bank: bank.clone() },
                    Some(_) => {
                        return Ok(Some(Err(shape_refusal(
                            credit_used()?,
                            amount,
                            "\"from\" must be the name of a linked bank account",
                        ))))
                    }
                };
                engine
                    .credit(credit(source, CreditTarget::WalletOnly), now)
                    .await?
            }
            "fund_employer" => {
                let cmd = FundCmd {
                    id: id.clone(),
                    merchant: text(step, "employer").unwrap_or_default().to_string(),
                    amount,
                };
                engine.fund_merchant(cmd, now).await?
            }
            "bill" | "pay_at_reader" => {
                let used = engine.order(&id).await?.is_some();
                let shape = |m: &str| Ok(Some(Err(shape_refusal(used, amount, m))));
                let (merchant, release, at_reader) = if op == "bill" {
                    let Some(after_secs) = step.get("due_after_secs").and_then(Value::as_u64)
                    else {
                        return shape("a bill needs \"due_after_secs\", a non-negative integer");
                    };
                    (text(step, "biller"), Release::Time { after_secs }, None)
                } else {
                    let release = match parse_release(step.get("release").unwrap_or(&Value::Null)) {
                        Ok(r) => r,
                        Err(r) => return shape(&r.message),
                    };
                    let Some(category) = text(step, "category").filter(|c| !c.is_empty()) else {
                        return shape("a payment at a reader needs a \"category\"");
                    };
                    let payment = ReaderPayment {
                        category: category.to_string(),
                    };
                    (text(step, "merchant"), release, Some(payment))
                };
                let cmd = PlaceCmd {
                    id: id.clone(),
                    consumer: consumer.clone(),
                    merchant: merchant.unwrap_or_default().to_string(),
                    amount,
                    release,
                    at_reader,
                };
                engine.place(cmd, now).await?
            }
            "set_credit_limit" => match Amount::parse(&amount_text(step, "limit")) {
                Err(e) => Err(Refusal::amount(format!("limit: {e}"))),
                Ok(limit) => {
                    let reason = text(step, "reason").unwrap_or_default();
                    engine
                        .set_credit_limit(&consumer, limit, reason, now)
                        .await?
                }
            },
            "set_gateway_rules" => {
                let rules = match step.get("rules") {
                    None => Err(Refusal::invalid(
                        "set_gateway_rules needs \"rules\" (or null)",
                    )),
                    Some(Value::Null) => Ok(None),
                    Some(v) => serde_json::from_value::<GatewayRules>(v.clone())
                        .map(Some)
                        .map_err(|e| Refusal::invalid(format!("gateway rules: {e}"))),
                };
                match rules {
                    Ok(rules) => engine.set_gateway_rules(&consumer, rules, now).await?,
                    Err(r) => Err(r),
                }
            }
            "link_bank" => {
                let bank = text(step, "bank").unwrap_or_default();
                let balance = match step.get("bank_balance") {
                    None => Amount::ZERO,
                    Some(_) => match Amount::parse(&amount_text(step, "bank_balance")) {
                        Ok(a) => a,
                        Err(e) => {
                            return Ok(Some(Err(Refusal::amount(format!("bank_balance: {e}")))))
                        }
                    },
                };
                match engine.link_bank(&consumer, bank, now).await? {
                    Ok(_) => {
                        // Linked (or linked already): the account is opened at the simulated
                        // bank if it is new there. Only then, so that a refused link opens
                        // nothing.
                        if !self.bank().exists(bank) {
                            self.bank().open_account(bank, balance)?;
                        }
                        Ok(Outcome::Ok)
                    }
                    Err(r) => Err(r),
                }
            }
            "designate_bank" => {
                let bank = text(step, "bank").unwrap_or_default();
                engine.designate_bank(&consumer, bank, now).await?
            }
            "transfer" => {
                let cmd = BankTransferCmd {
                    id: id.clone(),
                    consumer: consumer.clone(),
                    from: text(step, "from").unwrap_or_default().to_string(),
                    to: text(step, "to").unwrap_or_default().to_string(),
                    amount,
                };
                engine.transfer_between_banks(cmd, now).await?
            }
            _ => return Ok(None),
        };
        Ok(Some(result))
    }

    /// Reads one check's value as text, amounts with two decimals.
    async fn read(&self, key: &str) -> Result<String, String> {
        let engine = self.engine();
        let fault = |e: EngineError| format!("engine fault: {e}");
        if key == "total" {
            let state = engine.ledger_state().await.map_err(fault)?;
            let mut t = self.bank().total();
            for c in state.consumers.values() {
                t = t.checked_add(c.wallet).map_err(|e| e.to_string())?;
            }
            for m in state.merchants.values() {
                t = t.checked_add(m.balance).map_err(|e| e.to_string())?;
            }
            return Ok(t.to_string());
        }
        let (kind, id) = key
            .split_once(':')
            .ok_or_else(|| format!("unknown check {key:?}"))?;
        let none = || "none".to_string();
        Ok(match kind {
            "wallet" | "reserved" | "available_credit" => {
                match engine.consumer(id).await.map_err(fault)? {
                    None => none(),
                    Some(c) => match kind {
                        "wallet" => c.wallet.to_string(),
                        "reserved" => c.reserved.to_string(),
                        _ => c.available_credit().to_string(),
                    },
                }
            }
            "bank" => self
                .bank()
                .balance(id)
                .map(|a| a.to_string())
                .unwrap_or_else(none),
            "merchant" => engine
                .merchant(id)
                .await
                .map_err(fault)?
                .map(|m| m.balance.to_string())
                .unwrap_or_else(none),
            "order" => engine
                .order(id)
                .await
                .map_err(fault)?
                .map(|o| o.state.as_str().to_string())
                .unwrap_or_else(none),
            "limit" => engine
                .consumer(id)
                .await
                .map_err(fault)?
                .map(|c| c.credit_limit.to_string())
                .unwrap_or_else(none),
            // What the recharge cards of batch `id` brought in: the batch's clearing account
            // is debited by every recharge, so it holds minus that.
            "recharged" => {
                let state = engine.ledger_state().await.map_err(fault)?;
                state
                    .merchant_clearing
                    .get(&recharge_clearing(id))
                    .map(|a| a.checked_neg())
                    .unwrap_or(Amount::ZERO)
                    .to_string()
            }
            "gateway_spent" => engine
                .gateway_rules(id, self.clock)
                .map_err(fault)?
                .map(|(_, spent)| spent.to_string())
                .unwrap_or_else(none),
            "banks" => engine
                .bank_accounts(id)
                .map_err(fault)?
                .map(|b| b.join(","))
                .unwrap_or_else(none),
            "refunded" => engine
                .order(id)
                .await
                .map_err(fault)?
                .map(|o| o.refunded.to_string())
                .unwrap_or_else(none),
            _ => return Err(format!("unknown check {key:?}")),
        })
    }
}

/// A field of a service command that its typed engine command cannot carry is malformed; the
/// refusal is the one FORMAT.md's precedence gives: `conflict` when the id is used already (by
/// other content, since this content can be no one's), then `amount` for an amount that is not
/// positive, then `invalid`.
fn shape_refusal(id_used: bool, amount: Amount, what: &str) -> Refusal {
    if id_used {
        Refusal::conflict("the id is already used with other content")
    } else if !amount.is_positive() {
        Refusal::amount("an amount must be a positive amount string")
    } else {
        Refusal::invalid(what)
    }
}

/// Expected and actual agree: amounts by value, everything else as text.
fn same_value(expected: &str, actual: &str) -> bool {
    match (Amount::parse(expected), Amount::parse(actual)) {
        (Ok(a), Ok(b)) => a == b,
        _ => expected == actual,
    }
}

/// `onecard play --data DIR`: reads scenario steps, one JSON object a line, from standard input
/// and runs them against the engine on DIR (created or reopened). For each step it prints one
/// JSON line — `{"step":N,"outcome":"…","checks":{"key":"value"}}` — only after the command's
/// effects are durable, so a line on standard output is an acknowledgement. Used by the crash
/// tests, and handy for scripting. With `in_flight` above 1, up to that many steps run at once
/// (see `play_concurrent`); the answers still come one per step, in step order.
pub async fn play_stdin(data: &Path, cfg: EngineConfig, in_flight: usize) -> Result<(), String> {
    use std::io::BufRead;
    std::fs::create_dir_all(data).map_err(|e| e.to_string())?;
    let mut player = Player {
        dir: DataDir::Given(data.to_path_buf()),
        cfg,
        engine: None,
        bank: None,
        clock: 0,
    };
    let (bank_ms, engine_ms) = player.open().await?;
    {
        let r = player.engine().recovery();
        eprintln!(
            "play: serving after {:.0} ms (simulated bank {bank_ms:.0} ms; engine {engine_ms:.0} ms: store {:.0} ms ({} records of the log's tail replayed), consumer records and the bank's accounts {:.0} ms, of which the bank {:.0} ms): journal at record {}, {} entries; {} consumers, {} open orders, {} with time-driven work ahead, {} merchants; bank operations: {} confirmed, {} reversed",
            bank_ms + engine_ms,
            r.store_ms,
            r.replayed,
            r.scan_ms,
            r.bank_ms,
            r.last_seq,
            r.entries,
            r.consumers,
            r.open_orders,
            r.timed_consumers,
            r.merchants,
            r.bank_ops_confirmed,
            r.bank_ops_reversed
        );
    }
    let mut out = std::io::stdout().lock();
    if in_flight > 1 {
        play_concurrent(&mut player, in_flight, &mut out).await?;
        return player.close().await;
    }
    let stdin = std::io::stdin();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = step_reply(&mut player, i + 1, &line).await;
        emit(&mut out, reply)?;
        if player.engine.is_none() {
            return Err("the engine stopped".into());
        }
    }
    player.close().await
}

/// Prints one answer line and flushes it.
fn emit(out: &mut impl std::io::Write, reply: Map<String, Value>) -> Result<(), String> {
    writeln!(out, "{}", Value::Object(reply)).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

/// Runs step `n` (one input line) on its own: the command (at the step's `at`, if later than
/// the clock), then its checks. Returns the answer.
async fn step_reply(player: &mut Player, n: usize, line: &str) -> Map<String, Value> {
    let mut reply = Map::new();
    reply.insert("step".into(), Value::from(n));
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(step)) => {
            if let Some(t) = step.get("at").and_then(Value::as_u64) {
                player.clock = player.clock.max(t);
            }
            if let Some(op) = step.get("do") {
                let op = op.as_str().unwrap_or("<not a string>");
                match player.command(op, &step).await {
                    Ok(got) => reply.insert("outcome".into(), Value::from(got)),
                    Err(e) => reply.insert("error".into(), Value::from(e)),
                };
            }
            if let Some(checks) = step.get("check").and_then(Value::as_object) {
                let mut got = Map::new();
                for key in checks.keys() {
                    let v = player
                        .read(key)
                        .await
                        .unwrap_or_else(|e| format!("error: {e}"));
                    got.insert(key.clone(), Value::from(v));
                }
                reply.insert("checks".into(), Value::Object(got));
            }
        }
        Ok(_) | Err(_) => {
            reply.insert(
                "error".into(),
                Value::from("each line must be one JSON object"),
            );
        }
    }
    reply
}

/// The commands that may run alongside others (`--in-flight` above 1): they touch one order,
/// named by this field. Everything else (ticks, checks, the bank's steps, opening consumers and
/// merchants, restarts, anything unknown) is a barrier.
fn order_key(op: &str) -> Option<&'static str> {
    match op {
        "place_order" => Some("id"),
        "confirm_receipt" | "enter_code" | "cancel_order" | "refund" => Some("order"),
        _ => None,
    }
}

/// What the reader thread hands over: a step's number and its line, or a read error.
type InputLine = Result<(usize, String), String>;

/// `play --in-flight N`, N > 1: standard input is read on a thread of its own (a blocking read
/// here would stall the commands running); up to `n` steps run at once, and their answers are
/// printed one per step, in step order, each once that step's future has resolved (its effects
/// durable). Steps on the same order run one after the other (a step waits for the previous one
/// on its order to resolve); a barrier step waits for every step before it and holds back the
/// ones after it.
async fn play_concurrent(
    player: &mut Player,
    n: usize,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    use futures::SinkExt;
    let (mut tx, mut rx) = futures::channel::mpsc::channel::<InputLine>(n);
    std::thread::Builder::new()
        .name("play-stdin".into())
        .spawn(move || {
            use std::io::BufRead;
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let item = line.map(|l| (i + 1, l)).map_err(|e| e.to_string());
                let failed = item.is_err();
                if futures::executor::block_on(tx.send(item)).is_err() || failed {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    loop {
        let mut clock = player.clock;
        let barrier = run_until_barrier(player, &mut clock, n, &mut rx, out).await?;
        player.clock = clock;
        let Some((i, line)) = barrier else {
            return Ok(());
        };
        let reply = step_reply(player, i, &line).await;
        emit(out, reply)?;
        if player.engine.is_none() {
            return Err("the engine stopped".into());
        }
    }
}

/// Runs the steps read from `rx` concurrently (at most `n` at once) until a barrier step or the
/// end of the input; prints every answer, in step order, and returns the barrier step unrun.
async fn run_until_barrier(
    player: &Player,
    clock: &mut u64,
    n: usize,
    rx: &mut futures::channel::mpsc::Receiver<InputLine>,
    out: &mut impl std::io::Write,
) -> Result<Option<(usize, String)>, String> {
    use futures::channel::oneshot;
    use futures::future::{self, Either, FutureExt, LocalBoxFuture, Shared};
    use futures::stream::{FuturesOrdered, StreamExt};
    use std::collections::HashMap;

    let mut running: FuturesOrdered<LocalBoxFuture<'_, Map<String, Value>>> = FuturesOrdered::new();
    // The last step started on each order; it resolves when that step's future has.
    let mut last: HashMap<String, Shared<oneshot::Receiver<()>>> = HashMap::new();
    let barrier = loop {
        if running.len() >= n {
            if let Some(reply) = running.next().await {
                emit(out, reply)?;
            }
            continue;
        }
        let item = if running.is_empty() {
            rx.next().await
        } else {
            let ev = match future::select(running.next(), rx.next()).await {
                Either::Left((reply, _)) => Either::Left(reply),
                Either::Right((item, _)) => Either::Right(item),
            };
            match ev {
                Either::Left(reply) => {
                    if let Some(reply) = reply {
                        emit(out, reply)?;
                    }
                    continue;
                }
                Either::Right(item) => item,
            }
        };
        let Some(item) = item else { break None };
        let (i, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let mut reply = Map::new();
        reply.insert("step".into(), Value::from(i));
        let step = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(step)) => step,
            Ok(_) | Err(_) => {
                reply.insert(
                    "error".into(),
                    Value::from("each line must be one JSON object"),
                );
                running.push_back(future::ready(reply).boxed_local());
                continue;
            }
        };
        let op = match step.get("do") {
            None if !step.contains_key("check") => None,
            Some(Value::String(op)) if !step.contains_key("check") => match order_key(op) {
                Some(field) => Some((op.clone(), field)),
                None => break Some((i, line)),
            },
            _ => break Some((i, line)),
        };
        if let Some(t) = step.get("at").and_then(Value::as_u64) {
            *clock = (*clock).max(t);
        }
        let Some((op, field)) = op else {
            // Nothing to do: only the clock moves.
            running.push_back(future::ready(reply).boxed_local());
            continue;
        };
        let now = *clock;
        let key = text(&step, field).unwrap_or_default().to_string();
        let before = last.get(&key).cloned();
        let (done, resolved) = oneshot::channel::<()>();
        last.insert(key, resolved.shared());
        running.push_back(
            async move {
                if let Some(before) = before {
                    // Resolves (cancelled) when the previous step on this order has finished.
                    let _ = before.await;
                }
                match player.run(&op, &step, now).await {
                    Ok(got) => reply.insert("outcome".into(), Value::from(got)),
                    Err(e) => reply.insert("error".into(), Value::from(e)),
                };
                drop(done);
                reply
            }
            .boxed_local(),
        );
    };
    while let Some(reply) = running.next().await {
        emit(out, reply)?;
    }
    Ok(barrier)
}

/// Plays one scenario file and returns what failed.
pub async fn play(path: &Path) -> ScenarioOutcome {
    let mut out = ScenarioOutcome {
        name: path.display().to_string(),
        steps: 0,
        failures: vec![],
    };
    let doc: Value = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(format!("cannot read the scenario: {e}"));
            return out;
        }
    };
    if let Some(n) = doc.get("name").and_then(Value::as_str) {
        out.name = n.to_string();
    }
    let rules = match scenario_rules(doc.get("config")) {
        Ok(r) => r,
        Err(e) => {
            out.failures.push(format!("bad config: {e}"));
            return out;
        }
    };
    let Some(steps) = doc.get("steps").and_then(Value::as_array) else {
        out.failures.push("no \"steps\" array".into());
        return out;
    };
    let dir = match tempfile::Builder::new()
        .prefix("onecard-scenario-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(format!("no temporary directory: {e}"));
            return out;
        }
    };
    let cfg = EngineConfig {
        rules,
        arbiters: 2,
        ..EngineConfig::default()
    };
    let mut player = Player {
        dir: DataDir::Temp(dir),
        cfg,
        engine: None,
        bank: None,
        clock: 0,
    };
    if let Err(e) = player.open().await {
        out.failures.push(format!("cannot open the engine: {e}"));
        return out;
    }
    for (i, step) in steps.iter().enumerate() {
        out.steps += 1;
        let n = i + 1;
        let Some(step) = step.as_object() else {
            out.failures.push(format!("step {n}: not an object"));
            continue;
        };
        if let Some(at) = step.get("at") {
            match at.as_u64() {
                Some(t) if t >= player.clock => player.clock = t,
                Some(t) => out
                    .failures
                    .push(format!("step {n}: clock goes backwards to {t}")),
                None => out
                    .failures
                    .push(format!("step {n}: \"at\" must be a non-negative integer")),
            }
        }
        if let Some(op) = step.get("do") {
            let op = op.as_str().unwrap_or("<not a string>");
            match player.command(op, step).await {
                Ok(got) => {
                    if let Some(expect) = step.get("expect").and_then(Value::as_str) {
                        if got != expect {
                            out.failures
                                .push(format!("step {n} ({op}): expected {expect}, got {got}"));
                        }
                    }
                }
                Err(e) => {
                    out.failures.push(format!("step {n} ({op}): {e}"));
                    if player.engine.is_none() {
                        return out;
                    }
                }
            }
        }
        if let Some(checks) = step.get("check").and_then(Value::as_object) {
            for (key, want) in checks {
                let want = want
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| want.to_string());
                match player.read(key).await {
                    Ok(got) if same_value(&want, &got) => {}
                    Ok(got) => out
                        .failures
                        .push(format!("step {n}: check {key}: expected {want}, got {got}")),
                    Err(e) => out.failures.push(format!("step {n}: check {key}: {e}")),
                }
            }
        }
    }
    if let Err(e) = player.close().await {
        out.failures.push(format!("closing the engine: {e}"));
    }
    if let Err(e) = verify::verify(player.dir.path()) {
        out.failures.push(format!("verify: {e}"));
    }
    out
}
