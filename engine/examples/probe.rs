//! Probe: where the time of concurrent commands goes (development aid, not a benchmark).
use std::sync::Arc;
use std::time::Instant;

use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder};
use onecard_engine::{Amount, Engine, SimBank, SimBankPort};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(256);
    actix_rt::System::new().block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let bank = SimBank::open(dir.path()).unwrap();
        let mut cfg = EngineConfig::default();
        if std::env::var("NO_TOPUP").is_ok() { cfg.rules.topup_threshold = Amount::ZERO; }
        let engine = Engine::open(dir.path(), cfg, Arc::new(SimBankPort(bank.clone()))).await.unwrap();
        engine.open_merchant("shop", None, 0).await.unwrap().unwrap();
        let t = Instant::now();
        let opens = (0..n).map(|i| {
            bank.open_account(&format!("b{i}"), Amount::parse("1000000").unwrap()).unwrap();
            engine.open_consumer(OpenConsumer { consumer: format!("c{i}"), credit_limit: "1000000".into(), bank: format!("b{i}"), wallet: "5000".into() }, 0)
        });
        futures::future::join_all(opens).await;
        println!("open {n}: {:?}", t.elapsed());
        let rounds: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(5);
        for round in 0..rounds {
            let t = Instant::now();
            let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let q = names.iter().map(|c| engine.consumer(c));
            futures::future::join_all(q).await;
            let queries = t.elapsed();
            let t = Instant::now();
            let places = (0..n).map(|i| engine.place_order(PlaceOrder { id: format!("o{round}-{i}"), consumer: format!("c{i}"), merchant: "shop".into(), amount: "1.00".into(), release: serde_json::json!({"on":"receipt"}) }, 1));
            let started = Instant::now();
            let mut done = Vec::new();
            let futs: Vec<_> = places.map(|f| async { let r = f.await; (r, started.elapsed()) }).collect();
            for (r, at) in futures::future::join_all(futs).await { r.unwrap().unwrap(); done.push(at); }
            done.sort();
            let t2 = Instant::now();
            let ids: Vec<String> = (0..n).map(|i| format!("o{round}-{i}")).collect();
            let confirms = ids.iter().map(|id| engine.confirm_receipt(id, true, 1));
            for r in futures::future::join_all(confirms).await { r.unwrap().unwrap(); }
            let confirm_time = t2.elapsed();
            let s = engine.journal_stats();
            println!("round {round}: {n} confirms {confirm_time:?}; {n} queries {:?}; {n} places {:?} (first ack {:?}, median {:?}); flushes so far {}",
                queries, t.elapsed(), done[0], done[n/2], s.flushes.load(std::sync::atomic::Ordering::Relaxed));
        }
        engine.close().await.unwrap();
    });
}
