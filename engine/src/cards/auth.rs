//! The authentication center: cards, readers and their bindings, and steps 2 and 3 of a
//! payment (SPEC F2, F13–F15, F18, I9, I10).
//!
//! Pure: no I/O and no clock. Time is the `now` argument (seconds) and randomness comes from
//! the caller's cryptographic RNG.
//!
//! # The flow
//!
//! 1. [`AuthCenter::swipe`] (step 2). The reader must be registered, the card must be the one
//!    bound to it, the connection must come from the reader's registered network and the card
//!    must be active. Otherwise the swipe is refused and the refusal counts against the reader
//!    (more than [`AuthConfig::refused_swipes_per_minute`] in a 60-second window and every
//!    swipe is refused with `RateLimited`, unchecked, until the window ends). An accepted swipe
//!    gets a [`ChallengeIssued`]: a fresh 16-byte challenge for this order and amount, and the
//!    public half of the node's X25519 agreement key of the epoch
//!    ([`AGREEMENT_KEY_LIFETIME_SECS`]) for the PIN. A reader has at most one outstanding
//!    challenge: a new swipe replaces the previous one.
//! 2. [`AuthCenter::authenticate`] (step 3), in this order: the challenge (known, not expired,
//!    else `TimedOut`); the card's status (it may have been locked or reported lost since the
//!    swipe); **card authenticity** (the cryptogram over challenge, order, amount and counter
//!    under the card key, then the counter above the last one seen, else `BadCryptogram` /
//!    `Replayed`); **identity** (the PIN, counted); **address** (F14); **credit** (F15).
//! 3. If the address differs and the caller did not pass the consumer's decision,
//!    `authenticate` answers [`AuthOutcome::ConfirmAddressChange`] and *parks* the challenge:
//!    card and PIN are proven and the counter is recorded. The reader asks the consumer and the
//!    caller answers with [`AuthCenter::confirm_address_change`] (same challenge id, before it
//!    expires), which goes on with the credit check. The cryptogram and PIN are not sent twice,
//!    so no replay exception is needed and a second PIN check cannot count a failure twice. A
//!    caller that already has the decision may pass it to `authenticate` directly.
//!
//! Every outcome but `ConfirmAddressChange` ends the challenge. A wrong PIN too: the reader
//! program swipes again for the next try (a fresh challenge and counter).
//!
//! # Keys and persistence
//!
//! The issuer master key lives in the [`AuthCenter`] only, with the token key derived from it;
//! card keys are derived when needed and never kept. [`AuthState`] (cards, readers,
//! configuration) is serialisable. Outstanding challenges hold the X25519 agreement key they were
//! issued with and are not part of it: **challenges do not survive a restart** (the reader
//! swipes again), nor do the agreement key or the refused-swipe limiter.
//!
//! The registered delivery address is kept on the [`Card`] (one card per consumer account in
//! this design), changed with [`AuthCenter::set_registered_address`].
//!
//! # Card numbers (I10)
//!
//! The node never stores a full card number. A card is known by its **card token**
//! ([`card_token`]: HMAC-SHA256 under a token key derived from the issuer master key, so it
//! can be neither reversed nor brute-forced over the card-number space without that key) and
//! its last four digits. [`Card`], [`Reader`], the maps of [`AuthState`] and so every journaled
//! [`AuthChange`] hold tokens. The public operations take the full number where the caller has
//! one (issuing, registering a reader, a swipe, unlocking, …) and compute the token. The card
//! key is derived from the number *presented* at the swipe, which the in-memory challenge keeps
//! until step 3 (challenges are never serialised). An [`Authorisation`] carries the last four
//! digits only.
//!
//! Card numbers are masked ([`mask_card_number`], or `************` and the last four) in
//! every `Debug` and `Display` text of this module.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use ipnet::IpNet;
use parking_lot::Mutex;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use onecard_protocol::pin::{agree, decrypt_agreed, random_secret, AgreedSecret, PinSecret};

use super::crypto::{
    card_token, cryptogram_matches, derive_card_key, derive_token_key, is_card_token, CardKey,
    IssuerKey, TokenKey, CHALLENGE_LEN, MAX_ORDER_ID_LEN,
};
use super::pin::{derive_pin_key, pin_verifier, EncryptedPin, PinError, PinKey, PinVerifier};
use crate::fast_map::FastDashMap;
use onecard_protocol::wire::to_hex;

// The protocol's messages, which this module makes; re-exported at their old paths.
pub use onecard_protocol::mask::{mask_card_number, mask_last4};
pub use onecard_protocol::messages::{
    is_sign_in, AuthOutcome, Authorisation, ChallengeIssued, SwipeRefusal, SIGN_IN_PREFIX,
};

/// Length of the window of the refused-swipe limiter, in seconds.
pub const RATE_WINDOW_SECS: u64 = 60;
/// Fewest digits in a card number.
pub const CARD_NUMBER_MIN_DIGITS: usize = 12;
/// Most digits in a card number (ISO/IEC 7812).
pub const CARD_NUMBER_MAX_DIGITS: usize = 19;
/// Longest reader id, owner or account id accepted.
pub const MAX_ID_LEN: usize = 128;

pub use super::error::CardError;

/// The last four characters of a card number (all of it if shorter).
fn last4_of(number: &str) -> String {
    let n = number.chars().count();
    number.chars().skip(n.saturating_sub(4)).collect()
}

/// How a token the node has no card for is named in an error: its first 8 hex digits.
fn short_token(token: &str) -> String {
    let head: String = token.chars().take(8).collect();
    format!("with token {head}…")
}

fn is_valid_card_number(number: &str) -> bool {
    (CARD_NUMBER_MIN_DIGITS..=CARD_NUMBER_MAX_DIGITS).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

fn check_field(value: &str, field: &'static str) -> Result<(), CardError> {
    if value.is_empty() || value.len() > MAX_ID_LEN {
        Err(CardError::InvalidField { field })
    } else {
        Ok(())
    }
}

/// An address for comparison: lower case, surrounding whitespace dropped, inner runs of
/// whitespace collapsed to one space.
pub fn normalise_address(address: &str) -> String {
    address
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a delivery address is the registered one (after [`normalise_address`]). An empty
/// delivery address means nothing is delivered (digital goods, F17) and always matches.
pub fn same_address(registered: &str, delivery: &str) -> bool {
    let delivery = normalise_address(delivery);
    delivery.is_empty() || delivery == normalise_address(registered)
}

/// Settings of the authentication center.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Wrong PINs in a row that lock the card.
    pub max_pin_failures: u32,
    /// How long a challenge stays valid, in seconds.
    pub challenge_ttl_secs: u64,
    /// Refused swipes a reader may have in a 60-second window; the next swipe in the window is
    /// refused with `RateLimited`.
    pub refused_swipes_per_minute: u32,
    /// How far above the last accepted transaction counter a card's counter may be: as card
    /// schemes bound the jump of the application transaction counter, so that one cryptogram
    /// with a huge counter cannot use up the card.
    pub max_counter_jump: u32,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            max_pin_failures: 3,
            challenge_ttl_secs: 120,
            refused_swipes_per_minute: 5,
            max_counter_jump: 1000,
        }
    }
}

/// Whether a card can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardStatus {
    Active,
    /// Too many wrong PINs; an administrator unlocks it ([`AuthCenter::unlock_card`]).
    Locked,
    /// Reported lost; final.
    Lost,
}

/// A card as the node knows it (F1). Neither its number nor its key is here (I10): the card is
/// known by its token, and its key is derived from the issuer master key and the number the
/// card presents at each swipe.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// The card token ([`card_token`] of the number under the token key).
    pub token: String,
    /// The last four digits of the number, to show the card to people (`************1234`).
    pub last4: String,
    /// The holder's consumer id (the account the card pays from).
    pub holder: String,
    pub status: CardStatus,
    /// The keyed PIN verifier ([`PinVerifier`]): useless without the issuer master key.
    pub pin_verifier: PinVerifier,
    /// The highest transaction counter accepted so far (0: none yet).
    pub last_counter: u32,
    /// Wrong PINs since the last right one or unlock.
    pub pin_failures: u32,
    /// The holder's registered delivery address (F14).
    pub registered_address: String,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("number", &mask_last4(&self.last4))
            .field("holder", &self.holder)
            .field("status", &self.status)
            .field("pin_verifier", &self.pin_verifier)
            .field("last_counter", &self.last_counter)
            .field("pin_failures", &self.pin_failures)
            .finish_non_exhaustive()
    }
}

/// A card reader and its binding (F2).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    /// The reader's special identification code.
    pub id: String,
    /// The person or organisation the reader belongs to.
    pub owner: String,
    /// The token of the one card that works on this reader.
    pub card_token: String,
    /// The consumer id of the account; must be the card's holder.
    pub account: String,
    /// The registered network address or subnet (a single address is a /32 or /128).
    #[serde(with = "ipnet_as_string")]
    pub network: IpNet,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("card_token", &self.card_token)
            .field("account", &self.account)
            .field("network", &self.network)
            .finish()
    }
}

/// A reader to register ([`AuthCenter::register_reader`]): as [`Reader`], with the card's full
/// number, which the center turns into the token it stores.
#[derive(Clone)]
pub struct NewReader {
    pub id: String,
    pub owner: String,
    /// The one card that works on this reader.
    pub card_number: String,
    pub account: String,
    pub network: IpNet,
}

impl std::fmt::Debug for NewReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewReader")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("card_number", &mask_card_number(&self.card_number))
            .field("account", &self.account)
            .field("network", &self.network)
            .finish()
    }
}

impl Reader {
    /// Whether a connection from `peer` comes from the registered network. An IPv4 address
    /// seen through a dual-stack socket (`::ffff:a.b.c.d`) counts as that IPv4 address.
    pub fn accepts_peer(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.network.contains(&peer)
    }
}

mod ipnet_as_string {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The durable part of the authentication center: configuration, cards (by token) and readers
/// (by id). No key, no full card number and no challenge is in it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub config: AuthConfig,
    cards: BTreeMap<String, Card>,
    readers: BTreeMap<String, Reader>,
}

// Not derived: the maps' keys repeat what the values show.
impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("config", &self.config)
            .field("cards", &self.cards.values().collect::<Vec<_>>())
            .field("readers", &self.readers.values().collect::<Vec<_>>())
            .finish()
    }
}

/// A durable change of the authentication center's state: the new value of a card or reader.
/// The node journals these; replaying them in order rebuilds [`AuthState`] exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    Card(Card),
    Reader(Reader),
}

impl AuthState {
    /// An empty state with these settings.
    pub fn new(config: AuthConfig) -> AuthState {
        AuthState {
            config,
            ..AuthState::default()
        }
    }

    /// Applies a journaled change (replay, the account-state view).
    pub fn apply(&mut self, change: &AuthChange) {
        match change {
            AuthChange::Card(c) => {
                self.cards.insert(c.token.clone(), c.clone());
            }
            AuthChange::Reader(r) => {
                self.readers.insert(r.id.clone(), r.clone());
            }
        }
    }

    /// The card with this token ([`AuthCenter::card`] looks a card up by number).
    pub fn card_by_token(&self, token: &str) -> Option<&Card> {
        self.cards.get(token)
    }

    pub fn cards(&self) -> impl Iterator<Item = &Card> {
        self.cards.values()
    }
    pub fn readers(&self) -> impl Iterator<Item = &Reader> {
        self.readers.values()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the card's cryptogram and the PIN.
    Issued,
    /// Card and PIN proven; waiting for the consumer's answer about the delivery address.
    AwaitingAddressConfirmation,
}

/// An outstanding challenge. In memory only: it is never serialised, so the full card number
/// presented at the swipe (from which step 3 derives the card key) is kept nowhere else.
struct Challenge {
    reader_id: String,
    /// The number the card presented at the swipe.
    card_number: String,
    card_token: String,
    order_id: String,
    amount_cents: u64,
    challenge: [u8; CHALLENGE_LEN],
    /// The agreement key the PIN for it is encrypted to.
    agreement: Arc<AgreementKey>,
    expires_at: u64,
    stage: Stage,
}

/// How long (seconds) the node keeps one X25519 agreement key for PIN transport before it
/// makes a new one: within it the node need not make a key pair per challenge, and a reader
/// that keeps its own pair (`ReaderPinKeys`) need not agree again, so neither side computes an
/// X25519 operation per payment. The price is forward secrecy within an epoch: the key (and the
/// secrets agreed with it) stays in memory until the epoch and the last challenge under it are
/// over, and whoever reads the node's memory meanwhile can read the PINs sent under it
/// (ARCHITECTURE.md, "Threat model of the PIN").
pub const AGREEMENT_KEY_LIFETIME_SECS: u64 = 60;
/// Most readers' public keys whose agreed secret one agreement key keeps; beyond it a PIN is
/// decrypted with an agreement of its own, as for a key seen once.
const MAX_AGREEMENTS_PER_KEY: usize = 65_536;

/// The node's X25519 agreement key of one epoch, and the secrets agreed with the readers' keys
/// under it. Dropped (its secrets overwritten) with the last challenge that uses it once the
/// next epoch's key has replaced it.
struct AgreementKey {
    secret: StaticSecret,
    public: [u8; 32],
    created_at: u64,
    agreed: FastDashMap<[u8; 32], Arc<AgreedSecret>>,
}

impl AgreementKey {
    fn new(now: u64, rng: &mut (impl RngCore + CryptoRng)) -> AgreementKey {
        let secret = random_secret(rng);
        let public = PublicKey::from(&secret).to_bytes();
        AgreementKey {
            secret,
            public,
            created_at: now,
            agreed: FastDashMap::default(),
        }
    }

    /// Whether it may still be handed out with a new challenge at `now`.
    fn current_at(&self, now: u64) -> bool {
        (self.created_at..self.created_at.saturating_add(AGREEMENT_KEY_LIFETIME_SECS))
            .contains(&now)
    }

    /// Decrypts a PIN sent for `challenge`, with the secret agreed with its reader key (kept
    /// for the reader's next PIN under this key).
    fn decrypt(
        &self,
        challenge: &[u8; CHALLENGE_LEN],
        pin: &EncryptedPin,
    ) -> Result<PinSecret, PinError> {
        let kept = self.agreed.get(&pin.reader_public).map(|a| a.clone());
        let agreed = match kept {
            Some(agreed) => agreed,
            None => {
                let agreed =
                    Arc::new(agree(&self.secret, &pin.reader_public).ok_or(PinError::Transport)?);
                if self.agreed.len() < MAX_AGREEMENTS_PER_KEY {
                    self.agreed.insert(pin.reader_public, agreed.clone());
                }
                agreed
            }
        };
        decrypt_agreed(&agreed, challenge, pin)
    }
}

/// Refused swipes of one reader in the current window.
#[derive(Clone, Copy, Debug)]
struct RefusalWindow {
    start: u64,
    refused: u32,
}

impl RefusalWindow {
    fn end(&self) -> u64 {
        self.start.saturating_add(RATE_WINDOW_SECS)
    }
}

/// Where the center writes its durable changes: the node journals them. The center calls it
/// while it still holds the changed card, so that changes of one card reach it in the order
/// they were made; it must only queue them (the caller waits for them to be on disk before it
/// answers). An authentication that authorises a payment passes the authorisation along with
/// the card's change, so both can be made durable at once.
pub trait ChangeLog {
    fn record(&mut self, changes: Vec<AuthChange>, authorised: Option<&Authorisation>);
}

/// Collects the changes (tests and tools without a journal).
impl ChangeLog for Vec<AuthChange> {
    fn record(&mut self, changes: Vec<AuthChange>, _authorised: Option<&Authorisation>) {
        self.extend(changes);
    }
}

/// Swipes between two sweeps of expired challenges and refusal windows.
const PURGE_EVERY_SWIPES: u64 = 4096;

/// What limits a payment at authorisation beyond the card and the PIN: the account's available
/// credit now (F15), and whether the consumer's own payment-gateway rules (F9) refuse it (the
/// engine decides that from the account; the center only reports it, after credit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentLimits {
    pub available_credit_cents: u64,
    pub gateway: Option<crate::model::GatewayRefusal>,
}

/// Credit alone, no gateway rule refusing.
impl From<u64> for PaymentLimits {
    fn from(available_credit_cents: u64) -> PaymentLimits {
        PaymentLimits {
            available_credit_cents,
            gateway: None,
        }
    }
}

/// The authentication center: cards, readers, outstanding challenges, the refused-swipe
/// limiter and the orders being authorised, in concurrent maps (sharded, one lock per shard
/// held only for map operations and the cheap checks of one card). No lock is held across a
/// key agreement or a MAC, and no lock is process-wide: authentications of different cards
/// run in parallel; two of one card are ordered by the card's map entry.
pub struct AuthCenter {
    config: AuthConfig,
    master: IssuerKey,
    /// Derived from `master`; card tokens are computed under it.
    token_key: TokenKey,
    /// Derived from `master`; PIN verifiers are MACs under it.
    pin_key: PinKey,
    /// Card token → card.
    cards: FastDashMap<String, Card>,
    /// Reader id → reader.
    readers: FastDashMap<String, Reader>,
    /// Card token → the reader bound to it (derived from `readers`).
    reader_by_card: FastDashMap<String, String>,
    /// Registering a reader checks and changes `readers` and `reader_by_card` together; this
    /// keeps two registrations from interleaving. Administrative only: no payment takes it.
    registration: Mutex<()>,
    challenges: FastDashMap<String, Challenge>,
    /// Reader id → the id of its outstanding challenge.
    challenge_by_reader: FastDashMap<String, String>,
    refusals: FastDashMap<String, RefusalWindow>,
    /// Order id → the challenge whose authentication holds the order: an order takes one
    /// authorisation, so a second payer is refused while the first is being decided, and
    /// after it by the recorded authorisation.
    order_claims: FastDashMap<String, String>,
    swipes: AtomicU64,
    /// The agreement key handed out with new challenges (made at the first swipe of each
    /// epoch).
    agreement: parking_lot::RwLock<Option<Arc<AgreementKey>>>,
}

impl std::fmt::Debug for AuthCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCenter")
            .field("cards", &self.cards.len())
            .field("readers", &self.readers.len())
            .field("outstanding_challenges", &self.challenges.len())
            .finish_non_exhaustive()
    }
}

/// Whether `counter` may follow `last`: above it, by at most `max_jump`.
fn counter_check(last: u32, counter: u32, max_jump: u32) -> Result<(), AuthOutcome> {
    if counter <= last {
        Err(AuthOutcome::Replayed)
    } else if counter - last > max_jump {
        Err(AuthOutcome::CounterOutOfWindow)
    } else {
        Ok(())
    }
}

impl AuthCenter {
    /// An empty center.
    pub fn new(master: IssuerKey, config: AuthConfig) -> AuthCenter {
        AuthCenter {
            config,
            token_key: derive_token_key(&master),
            pin_key: derive_pin_key(&master),
            master,
            cards: FastDashMap::default(),
            readers: FastDashMap::default(),
            reader_by_card: FastDashMap::default(),
            registration: Mutex::new(()),
            challenges: FastDashMap::default(),
            challenge_by_reader: FastDashMap::default(),
            refusals: FastDashMap::default(),
            order_claims: FastDashMap::default(),
            swipes: AtomicU64::new(0),
            agreement: parking_lot::RwLock::new(None),
        }
    }

    /// A center restored from its stored state (no challenges: they do not survive a
    /// restart). Checks that every card is stored under its token and every token and last
    /// four is well formed, and that every reader's card exists, belongs to the reader's
    /// account and is bound to no other reader. (Whether a token was computed under this
    /// master key cannot be checked without the card's number: a card of another issuer's
    /// store would simply never match a swipe.)
    pub fn from_state(master: IssuerKey, state: AuthState) -> Result<AuthCenter, CardError> {
        let center = AuthCenter::new(master, state.config.clone());
        for (token, card) in &state.cards {
            if token != &card.token
                || !is_card_token(token)
                || card.last4.len() != 4
                || !card.last4.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(CardError::InvalidCardToken);
            }
        }
        for reader in state.readers.values() {
            let card = state
                .cards
                .get(&reader.card_token)
                .ok_or_else(|| CardError::UnknownCard(short_token(&reader.card_token)))?;
            if card.holder != reader.account {
                return Err(CardError::AccountMismatch {
                    account: reader.account.clone(),
                    card: mask_last4(&card.last4),
                });
            }
            if let Some(other) = center
                .reader_by_card
                .insert(reader.card_token.clone(), reader.id.clone())
            {
                return Err(CardError::CardAlreadyBound {
                    card: mask_last4(&card.last4),
                    reader: other,
                });
            }
        }
        for (token, card) in state.cards {
            center.cards.insert(token, card);
        }
        for (id, reader) in state.readers {
            center.readers.insert(id, reader);
        }
        Ok(center)
    }

    /// The durable state as it is now (a copy), to store or compare.
    pub fn state(&self) -> AuthState {
        AuthState {
            config: self.config.clone(),
            cards: self
                .cards
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            readers: self
                .readers
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The token of `card_number` under this center's token key (what the node stores for it).
    pub fn card_token(&self, card_number: &str) -> String {
        card_token(&self.token_key, card_number)
    }

    /// The card with this number as it is now, if issued (looked up by its token).
    pub fn card(&self, number: &str) -> Option<Card> {
        self.cards.get(&self.card_token(number)).map(|c| c.clone())
    }

    pub fn reader(&self, id: &str) -> Option<Reader> {
        self.readers.get(id).map(|r| r.clone())
    }

    /// The reader `card_number` is bound to, if any.
    pub fn reader_of_card(&self, card_number: &str) -> Option<Reader> {
        let id = self
            .reader_by_card
            .get(&self.card_token(card_number))
            .map(|id| id.clone())?;
        self.reader(&id)
    }

    /// The cards locked now (too many wrong PINs), in token order: for operators.
    pub fn locked_cards(&self) -> Vec<Card> {
        let mut locked: Vec<Card> = self
            .cards
            .iter()
            .filter(|c| c.status == CardStatus::Locked)
            .map(|c| c.value().clone())
            .collect();
        locked.sort_by(|a, b| a.token.cmp(&b.token));
        locked
    }

    /// How many challenges are outstanding (expired ones included until purged or used).
    pub fn outstanding_challenges(&self) -> usize {
        self.challenges.len()
    }

    /// Issues a card to consumer `holder` with `pin` and the holder's registered delivery
    /// address. Returns the card key for personalisation (it goes into the card's chip and
    /// nowhere else; the node does not keep it). The node keeps the card's token, last four
    /// digits and PIN verifier, not its number nor its PIN.
    pub fn issue_card(
        &self,
        number: &str,
        holder: &str,
        pin: &str,
        registered_address: &str,
        log: &mut impl ChangeLog,
    ) -> Result<CardKey, CardError> {
        if !is_valid_card_number(number) {
            return Err(CardError::InvalidCardNumber);
        }
        check_field(holder, "holder")?;
        let token = self.card_token(number);
        let pin_verifier = pin_verifier(&self.pin_key, &token, pin)?;
        match self.cards.entry(token.clone()) {
            Entry::Occupied(_) => Err(CardError::DuplicateCard(mask_card_number(number))),
            Entry::Vacant(slot) => {
                let card = slot.insert(Card {
                    token,
                    last4: last4_of(number),
                    holder: holder.to_string(),
                    status: CardStatus::Active,
                    pin_verifier,
                    last_counter: 0,
                    pin_failures: 0,
                    registered_address: registered_address.to_string(),
                });
                log.record(vec![AuthChange::Card(card.clone())], None);
                Ok(derive_card_key(&self.master, number))
            }
        }
    }

    /// Registers a reader and binds it to its card: one reader per card and one card per
    /// reader. The reader's account must be the card's holder. The stored [`Reader`] names the
    /// card by its token.
    pub fn register_reader(
        &self,
        new: NewReader,
        log: &mut impl ChangeLog,
    ) -> Result<(), CardError> {
        let NewReader {
            id,
            owner,
            card_number,
            account,
            network,
        } = new;
        check_field(&id, "reader id")?;
        check_field(&owner, "owner")?;
        check_field(&account, "account")?;
        let _registering = self.registration.lock();
        if self.readers.contains_key(&id) {
            return Err(CardError::DuplicateReader(id));
        }
        let card_token = self.card_token(&card_number);
        let holder = self
            .cards
            .get(&card_token)
            .map(|c| c.holder.clone())
            .ok_or_else(|| CardError::UnknownCard(mask_card_number(&card_number)))?;
        if let Some(other) = self.reader_by_card.get(&card_token) {
            return Err(CardError::CardAlreadyBound {
                card: mask_card_number(&card_number),
                reader: other.clone(),
            });
        }
        if holder != account {
            return Err(CardError::AccountMismatch {
                account,
                card: mask_card_number(&card_number),
            });
        }
        let reader = Reader {
            id: id.clone(),
            owner,
            card_token: card_token.clone(),
            account,
            network,
        };
        log.record(vec![AuthChange::Reader(reader.clone())], None);
        self.reader_by_card.insert(card_token, id.clone());
        self.readers.insert(id, reader);
        Ok(())
    }

    /// Changes the card with this number under its entry's lock and records the new value.
    fn change_card<T>(
        &self,
        number: &str,
        log: &mut impl ChangeLog,
        change: impl FnOnce(&mut Card) -> Result<T, CardError>,
    ) -> Result<T, CardError> {
        let token = self.card_token(number);
        let mut card = self
            .cards
            .get_mut(&token)
            .ok_or_else(|| CardError::UnknownCard(mask_card_number(number)))?;
        let result = change(&mut card)?;
        log.record(vec![AuthChange::Card(card.clone())], None);
        Ok(result)
    }

    /// Administrator: unlocks a locked card and clears its PIN failures. A lost card stays
    /// lost (`CardLost`).
    pub fn unlock_card(&self, number: &str, log: &mut impl ChangeLog) -> Result<(), CardError> {
        self.change_card(number, log, |card| {
            if card.status == CardStatus::Lost {
                return Err(CardError::CardLost(mask_card_number(number)));
            }
            card.status = CardStatus::Active;
            card.pin_failures = 0;
            Ok(())
        })
    }

    /// The holder reports the card lost: no swipe or outstanding challenge of it succeeds any
    /// more.
    pub fn report_lost(&self, number: &str, log: &mut impl ChangeLog) -> Result<(), CardError> {
        self.change_card(number, log, |card| {
            card.status = CardStatus::Lost;
            Ok(())
        })
    }

    /// Changes the card holder's registered delivery address (a permanent change).
    pub fn set_registered_address(
        &self,
        number: &str,
        address: &str,
        log: &mut impl ChangeLog,
    ) -> Result<(), CardError> {
        self.change_card(number, log, |card| {
            card.registered_address = address.to_string();
            Ok(())
        })
    }

    /// Drops every expired challenge (and the order claims of those waiting for an address
    /// answer), every ended refusal window and the agreement key of an epoch that is over.
    /// The engine's tick calls it, and swipes now and then.
    pub fn purge_expired(&self, now: u64) {
        let expired: Vec<String> = self
            .challenges
            .iter()
            .filter(|c| now >= c.expires_at)
            .map(|c| c.key().clone())
            .collect();
        for id in expired {
            if let Some(c) = self.take_challenge(&id) {
                self.release_claim(&c.order_id, &id);
            }
        }
        self.refusals.retain(|_, w| now < w.end());
        // The agreement key of an epoch that is over: not handed out again, and kept from here
        // only by the challenges issued under it, so that an idle node does not hold it (and
        // the secrets agreed with it) until its next swipe.
        let mut slot = self.agreement.write();
        if slot.as_ref().is_some_and(|k| !k.current_at(now)) {
            *slot = None;
        }
    }

    /// Whether an agreement key is held for new challenges (tests).
    #[cfg(test)]
    pub(crate) fn holds_agreement_key(&self) -> bool {
        self.agreement.read().is_some()
    }

    /// Removes challenge `id` (at most one caller gets it) and its reader's pointer to it.
    fn take_challenge(&self, id: &str) -> Option<Challenge> {
        let (_, challenge) = self.challenges.remove(id)?;
        self.challenge_by_reader
            .remove_if(&challenge.reader_id, |_, current| current == id);
        Some(challenge)
    }

    /// Puts a challenge taken by [`AuthCenter::take_challenge`] back, unless its reader has a
    /// newer one meanwhile (then it is dropped, as a new swipe drops the previous challenge).
    fn restore_challenge(&self, id: &str, challenge: Challenge) -> bool {
        match self.challenge_by_reader.entry(challenge.reader_id.clone()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                // Inserted under the reader's entry lock: a swipe on this reader waits for it.
                self.challenges.insert(id.to_string(), challenge);
                slot.insert(id.to_string());
                true
            }
        }
    }

    /// Releases `order`'s claim if challenge `challenge_id` holds it.
    fn release_claim(&self, order: &str, challenge_id: &str) {
        self.order_claims
            .remove_if(order, |_, holder| holder == challenge_id);
    }

    /// The node calls this once the authorisation of `order` by `challenge_id` is durable
    /// (and visible to `order_authorised`): from then on that record refuses a second payer.
    pub fn authorisation_recorded(&self, order: &str, challenge_id: &str) {
        self.release_claim(order, challenge_id);
    }

    /// Ends challenge `id` and lets go of whatever order it held (after its changes could not
    /// be written: nothing it decided counts).
    pub fn abandon_challenge(&self, id: &str) {
        self.take_challenge(id);
        self.order_claims.retain(|_, holder| holder != id);
    }

    fn refuse(&self, reader_id: &str, refusal: SwipeRefusal, now: u64) -> SwipeRefusal {
        let mut window = self
            .refusals
            .entry(reader_id.to_string())
            .or_insert(RefusalWindow {
                start: now,
                refused: 0,
            });
        if now >= window.end() {
            *window = RefusalWindow {
                start: now,
                refused: 0,
            };
        }
        window.refused = window.refused.saturating_add(1);
        refusal
    }

    /// Step 2: a card is swiped on reader `reader_id`, connected from `peer`, to pay
    /// `amount_cents` of order `order_id`.
    ///
    /// Refusals of a registered reader are counted; once a reader has
    /// `refused_swipes_per_minute` of them in a window (which starts at the first refusal and
    /// lasts 60 seconds), every swipe on it is `RateLimited` without any other check until the
    /// window ends. Swipes for unregistered reader ids are refused and not tracked (a map keyed
    /// by whatever ids strangers send would grow without bound; per-address limits belong to
    /// the transport).
    #[allow(clippy::too_many_arguments)]
    pub fn swipe(
        &self,
        reader_id: &str,
        card_number: &str,
        peer: IpAddr,
        order_id: &str,
        amount_cents: u64,
        now: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<ChallengeIssued, SwipeRefusal> {
        if self.swipes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY_SWIPES
            == PURGE_EVERY_SWIPES - 1
        {
            self.purge_expired(now);
        }
        if let Some(window) = self.refusals.get(reader_id) {
            if now < window.end() && window.refused >= self.config.refused_swipes_per_minute {
                return Err(SwipeRefusal::RateLimited {
                    retry_at: window.end(),
                });
            }
        }
        let Some((bound_token, account, network_ok)) = self.readers.get(reader_id).map(|r| {
            (
                r.card_token.clone(),
                r.account.clone(),
                r.accepts_peer(peer),
            )
        }) else {
            return Err(SwipeRefusal::UnknownReader);
        };
        let token = self.card_token(card_number);
        if bound_token != token {
            return Err(self.refuse(reader_id, SwipeRefusal::CardNotBound, now));
        }
        if !network_ok {
            return Err(self.refuse(reader_id, SwipeRefusal::WrongNetwork, now));
        }
        let (status, holder_matches) = match self.cards.get(&token) {
            Some(card) => (card.status, card.holder == account),
            None => return Err(self.refuse(reader_id, SwipeRefusal::CardNotBound, now)),
        };
        if !holder_matches {
            return Err(self.refuse(reader_id, SwipeRefusal::CardNotBound, now));
        }
        match status {
            CardStatus::Active => {}
            CardStatus::Locked => {
                return Err(self.refuse(reader_id, SwipeRefusal::CardLocked, now))
            }
            CardStatus::Lost => return Err(self.refuse(reader_id, SwipeRefusal::CardLost, now)),
        }
        // A sign-in (card and PIN, nothing to pay) is for zero; anything else for more.
        let sign_in = is_sign_in(order_id);
        if order_id.is_empty()
            || order_id.len() > MAX_ORDER_ID_LEN
            || sign_in != (amount_cents == 0)
        {
            return Err(self.refuse(reader_id, SwipeRefusal::InvalidOrder, now));
        }

        let mut id_bytes = [0u8; 16];
        rng.fill_bytes(&mut id_bytes);
        let challenge_id = format!("ch_{}", to_hex(&id_bytes));
        let mut challenge = [0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        let agreement = self.agreement_key(now, rng);
        let node_public = agreement.public;
        let expires_at = now.saturating_add(self.config.challenge_ttl_secs);

        // One live challenge per reader: the new one replaces the previous. The reader's entry
        // is held while both maps change, so two swipes on one reader cannot both stay live.
        let previous = {
            let mut slot = self
                .challenge_by_reader
                .entry(reader_id.to_string())
                .or_default();
            self.challenges.insert(
                challenge_id.clone(),
                Challenge {
                    reader_id: reader_id.to_string(),
                    card_number: card_number.to_string(),
                    card_token: token,
                    order_id: order_id.to_string(),
                    amount_cents,
                    challenge,
                    agreement,
                    expires_at,
                    stage: Stage::Issued,
                },
            );
            std::mem::replace(&mut *slot, challenge_id.clone())
        };
        if !previous.is_empty() {
            if let Some((_, old)) = self.challenges.remove(&previous) {
                self.release_claim(&old.order_id, &previous);
            }
        }
        Ok(ChallengeIssued {
            challenge_id,
            challenge,
            node_public,
            expires_at,
        })
    }

    /// The agreement key for a challenge issued at `now`: this epoch's, made (drawing its
    /// secret from `rng`) at the epoch's first swipe.
    fn agreement_key(&self, now: u64, rng: &mut (impl RngCore + CryptoRng)) -> Arc<AgreementKey> {
        if let Some(key) = self.agreement.read().as_ref().filter(|k| k.current_at(now)) {
            return key.clone();
        }
        let mut slot = self.agreement.write();
        match slot.as_ref().filter(|k| k.current_at(now)) {
            Some(key) => key.clone(),
            None => {
                let key = Arc::new(AgreementKey::new(now, rng));
                *slot = Some(key.clone());
                key
            }
        }
    }

    /// The account (consumer id) an outstanding challenge is for: the node looks up its
    /// available credit before [`AuthCenter::authenticate`].
    pub fn challenge_account(&self, challenge_id: &str) -> Option<String> {
        let token = self.challenges.get(challenge_id)?.card_token.clone();
        self.cards.get(&token).map(|c| c.holder.clone())
    }

    /// The amount (cents) an outstanding challenge is for.
    pub fn challenge_amount(&self, challenge_id: &str) -> Option<u64> {
        self.challenges.get(challenge_id).map(|c| c.amount_cents)
    }

    /// The order an outstanding challenge is for.
    pub fn challenge_order(&self, challenge_id: &str) -> Option<String> {
        self.challenges
            .get(challenge_id)
            .map(|c| c.order_id.clone())
    }

    /// Step 3 for challenge `challenge_id`: the card's `cryptogram` over the challenge, order,
    /// amount and `counter`; the encrypted PIN; the order's delivery address (empty: nothing to
    /// deliver); the consumer's decision about a different address if the caller already has
    /// it; the account's available credit now; and whether the order already has a recorded
    /// authorisation (`order_authorised`, asked while this authentication holds the order).
    ///
    /// Checks, in order: challenge, card status, cryptogram, counter (above the last, within
    /// `max_counter_jump`), the order (no other authorisation), PIN, address, credit. See the
    /// module documentation for the address-change round trip. The card's new counter, PIN
    /// failures and lock go to `log` under the card's entry lock, with the authorisation if
    /// there is one. On `Authorised` the order stays held until the node calls
    /// [`AuthCenter::authorisation_recorded`].
    #[allow(clippy::too_many_arguments)]
    pub fn authenticate(
        &self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        limits: impl Into<PaymentLimits>,
        now: u64,
        order_authorised: impl FnOnce(&str) -> bool,
        log: &mut impl ChangeLog,
    ) -> AuthOutcome {
        let Some(challenge) = self.take_challenge(challenge_id) else {
            return AuthOutcome::TimedOut;
        };
        let order = challenge.order_id.clone();
        let outcome = if now >= challenge.expires_at {
            AuthOutcome::TimedOut
        } else {
            self.authenticate_challenge(
                challenge_id,
                challenge,
                counter,
                cryptogram,
                pin,
                delivery_address,
                confirm_address_change,
                limits.into(),
                order_authorised,
                log,
            )
        };
        // A challenge that goes on (or an authorisation on its way to the record) keeps the
        // order; every other outcome ends the challenge and lets the order go.
        if !matches!(
            outcome,
            AuthOutcome::Authorised(_)
                | AuthOutcome::ConfirmAddressChange
                | AuthOutcome::CounterOutOfWindow
        ) {
            self.release_claim(&order, challenge_id);
        }
        outcome
    }

    /// [`AuthCenter::authenticate`] for a live challenge taken out of the table.
    #[allow(clippy::too_many_arguments)]
    fn authenticate_challenge(
        &self,
        challenge_id: &str,
        mut challenge: Challenge,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        limits: PaymentLimits,
        order_authorised: impl FnOnce(&str) -> bool,
        log: &mut impl ChangeLog,
    ) -> AuthOutcome {
        let Some((status, last_counter)) = self
            .cards
            .get(&challenge.card_token)
            .map(|c| (c.status, c.last_counter))
        else {
            return AuthOutcome::TimedOut;
        };
        match status {
            CardStatus::Active => {}
            CardStatus::Locked => return AuthOutcome::CardLocked,
            CardStatus::Lost => return AuthOutcome::CardLost,
        }

        // Card authenticity: the key of the number presented at the swipe (its token is this
        // card's, checked then). No lock is held for the MACs and the key agreement.
        let key = derive_card_key(&self.master, &challenge.card_number);
        if !cryptogram_matches(
            &key,
            &challenge.challenge,
            &challenge.order_id,
            challenge.amount_cents,
            counter,
            cryptogram,
        ) {
            return AuthOutcome::BadCryptogram;
        }
        match counter_check(last_counter, counter, self.config.max_counter_jump) {
            Ok(()) => {}
            Err(AuthOutcome::CounterOutOfWindow) => {
                // Refused without using up the challenge: the card is genuine, its counter is
                // not one the node takes (ARCHITECTURE.md, the counter window).
                if !self.restore_challenge(challenge_id, challenge) {
                    return AuthOutcome::TimedOut;
                }
                return AuthOutcome::CounterOutOfWindow;
            }
            Err(other) => return other,
        }

        // One authorisation per order: held from here until decided (and, when authorised,
        // until the authorisation is on record), and refused if another holds it or is on
        // record.
        match self.order_claims.entry(challenge.order_id.clone()) {
            // A challenge parked for the address answer already holds its order.
            Entry::Occupied(holder) if holder.get() == challenge_id => {}
            Entry::Occupied(_) => return AuthOutcome::OrderTaken,
            Entry::Vacant(slot) => {
                slot.insert(challenge_id.to_string());
            }
        }
        if order_authorised(&challenge.order_id) {
            return AuthOutcome::OrderTaken;
        }

        // Identity, computed before the card's lock is taken.
        // `Err`: unreadable; `Ok(None)`: not a PIN at all, which matches no verifier.
        let pin_check = (challenge.agreement)
            .decrypt(&challenge.challenge, pin)
            .map(|pin| pin_verifier(&self.pin_key, &challenge.card_token, pin.expose()).ok());

        let max_failures = self.config.max_pin_failures;
        let outcome = {
            let Some(mut card) = self.cards.get_mut(&challenge.card_token) else {
                return AuthOutcome::TimedOut;
            };
            // The card may have changed since it was read: another authentication of it, a
            // lock or a loss report. Decided again under its lock.
            let decided = match card.status {
                CardStatus::Active => {
                    counter_check(card.last_counter, counter, self.config.max_counter_jump)
                }
                CardStatus::Locked => Err(AuthOutcome::CardLocked),
                CardStatus::Lost => Err(AuthOutcome::CardLost),
            };
            let outcome = match decided {
                Err(outcome) => outcome,
                Ok(()) => {
                    card.last_counter = counter;
                    match pin_check {
                        Err(_) => AuthOutcome::PinUnreadable,
                        Ok(candidate)
                            if !candidate
                                .as_ref()
                                .is_some_and(|c| c.matches(&card.pin_verifier)) =>
                        {
                            card.pin_failures = card.pin_failures.saturating_add(1);
                            if card.pin_failures >= max_failures {
                                card.status = CardStatus::Locked;
                                AuthOutcome::CardLocked
                            } else {
                                AuthOutcome::WrongPin {
                                    tries_left: max_failures - card.pin_failures,
                                }
                            }
                        }
                        Ok(_) => {
                            card.pin_failures = 0;
                            if same_address(&card.registered_address, delivery_address) {
                                self.finish(&challenge, &card, false, &limits)
                            } else {
                                match confirm_address_change {
                                    None => AuthOutcome::ConfirmAddressChange,
                                    Some(false) => AuthOutcome::AddressChangeDeclined,
                                    Some(true) => self.finish(&challenge, &card, true, &limits),
                                }
                            }
                        }
                    }
                }
            };
            if card.last_counter == counter {
                let authorised = match &outcome {
                    AuthOutcome::Authorised(a) => Some(a),
                    _ => None,
                };
                log.record(vec![AuthChange::Card(card.clone())], authorised);
            }
            outcome
        };
        if outcome == AuthOutcome::ConfirmAddressChange {
            challenge.stage = Stage::AwaitingAddressConfirmation;
            if !self.restore_challenge(challenge_id, challenge) {
                return AuthOutcome::TimedOut;
            }
        }
        outcome
    }

    /// The consumer's answer to [`AuthOutcome::ConfirmAddressChange`] for `challenge_id`:
    /// `accept` goes on with the credit check (with the available credit now), a refusal ends
    /// with `AddressChangeDeclined`. A challenge that is unknown, expired or not waiting for
    /// this answer gives `TimedOut` (and is dropped). An authorisation goes to `log`.
    pub fn confirm_address_change(
        &self,
        challenge_id: &str,
        accept: bool,
        limits: impl Into<PaymentLimits>,
        now: u64,
        log: &mut impl ChangeLog,
    ) -> AuthOutcome {
        let Some(challenge) = self.take_challenge(challenge_id) else {
            return AuthOutcome::TimedOut;
        };
        let outcome = if now >= challenge.expires_at
            || challenge.stage != Stage::AwaitingAddressConfirmation
        {
            AuthOutcome::TimedOut
        } else {
            match self.cards.get(&challenge.card_token) {
                None => AuthOutcome::TimedOut,
                Some(card) => match card.status {
                    CardStatus::Locked => AuthOutcome::CardLocked,
                    CardStatus::Lost => AuthOutcome::CardLost,
                    CardStatus::Active if !accept => AuthOutcome::AddressChangeDeclined,
                    CardStatus::Active => {
                        let outcome = self.finish(&challenge, &card, true, &limits.into());
                        if let AuthOutcome::Authorised(a) = &outcome {
                            log.record(Vec::new(), Some(a));
                        }
                        outcome
                    }
                },
            }
        };
        if !outcome.is_authorised() {
            self.release_claim(&challenge.order_id, challenge_id);
        }
        outcome
    }

    fn finish(
        &self,
        challenge: &Challenge,
        card: &Card,
        temporary_address_change: bool,
        limits: &PaymentLimits,
    ) -> AuthOutcome {
        if challenge.amount_cents > limits.available_credit_cents {
            return AuthOutcome::CreditRefused {
                amount_cents: challenge.amount_cents,
                available_cents: limits.available_credit_cents,
            };
        }
        if let Some(refusal) = &limits.gateway {
            return AuthOutcome::GatewayRefused {
                rule: refusal.rule.to_string(),
                reason: refusal.reason.clone(),
            };
        }
        AuthOutcome::Authorised(Authorisation {
            order_id: challenge.order_id.clone(),
            amount_cents: challenge.amount_cents,
            card_last4: card.last4.clone(),
            account: card.holder.clone(),
            reader_id: challenge.reader_id.clone(),
            temporary_address_change,
        })
    }
}
