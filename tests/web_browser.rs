//! The consumer's web pages in a real browser (issue 14): headless Chromium driven through
//! chromedriver (W3C WebDriver, the `fantoccini` client), against a running `onecard serve`.
//! The consumer pays an order through the reader flow, signs in on the page with the one-time
//! code the reader showed, confirms receipt with the page's button, and sees the settled order
//! leave the virtual account and the month's chart whose spending bar is the journal's amount.
//! Then the merchant's board and the operator's dashboard, each signed in with its own secret.
//! Screenshots of the three kinds of page are kept in `target/web-screenshots/` as the run's
//! artifacts.
//!
//! `scripts/test.sh` installs Debian's `chromium` and `chromium-driver` when missing; the test
//! starts chromedriver itself on a free port and stops it at the end.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::node::*;
use fantoccini::{Client, ClientBuilder, Locator};
use onecard_terminal::flow::PaymentEnd;
use serde_json::json;

/// chromedriver as a process; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; scripts/test.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let ready = eventually(20, || {
            ureq::get(&format!("{url}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<serde_json::Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
        });
        assert!(
            ready.is_some(),
            "chromedriver did not become ready at {url}"
        );
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    // Several crates in the tree enable rustls providers: name one (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,900"],
        }),
    );
    ClientBuilder::rustls()
        .expect("a TLS connector (unused: chromedriver is plain HTTP on loopback)")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("web-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/web-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshots().join(name), png).unwrap();
}

#[test]
fn a_consumer_pays_signs_in_with_the_code_confirms_receipt_and_sees_the_chart_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    // Step 1-4 at the reader: the order placed in the virtual account.
    let order = create_order(&node, &w, "42.50", false);
    pay_with_session(&node, &w, 1, &order);
    // Card and PIN at the reader again: a sign-in, and the code it shows.
    let (end, answer) = sign_in(&node, &w, &mut card_for(&w, 2), PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let code = answer.and_then(|a| a.web_code).expect("a web code").code;

    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&node.url("/web")).await.unwrap();
        // Not signed in: the sign-in page.
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("input#code"))
            .await
            .unwrap()
            .send_keys(&code)
            .await
            .unwrap();
        shot(&c, "consumer-sign-in.png").await;
        c.find(Locator::Css("form[action='/web/sign-in'] button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The account: the order waiting, released by receipt.
        let row = format!("tr[data-order='{order}']");
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&row))
            .await
            .unwrap();
        let reserved = c.find(Locator::Id("reserved")).await.unwrap();
        assert_eq!(reserved.text().await.unwrap(), "42.50");
        shot(&c, "consumer-account.png").await;
        c.find(Locator::Css(&format!("{row} button[value='yes']")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let notice = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("p.notice"))
            .await
            .unwrap();
        assert!(notice.text().await.unwrap().contains("released"));
        assert!(c.find(Locator::Css(&row)).await.is_err(), "the order left");
        assert_eq!(
            c.find(Locator::Id("reserved"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "0.00"
        );

        // The journal's side: the order settled, for its amount.
        let o = call(
            "GET",
            &node.url(&format!("/v1/orders/{order}")),
            Some(&w.api_key),
            None,
            None,
        );
        assert_eq!(o.body["state"], "settled", "{o:?}");
        let settled = o.body["amount"].as_str().unwrap().to_string();

        // The month's chart: its spending bar is the settled amount (the analysis follower
        // catches up on its own: reload until it has).
        let now = time::OffsetDateTime::now_utc();
        let month = format!("{:04}-{:02}", now.year(), u8::from(now.month()));
        let bar = format!("rect[data-month='{month}'][data-series='spending']");
        let mut value = None;
        for _ in 0..50 {
            c.goto(&node.url("/web/analysis")).await.unwrap();
            let v = c
                .find(Locator::Css(&bar))
                .await
                .unwrap()
                .attr("data-value")
                .await
                .unwrap();
            if v.as_deref() == Some(settled.as_str()) {
                value = v;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            value.as_deref(),
            Some(settled.as_str()),
            "the chart's spending bar"
        );
        let height: u32 = c
            .find(Locator::Css(&bar))
            .await
            .unwrap()
            .attr("height")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert!(height > 0, "the bar is drawn");
        assert_eq!(
            c.find(Locator::Id("spending"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            settled
        );
        shot(&c, "consumer-analysis.png").await;

        // The merchant's board, signed in with its API key: the order settled.
        c.goto(&node.url("/web/merchant/sign-in")).await.unwrap();
        c.find(Locator::Css("input#secret"))
            .await
            .unwrap()
            .send_keys(&w.api_key)
            .await
            .unwrap();
        c.find(Locator::Css("form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("section#board"))
            .await
            .unwrap();
        let board = c.source().await.unwrap();
        assert!(
            board.contains(&order),
            "the merchant's board lists the order"
        );
        shot(&c, "merchant-board.png").await;

        // The operator's dashboard, signed in with the administrator's token.
        c.goto(&node.url("/web/ops/sign-in")).await.unwrap();
        c.find(Locator::Css("input#secret"))
            .await
            .unwrap()
            .send_keys(ADMIN_TOKEN)
            .await
            .unwrap();
        c.find(Locator::Css("form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("section#journal"))
            .await
            .unwrap();
        shot(&c, "operator-dashboard.png").await;
        c.close().await.unwrap();
    });
}
