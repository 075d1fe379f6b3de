//! What `onecard-sim pay` registers at the node before it runs, through the admin API: merchants,
//! and for each reader a bank account, a consumer, a card and the reader itself (bound to the
//! card, registered at its own 127.x.y.z/32). Every id carries the run's random number, so two
//! runs against the same node do not collide.
//!
//! Money: each consumer's bank account at the simulated bank holds 100,000,000.00 and the
//! credit limit is 10,000,000.00; the wallet starts empty (it is filled from the bank at the
//! first settlement, up to the node's cap). Payments are 1.00 to 99.99 and the consumer confirms
//! receipt after each one, so at most one order per consumer is open at a time and its credit
//! is free again; with `--no-receipt` the credit limit still covers 100,000 payments per
//! consumer.

use std::cell::{Cell, RefCell};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::http::{Conn, Extra};
use super::reader::ReaderSpec;

/// Opening balance of each consumer's account at the simulated bank.
pub const BANK_BALANCE: &str = "100000000.00";
/// Each consumer's credit limit.
pub const CREDIT_LIMIT: &str = "10000000.00";

/// How to set up.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub readers: usize,
    pub merchants: usize,
    pub seed: u64,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// What the run registered.
#[derive(Debug)]
pub struct World {
    /// The run's number, in every id it registered (`sim{run}-…`).
    pub run: String,
    pub readers: Vec<ReaderSpec>,
    pub merchants: Vec<String>,
}

/// The administrator's side of the node.
struct Admin<'a> {
    conn: Conn,
    token: &'a str,
}

impl Admin<'_> {
    /// `POST path body` as the administrator: the answer's JSON if it is a 201.
    async fn create(&mut self, what: &str, path: &str, body: &Value) -> Result<Value, String> {
        let body = body.to_string();
        let r = self
            .conn
            .request(
                "POST",
                path,
                Extra {
                    bearer: Some(self.token),
                    json: Some(body.as_bytes()),
                },
            )
            .await
            .map_err(|e| format!("{what}: POST {path}: {e}"))?;
        let text = String::from_utf8_lossy(r.body);
        if r.status != 201 {
            let hint = if r.status == 401 || r.status == 403 {
                " (is the admin token the node's ONECARD_ADMIN_TOKEN?)"
            } else {
                ""
            };
            return Err(format!(
                "{what}: POST {path}: HTTP {}{hint}: {}",
                r.status,
                text.chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_str(&text).map_err(|e| format!("{what}: the answer does not parse: {e}"))
    }
}

/// The address reader `index` connects from: 127.`net`.x.y with x.y = `index` + 1 (`--readers`
/// is at most 65,000).
pub fn reader_ip(net: u8, index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(127, net, (n >> 8) as u8, n as u8)
}

/// Registers everything (on a runtime of its own, `cfg.concurrency` registrations at once);
/// `Err` with what failed.
pub fn setup(node: SocketAddrV4, token: &str, cfg: &SetupConfig) -> Result<World, String> {
    actix_rt::Runtime::new()
        .map_err(|e| format!("cannot start a runtime: {e}"))?
        .block_on(setup_async(node, token, cfg))
}

async fn setup_async(node: SocketAddrV4, token: &str, cfg: &SetupConfig) -> Result<World, String> {
    let run_number = rand::rngs::OsRng.gen_range(0..1_000_000_000u32);
    let run = format!("{run_number:09}");
    let net = 1 + (run_number % 254) as u8;
    let mut admin = Admin {
        conn: Conn::new(node, None, cfg.timeout),
        token,
    };
    let health = admin
        .conn
        .request("GET", "/healthz", Extra::default())
        .await
        .map_err(|e| format!("the node at {node} does not answer: {e}"))?;
    if health.status != 200 {
        return Err(format!(
            "the node at {node} is not healthy: HTTP {}: {}",
            health.status,
            String::from_utf8_lossy(health.body)
        ));
    }

    let mut merchants = Vec::with_capacity(cfg.merchants);
    let mut keys = Vec::with_capacity(cfg.merchants);
    for m in 0..cfg.merchants {
        let id = format!("sim{run}-m{m}");
        let created = admin
            .create(
                "merchant",
                "/v1/admin/merchants",
                &json!({"id": id, "name": format!("Simulated Shop {m}")}),
            )
            .await?;
        let key = created["api_key"]
            .as_str()
            .ok_or("merchant: no api_key in the answer")?
            .to_string();
        merchants.push(id);
        keys.push(key);
    }

    let next = Cell::new(0usize);
    let failure: RefCell<Option<String>> = RefCell::new(None);
    let specs: RefCell<Vec<ReaderSpec>> = RefCell::new(Vec::with_capacity(cfg.readers));
    let workers = (0..cfg.concurrency.clamp(1, cfg.readers.max(1))).map(|_| async {
        let mut admin = Admin {
            conn: Conn::new(node, None, cfg.timeout),
            token,
        };
        loop {
            let i = next.get();
            next.set(i + 1);
            if i >= cfg.readers || failure.borrow().is_some() {
                return;
            }
            let merchant_key = keys[i % keys.len()].clone();
            match register_reader(&mut admin, &run, net, i, cfg.seed, merchant_key).await {
                Ok(spec) => specs.borrow_mut().push(spec),
                Err(e) => {
                    failure.borrow_mut().get_or_insert(e);
                    return;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    let mut readers = specs.into_inner();
    readers.sort_by_key(|r| r.index);
    Ok(World {
        run,
        readers,
        merchants,
    })
}

/// Bank account, consumer, card and reader number `i`.
async fn register_reader(
    admin: &mut Admin<'_>,
    run: &str,
    net: u8,
    i: usize,
    seed: u64,
    merchant_key: String,
) -> Result<ReaderSpec, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let pin_n: u32 = rng.gen_range(0..10_000);
    let wrong_n = (pin_n + 1 + rng.gen_range(0..9_999)) % 10_000;
    let consumer = format!("sim{run}-c{i}");
    let bank = format!("SIM{run}BANK{i:06}");
    let card_number = format!("9{run}{i:06}");
    let home = format!("{} Simulation Road, Run {run}", i + 1);
    let reader_id = format!("sim{run}-r{i}");
    let ip = reader_ip(net, i);
    let who = format!("reader {i}");
    admin
        .create(
            &format!("{who}: bank account"),
            "/v1/admin/bank-accounts",
            &json!({"account": bank, "balance": BANK_BALANCE}),
        )
        .await?;
    admin.create(
        &format!("{who}: consumer"),
        "/v1/admin/consumers",
        &json!({"consumer": consumer, "credit_limit": CREDIT_LIMIT, "bank": bank, "wallet": "0.00"}),
    )
    .await?;
    let card = admin.create(
        &format!("{who}: card"),
        "/v1/admin/cards",
        &json!({"number": card_number, "holder": consumer, "pin": format!("{pin_n:04}"), "registered_address": home}),
    )
    .await?;
    let card_key: [u8; 32] = card["card_key"]
        .as_str()
        .and_then(onecard_terminal::wire::from_hex)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("{who}: card: no 32-byte card_key in the answer"))?;
    admin.create(
        &format!("{who}: reader"),
        "/v1/admin/readers",
        &json!({"id": reader_id, "owner": consumer, "card_number": card_number, "account": consumer, "network": format!("{ip}/32")}),
    )
    .await?;
    Ok(ReaderSpec {
        index: i,
        reader_id,
        card_number,
        card_key,
        pin: format!("{pin_n:04}"),
        wrong_pin: format!("{wrong_n:04}"),
        home,
        ip,
        merchant_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_addresses_are_distinct_loopback_addresses() {
        let ips: std::collections::BTreeSet<Ipv4Addr> =
            (0..65_000).map(|i| reader_ip(7, i)).collect();
        assert_eq!(ips.len(), 65_000);
        assert!(ips.iter().all(|ip| ip.is_loopback() && ip.octets()[1] == 7));
        assert_eq!(reader_ip(7, 0), Ipv4Addr::new(127, 7, 0, 1));
        assert_eq!(reader_ip(7, 255), Ipv4Addr::new(127, 7, 1, 0));
    }
}
