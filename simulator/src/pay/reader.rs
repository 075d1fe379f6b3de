//! One simulated reader of `onecard-sim pay`: its card (the applet in memory), its keep-alive
//! connection from its registered address, and its loop of whole payments.
//!
//! A payment: the merchant creates the order (merchant API), the reader opens the checkout,
//! then the reader program's steps (`onecard_terminal::flow::pay`, in the same order and with
//! the same pieces): read the card ([`flow::read_card`]), swipe, let the card sign the challenge
//! ([`apdu`]), encrypt the PIN to the challenge's key ([`encrypt_pin`]), authenticate, and
//! confirm the delivery address when the node asks; the node places the order on authorisation.
//! Afterwards the consumer confirms receipt, so the order settles and its credit is free again
//! (timed as its own step, not part of the payment).
//!
//! `flow::pay` itself is synchronous (its `NodeLink` blocks), so using it means a thread per
//! reader; a thread per reader cost about twice the client CPU per request of one event loop
//! for all readers, and the client shares the machine with the node. So the steps are driven
//! here, asynchronously, with the reader program's building blocks and wire types.
//!
//! Planted refusals: before the real payment, a payment may first try with a wrong PIN (the
//! right PIN follows at once, so the card never reaches its lock: `max_pin_failures` is 3), or
//! first swipe another reader's card (a card on the wrong reader). Each must be refused with
//! `wrong_pin` or `card_not_bound`; anything else is an error. A refused swipe counts against
//! the reader at the node (more than `refused_swipes_per_minute`, 5 by default, in a minute and
//! the reader is rate-limited), so each reader plants at most `foreign_per_minute` of them in
//! any 62 seconds.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use onecard_engine::cards::{CardKey, ReaderPinKeys};
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::apdu;
use onecard_terminal::channel::{CardChannel, CardIoError};
use onecard_terminal::flow;
use onecard_terminal::http_link::encode_path_segment;
use onecard_terminal::wire::{
    to_hex, AuthAnswer, AuthenticateBody, CheckoutView, ConfirmAddressBody, ErrorBody, PinBody,
    PlacedOrder, SwipeAnswer, SwipeBody,
};
use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};

use super::http::{Conn, Extra};
use super::tally::{word, Latencies, Step, Tally, Totals};

/// Everything one reader was registered with.
#[derive(Clone)]
pub struct ReaderSpec {
    pub index: usize,
    pub reader_id: String,
    pub card_number: String,
    pub card_key: [u8; 32],
    pub pin: String,
    /// A PIN that is not this card's.
    pub wrong_pin: String,
    /// The card's registered delivery address.
    pub home: String,
    /// The address the reader connects from (its registered network is this /32).
    pub ip: Ipv4Addr,
    /// The API key of the merchant this reader buys from.
    pub merchant_key: String,
}

impl std::fmt::Debug for ReaderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSpec")
            .field("reader_id", &self.reader_id)
            .field("card", &onecard_terminal::mask(&self.card_number))
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// What every reader does, from the options.
#[derive(Debug, Clone)]
pub struct Plan {
    pub wrong_pin_share: f64,
    pub foreign_share: f64,
    pub foreign_per_minute: u32,
    pub address_change_share: f64,
    pub receipt: bool,
    pub seed: u64,
}

/// When the run starts measuring and when readers stop starting payments.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub measure_from: Instant,
    pub end: Instant,
    /// With `--rate`: when the payments are due. Reader i's first is due at `origin` plus
    /// i/readers of `every`, and each next one `every` later.
    pub pace: Option<Pace>,
}

#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub origin: Instant,
    pub every: Duration,
    pub readers: usize,
}

impl Pace {
    fn first_due(&self, reader: usize) -> Instant {
        self.origin
            + self
                .every
                .mul_f64(reader as f64 / self.readers.max(1) as f64)
    }
}

/// The window in which the node counts a reader's refused swipes is 60 s from the first one;
/// two seconds more on this side covers the node's whole-second clock.
const FOREIGN_WINDOW: Duration = Duration::from_secs(62);

/// The card in the simulated reader: the applet in memory.
struct Chip(CardApplet);

impl CardChannel for Chip {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError> {
        Ok(self.0.process(apdu))
    }
}

/// Something that went wrong in a payment: a bounded kind, a message, and whether it is a
/// refusal (which also makes `refusals_ok` false).
#[derive(Debug)]
struct Problem {
    kind: String,
    message: String,
    refusal: bool,
}

impl Problem {
    fn error(kind: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            kind: kind.into(),
            message: message.into(),
            refusal: false,
        }
    }
    fn refusal(kind: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            kind: kind.into(),
            message: message.into(),
            refusal: true,
        }
    }
}

/// The reader's connection, with the time each exchange took.
struct Net {
    conn: Conn,
    /// The exchanges of the current payment and how long each took.
    times: Vec<(Step, Duration)>,
    /// Answers with the expected status, by step (the run's totals).
    totals: Totals,
}

impl Net {
    /// One exchange: the answer's body if its status is `expect`, else the problem.
    async fn call(
        &mut self,
        step: Step,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&[u8]>,
        expect: u16,
    ) -> Result<&[u8], Problem> {
        let started = Instant::now();
        let result = self
            .conn
            .request(method, path, Extra { bearer, json })
            .await;
        self.times.push((step, started.elapsed()));
        match result {
            Err(e) => Err(Problem::error(
                format!("{}:transport:{}", step.name(), e.kind()),
                format!("{method} {path}: {e}"),
            )),
            Ok(r) if r.status == expect => {
                self.totals.answer(step);
                Ok(r.body)
            }
            Ok(r) => {
                let (code, message) = match serde_json::from_slice::<ErrorBody>(r.body) {
                    Ok(e) => (word(&e.error.code), e.error.message),
                    Err(_) => (
                        "-".to_string(),
                        String::from_utf8_lossy(&r.body[..r.body.len().min(200)]).into_owned(),
                    ),
                };
                Err(Problem::error(
                    format!("{}:http_{}:{code}", step.name(), r.status),
                    format!("{method} {path}: {message}"),
                ))
            }
        }
    }
}

fn bad_answer(step: Step, e: impl std::fmt::Display) -> Problem {
    Problem::error(
        format!("{}:bad_answer", step.name()),
        format!("the answer does not parse: {e}"),
    )
}

/// What a payment plants before the real one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planted {
    Nothing,
    WrongPin,
    Foreign,
}

/// How one pass of the reader's steps (swipe to authorisation) ended.
enum Attempt {
    /// The swipe was refused, for this reason.
    SwipeRefused(String),
    /// The node's last answer to the authentication (or to the address question), and whether
    /// it asked about the address.
    Answered(Box<AuthAnswer>, bool),
}

/// A payment that ended with the order placed.
struct Placed {
    /// The order and the consumer's session, when the order waits for the consumer's receipt.
    receipt: Option<(String, String)>,
    /// Whether the node asked to confirm the delivery address.
    asked_address: bool,
}

/// What the reader is paying: the checkout as the node showed it.
struct Checkout {
    order_id: String,
    amount_cents: u64,
    delivery_address: String,
}

/// A reader, ready to run: its spec, its card, the card of another reader (for planted
/// foreign swipes) and its open connection.
pub struct Reader {
    spec: ReaderSpec,
    chip: Chip,
    foreign: Option<Chip>,
    net: Net,
    /// Request bodies are written here.
    body: Vec<u8>,
    /// The order bodies' constant tails (after the amount): to the home address, elsewhere.
    tail_home: Vec<u8>,
    tail_elsewhere: Vec<u8>,
    plan: Plan,
    rng: ChaCha8Rng,
    crypto_rng: ChaCha20Rng,
    /// The reader's X25519 pair and the secret agreed with the node's current agreement key.
    pin_keys: ReaderPinKeys,
    foreign_recent: VecDeque<Instant>,
    /// No wrong PIN since the card's last right one: a wrong PIN may be planted (so that wrong
    /// PINs never come two in a row, whatever fails in between, and the card never locks).
    pin_clean: bool,
    path: String,
    pub tally: Tally,
}

/// An order body after `{"amount":"12.34"`: items, delivery to `address`, release on receipt.
fn order_tail(name: &str, address: &str) -> Vec<u8> {
    let rest = serde_json::json!({
        "items": [{"name": "Simulated goods", "quantity": 1}],
        "delivery": {"name": name, "address": address, "phone": "+49 30 0000000"},
        "release": {"on": "receipt"},
        "digital": false,
    });
    let text = rest.to_string();
    // `{"items":…}` → `,"items":…}`: appended after the amount.
    let mut tail = b",".to_vec();
    tail.extend_from_slice(&text.as_bytes()[1..]);
    tail
}

impl Reader {
    /// A reader with its connection, not yet open.
    pub fn new(spec: ReaderSpec, foreign: Option<&ReaderSpec>, conn: Conn, plan: Plan) -> Reader {
        let chip = |s: &ReaderSpec| {
            Chip(CardApplet::new(
                s.card_number.clone(),
                format!("holder-{}", s.index),
                CardKey::from_bytes(s.card_key),
                0,
            ))
        };
        let name = format!("Simulated Consumer {}", spec.index);
        let elsewhere = format!("{} Elsewhere Lane, Temporary Town", spec.index + 1);
        let seed = plan
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(spec.index as u64);
        Reader {
            chip: chip(&spec),
            foreign: foreign.map(chip),
            net: Net {
                conn,
                times: Vec::with_capacity(8),
                totals: Totals::default(),
            },
            body: Vec::with_capacity(1024),
            tail_home: order_tail(&name, &spec.home),
            tail_elsewhere: order_tail(&name, &elsewhere),
            plan,
            rng: ChaCha8Rng::seed_from_u64(seed),
            crypto_rng: ChaCha20Rng::from_rng(rand::rngs::OsRng).expect("the OS's randomness"),
            pin_keys: ReaderPinKeys::default(),
            foreign_recent: VecDeque::new(),
            pin_clean: true,
            path: String::with_capacity(128),
            tally: Tally::default(),
            spec,
        }
    }

    /// Opens the connection from the reader's address, and checks that it comes from there.
    pub async fn connect(&mut self) -> Result<(), String> {
        let ip = self.spec.ip;
        self.net
            .conn
            .connect()
            .await
            .map_err(|e| format!("reader {}: connecting from {ip}: {e}", self.spec.index))?;
        match self.net.conn.local_addr() {
            Some(std::net::SocketAddr::V4(a)) if *a.ip() == ip => Ok(()),
            other => Err(format!(
                "reader {}: the connection comes from {other:?}, not {ip}",
                self.spec.index
            )),
        }
    }

    /// Runs payments until `clock.end` (the one in progress then finishes). Returns its tally
    /// and when the last payment ended.
    pub async fn run(
        mut self,
        clock: Clock,
        latencies: &Latencies,
        done: &AtomicU64,
    ) -> (Tally, Instant) {
        let mut next_due = clock.pace.map(|p| p.first_due(self.spec.index));
        loop {
            // Paced: wait until the payment is due, and time it from then.
            let due = match (next_due.as_mut(), clock.pace) {
                (Some(next), Some(pace)) => {
                    let due = *next;
                    *next += pace.every;
                    let wait = due.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        actix_rt::time::sleep(wait).await;
                    }
                    due
                }
                _ => Instant::now(),
            };
            let started = Instant::now();
            if started >= clock.end {
                break;
            }
            let measured = due >= clock.measure_from;
            self.net.times.clear();
            match self.payment(started).await {
                Ok(placed) => {
                    if measured {
                        self.net.times.push((Step::Payment, due.elapsed()));
                        self.tally.payments += 1;
                        if placed.asked_address {
                            self.tally.address_confirmations += 1;
                        }
                    }
                    self.tally.totals.payments += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    if let Some((order, session)) = placed.receipt {
                        if let Err(p) = self.receipt(&order, &session).await {
                            self.problem(p);
                        }
                    }
                }
                Err(p) => {
                    let transport = p.kind.contains(":transport:");
                    self.problem(p);
                    if transport {
                        // The node is unreachable or overwhelmed: do not spin.
                        actix_rt::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            if measured {
                latencies.record(&self.net.times);
            }
        }
        self.net.totals.payments = self.tally.totals.payments;
        self.net.totals.settled = self.tally.totals.settled;
        self.net.totals.requests = self.net.conn.requests;
        self.tally.totals = self.net.totals;
        (self.tally, Instant::now())
    }

    fn problem(&mut self, p: Problem) {
        if p.refusal {
            self.tally.unexpected_refusals += 1;
        }
        self.tally.error(&p.kind, &p.message);
    }

    /// What this payment plants, within the foreign-swipe budget.
    fn draw_plant(&mut self, now: Instant) -> Planted {
        let r: f64 = self.rng.gen();
        if r < self.plan.wrong_pin_share {
            return if self.pin_clean {
                Planted::WrongPin
            } else {
                Planted::Nothing
            };
        }
        if r < self.plan.wrong_pin_share + self.plan.foreign_share && self.foreign.is_some() {
            while self
                .foreign_recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= FOREIGN_WINDOW)
            {
                self.foreign_recent.pop_front();
            }
            if self.foreign_recent.len() < self.plan.foreign_per_minute as usize {
                self.foreign_recent.push_back(now);
                return Planted::Foreign;
            }
            self.tally.foreign_skipped += 1;
        }
        Planted::Nothing
    }

    /// One whole payment, until the order is placed.
    async fn payment(&mut self, now: Instant) -> Result<Placed, Problem> {
        let planted = self.draw_plant(now);
        let elsewhere = self.rng.gen::<f64>() < self.plan.address_change_share;
        let cents: u64 = self.rng.gen_range(100..=9_999);
        let checkout = self.open_checkout(cents, elsewhere).await?;
        let order_id = checkout.order_id.as_str();

        // Planted first: another reader's card in this reader, or a wrong PIN.
        match planted {
            Planted::Nothing => {}
            Planted::Foreign => {
                // Counted once the node answered (a transport error is an error of its own).
                let attempt = self.attempt(true, false, &checkout).await?;
                self.tally.planted_foreign += 1;
                match attempt {
                    Attempt::SwipeRefused(r) if r == "card_not_bound" => {
                        self.tally.refused_foreign += 1
                    }
                    Attempt::SwipeRefused(r) => {
                        return Err(Problem::refusal(
                            format!("foreign_reader:refused_as:{r}"),
                            format!("another reader's card on {}", self.spec.reader_id),
                        ))
                    }
                    // Not refused at the swipe: whatever followed is wrong, and the order may
                    // even be placed for the wrong account. The payment ends here.
                    Attempt::Answered(a, _) => {
                        return Err(Problem::error(
                            "foreign_reader:not_refused",
                            format!(
                                "another reader's card was accepted on {}, then {}",
                                self.spec.reader_id, a.outcome
                            ),
                        ))
                    }
                }
            }
            Planted::WrongPin => {
                let attempt = self.attempt(false, true, &checkout).await?;
                self.tally.planted_wrong_pin += 1;
                match attempt {
                    Attempt::Answered(a, _) if a.outcome == "wrong_pin" => {
                        self.tally.refused_wrong_pin += 1;
                        self.pin_clean = false;
                    }
                    Attempt::Answered(a, _) if a.outcome == "authorised" => {
                        return Err(Problem::error(
                            "wrong_pin:not_refused",
                            format!("a wrong PIN was accepted for order {order_id}"),
                        ))
                    }
                    Attempt::Answered(a, _) => {
                        return Err(Problem::refusal(
                            format!("wrong_pin:refused_as:{}", word(&a.outcome)),
                            format!("a wrong PIN for order {order_id}: {}", a.prompt.text),
                        ))
                    }
                    Attempt::SwipeRefused(r) => {
                        return Err(Problem::refusal(
                            format!("swipe:refused:{r}"),
                            format!("before a wrong PIN for order {order_id}"),
                        ))
                    }
                }
            }
        }

        // Swipe, authenticate, confirm the address if asked.
        let (answer, asked_address) = match self.attempt(false, false, &checkout).await? {
            Attempt::SwipeRefused(r) => {
                return Err(Problem::refusal(
                    format!("swipe:refused:{r}"),
                    format!("order {order_id}"),
                ))
            }
            Attempt::Answered(a, asked) => (*a, asked),
        };
        // The node checks the PIN before the address and the credit: past it, the card's count
        // of wrong PINs is back to zero.
        if asked_address
            || matches!(
                answer.outcome.as_str(),
                "authorised" | "credit_refused" | "address_change_declined"
            )
        {
            self.pin_clean = true;
        }
        if answer.outcome != "authorised" {
            let step = if asked_address {
                Step::ConfirmAddress
            } else {
                Step::Authenticate
            };
            return Err(Problem::refusal(
                format!("{}:{}", step.name(), word(&answer.outcome)),
                format!("order {order_id}: {}", answer.prompt.text),
            ));
        }

        // The node placed the order on authorisation.
        let Some(order) = answer.order else {
            return Err(Problem::error(
                "place:no_order",
                format!("order {order_id} authorised but not placed"),
            ));
        };
        let mut placed = Placed {
            receipt: None,
            asked_address,
        };
        match order.state.as_str() {
            "pending" => {}
            // Direct mode (`direct_max`): settled at once, nothing to confirm.
            "settled" => return Ok(placed),
            other => {
                let refusal = order.refusal.as_deref().map(word);
                return Err(Problem::refusal(
                    match &refusal {
                        Some(r) => format!("place:{}:{r}", word(other)),
                        None => format!("place:{}", word(other)),
                    },
                    format!("order {order_id} authorised, then {other}"),
                ));
            }
        }
        if !self.plan.receipt {
            return Ok(placed);
        }
        match answer.session {
            Some(s) => {
                placed.receipt = Some((checkout.order_id, s.token));
                Ok(placed)
            }
            None => Err(Problem::error(
                "authenticate:no_session",
                format!("order {order_id} placed, but no consumer session"),
            )),
        }
    }

    /// The merchant creates an order of `cents`; the reader opens its checkout.
    async fn open_checkout(&mut self, cents: u64, elsewhere: bool) -> Result<Checkout, Problem> {
        self.body.clear();
        let _ = write!(
            self.body,
            "{{\"amount\":\"{}.{:02}\"",
            cents / 100,
            cents % 100
        );
        self.body.extend_from_slice(if elsewhere {
            &self.tail_elsewhere
        } else {
            &self.tail_home
        });
        let created = self
            .net
            .call(
                Step::CreateOrder,
                "POST",
                "/v1/orders",
                Some(&self.spec.merchant_key),
                Some(self.body.as_slice()),
                201,
            )
            .await?;
        // The merchant's order view; only its id and state matter here, and `PlacedOrder` (the
        // wire type of an order's id and state) reads just those, skipping the rest.
        let created: PlacedOrder =
            serde_json::from_slice(created).map_err(|e| bad_answer(Step::CreateOrder, e))?;
        let order_id = created.id;

        self.path.clear();
        self.path.push_str("/v1/reader/checkouts/");
        self.path.push_str(&encode_path_segment(&order_id));
        let view = self
            .net
            .call(Step::Checkout, "GET", &self.path, None, None, 200)
            .await?;
        let view: CheckoutView =
            serde_json::from_slice(view).map_err(|e| bad_answer(Step::Checkout, e))?;
        if view.status != "awaiting_payment" {
            return Err(Problem::error(
                format!("checkout:state_{}", word(&view.status)),
                format!("order {order_id} is {} at the checkout", view.status),
            ));
        }
        if view.amount_cents != cents {
            return Err(Problem::error(
                "checkout:amount",
                format!("order {order_id}: {} cents, not {cents}", view.amount_cents),
            ));
        }
        Ok(Checkout {
            order_id,
            amount_cents: view.amount_cents,
            delivery_address: view.delivery_address,
        })
    }

    /// The reader program's steps for `checkout`: read the card (the other reader's if
    /// `foreign`), swipe, the card's cryptogram and the PIN (a wrong one if `wrong_pin`),
    /// authenticate, and accept a delivery address change if the node asks.
    async fn attempt(
        &mut self,
        foreign: bool,
        wrong_pin: bool,
        checkout: &Checkout,
    ) -> Result<Attempt, Problem> {
        let chip = if foreign {
            self.foreign
                .as_mut()
                .expect("planted only with a foreign card")
        } else {
            &mut self.chip
        };
        let card = flow::read_card(chip).map_err(|e| {
            let what = match e {
                Ok(io) => io.to_string(),
                Err(apdu) => apdu.to_string(),
            };
            Problem::error("card:read", what)
        })?;

        // Swipe.
        self.body.clear();
        let swipe = SwipeBody {
            reader_id: self.spec.reader_id.clone(),
            card_number: card.card_number,
            order_id: checkout.order_id.clone(),
            amount_cents: checkout.amount_cents,
        };
        serde_json::to_writer(&mut self.body, &swipe).map_err(|e| bad_answer(Step::Swipe, e))?;
        let answer = self
            .net
            .call(
                Step::Swipe,
                "POST",
                "/v1/reader/swipe",
                None,
                Some(self.body.as_slice()),
                200,
            )
            .await?;
        let answer: SwipeAnswer =
            serde_json::from_slice(answer).map_err(|e| bad_answer(Step::Swipe, e))?;
        let challenge = match answer {
            SwipeAnswer::Refused { reason, .. } => return Ok(Attempt::SwipeRefused(word(&reason))),
            challenge => match challenge.into_result() {
                Some(Ok(c)) => c,
                _ => return Err(bad_answer(Step::Swipe, "a challenge with bad hex")),
            },
        };

        // The card signs the challenge; the PIN is encrypted to the challenge's key.
        let chip = if foreign {
            self.foreign
                .as_mut()
                .expect("planted only with a foreign card")
        } else {
            &mut self.chip
        };
        let signed = apdu::generate_cryptogram(
            &challenge.challenge,
            checkout.amount_cents,
            &checkout.order_id,
        )
        .map_err(|e| e.to_string())
        .and_then(|command| chip.transmit(&command).map_err(|e| e.to_string()))
        .and_then(|answer| apdu::parse_cryptogram(&answer).map_err(|e| e.to_string()))
        .map_err(|e| Problem::error("card:cryptogram", e))?;
        let pin = if wrong_pin {
            &self.spec.wrong_pin
        } else {
            &self.spec.pin
        };
        let pin = (self.pin_keys)
            .encrypt(
                &challenge.node_public,
                &challenge.challenge,
                pin,
                &mut self.crypto_rng,
            )
            .map_err(|e| Problem::error("card:pin", e.to_string()))?;

        // Authenticate.
        self.body.clear();
        let auth = AuthenticateBody {
            challenge_id: challenge.challenge_id,
            counter: signed.counter,
            cryptogram: to_hex(&signed.cryptogram),
            pin: PinBody::of(&pin),
            delivery_address: checkout.delivery_address.clone(),
        };
        serde_json::to_writer(&mut self.body, &auth)
            .map_err(|e| bad_answer(Step::Authenticate, e))?;
        let answer = self
            .net
            .call(
                Step::Authenticate,
                "POST",
                "/v1/reader/authenticate",
                None,
                Some(self.body.as_slice()),
                200,
            )
            .await?;
        let answer = parse_auth(Step::Authenticate, answer)?;
        if answer.outcome != "confirm_address_change" {
            return Ok(Attempt::Answered(Box::new(answer), false));
        }

        // The consumer accepts the other delivery address.
        self.body.clear();
        let confirm = ConfirmAddressBody {
            challenge_id: auth.challenge_id,
            accept: true,
        };
        serde_json::to_writer(&mut self.body, &confirm)
            .map_err(|e| bad_answer(Step::ConfirmAddress, e))?;
        let answer = self
            .net
            .call(
                Step::ConfirmAddress,
                "POST",
                "/v1/reader/confirm-address",
                None,
                Some(self.body.as_slice()),
                200,
            )
            .await?;
        Ok(Attempt::Answered(
            Box::new(parse_auth(Step::ConfirmAddress, answer)?),
            true,
        ))
    }

    /// The consumer confirms receipt: the order settles and its amount is no longer reserved.
    async fn receipt(&mut self, order_id: &str, session: &str) -> Result<(), Problem> {
        self.path.clear();
        self.path.push_str("/v1/consumer/orders/");
        self.path.push_str(&encode_path_segment(order_id));
        self.path.push_str("/receipt");
        let answer = self
            .net
            .call(
                Step::Receipt,
                "POST",
                &self.path,
                Some(session),
                Some(&br#"{"satisfied":true}"#[..]),
                200,
            )
            .await?;
        // The consumer's view of the order: its id and state (see `open_checkout`).
        let order: PlacedOrder =
            serde_json::from_slice(answer).map_err(|e| bad_answer(Step::Receipt, e))?;
        let state = order.state.as_str();
        if state != "settled" {
            return Err(Problem::error(
                format!("receipt:state_{}", word(state)),
                format!("order {order_id} is {state:?} after the receipt"),
            ));
        }
        self.tally.totals.settled += 1;
        Ok(())
    }
}

/// An answer to an authentication or an address confirmation. An outcome the reader program
/// does not know (one the node added since, or a malformed answer) is a refusal named by the
/// outcome: an error by kind, never taken for an authorisation.
fn parse_auth(step: Step, body: &[u8]) -> Result<AuthAnswer, Problem> {
    let answer: AuthAnswer = serde_json::from_slice(body).map_err(|e| bad_answer(step, e))?;
    if answer.to_outcome().is_none() {
        return Err(Problem::refusal(
            format!("{}:{}", step.name(), word(&answer.outcome)),
            format!(
                "outcome {:?} is not one the reader program knows (or its fields are missing)",
                answer.outcome
            ),
        ));
    }
    Ok(answer)
}
