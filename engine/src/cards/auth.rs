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
//!    public half of a fresh X25519 key pair for the PIN. A reader has at most one outstanding
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
//! configuration) is serialisable. Outstanding challenges hold X25519 secrets and are not part
//! of it: **challenges do not survive a restart** (the reader swipes again), nor does the
//! refused-swipe limiter.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::crypto::{
    card_token, cryptogram_matches, derive_card_key, derive_token_key, is_card_token, CardKey,
    IssuerKey, TokenKey, CHALLENGE_LEN, MAX_ORDER_ID_LEN,
};
use super::pin::{decrypt_pin, random_secret, verify_pin, EncryptedPin, PinHash, PinHasher};
use super::prompt::Prompt;

/// Length of the window of the refused-swipe limiter, in seconds.
pub const RATE_WINDOW_SECS: u64 = 60;
/// Fewest digits in a card number.
pub const CARD_NUMBER_MIN_DIGITS: usize = 12;
/// Most digits in a card number (ISO/IEC 7812).
pub const CARD_NUMBER_MAX_DIGITS: usize = 19;
/// Longest reader id, owner or account id accepted.
pub const MAX_ID_LEN: usize = 128;

pub use super::error::CardError;

/// `************7890`: every character but the last four replaced by `*` (all of them for
/// four characters or fewer).
pub fn mask_card_number(number: &str) -> String {
    let n = number.chars().count();
    let keep = if n > 4 { 4 } else { 0 };
    number
        .chars()
        .enumerate()
        .map(|(i, c)| if i < n - keep { '*' } else { c })
        .collect()
}

/// `************` and the last four digits: how a card the node knows only by token and last
/// four is shown.
pub fn mask_last4(last4: &str) -> String {
    format!("************{last4}")
}

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
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            max_pin_failures: 3,
            challenge_ttl_secs: 120,
            refused_swipes_per_minute: 5,
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
    pub pin_hash: PinHash,
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
            .field("pin_hash", &self.pin_hash)
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

/// The order ids of sign-ins: the consumer proves card and PIN at the reader to use the
/// consumer API, and nothing is paid. A sign-in is for an amount of zero, with no delivery
/// address; every other order id needs an amount above zero.
pub const SIGN_IN_PREFIX: &str = "signin-";

/// Whether an order id is a sign-in's ([`SIGN_IN_PREFIX`]).
pub fn is_sign_in(order_id: &str) -> bool {
    order_id.starts_with(SIGN_IN_PREFIX)
}

/// A swipe was accepted: what goes back to the reader program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeIssued {
    pub challenge_id: String,
    /// The challenge the card's cryptogram must cover.
    pub challenge: [u8; CHALLENGE_LEN],
    /// The node's X25519 public key for this challenge: the PIN is encrypted to it.
    pub node_public: [u8; 32],
    /// The challenge is valid while `now < expires_at`.
    pub expires_at: u64,
}

impl ChallengeIssued {
    /// "Enter your PIN".
    pub fn prompt(&self) -> Prompt {
        Prompt::enter_pin()
    }
}

/// Why a swipe was refused (step 2). Shown to the consumer through [`SwipeRefusal::prompt`];
/// the variant itself is for the node's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SwipeRefusal {
    /// Too many refused swipes on this reader: refused unchecked until `retry_at`.
    #[error("too many refused swipes on this reader; retry at {retry_at}")]
    RateLimited { retry_at: u64 },
    #[error("unknown reader")]
    UnknownReader,
    /// The card is not the one bound to this reader (I9).
    #[error("card not bound to this reader")]
    CardNotBound,
    /// The connection does not come from the reader's registered network (I9).
    #[error("connection not from the reader's registered network")]
    WrongNetwork,
    #[error("card locked")]
    CardLocked,
    #[error("card reported lost")]
    CardLost,
    /// The order id is empty or longer than 128 bytes, or the amount is zero.
    #[error("invalid order")]
    InvalidOrder,
}

impl SwipeRefusal {
    pub fn prompt(&self) -> Prompt {
        match self {
            SwipeRefusal::RateLimited { .. } => Prompt::rate_limited(),
            SwipeRefusal::UnknownReader
            | SwipeRefusal::CardNotBound
            | SwipeRefusal::WrongNetwork => Prompt::not_bound(),
            SwipeRefusal::CardLocked => Prompt::card_locked(),
            SwipeRefusal::CardLost => Prompt::card_lost(),
            SwipeRefusal::InvalidOrder => Prompt::invalid_order(),
        }
    }
}

/// Everything step 3 established: the order may be placed (step 4).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    pub order_id: String,
    pub amount_cents: u64,
    /// The last four digits of the card's number.
    pub card_last4: String,
    /// The consumer id the order is for.
    pub account: String,
    pub reader_id: String,
    /// The consumer confirmed a delivery address other than the registered one, for this order
    /// only (the registered address is unchanged).
    pub temporary_address_change: bool,
}

impl std::fmt::Debug for Authorisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorisation")
            .field("order_id", &self.order_id)
            .field("amount_cents", &self.amount_cents)
            .field("card", &mask_last4(&self.card_last4))
            .field("account", &self.account)
            .field("reader_id", &self.reader_id)
            .field("temporary_address_change", &self.temporary_address_change)
            .finish()
    }
}

/// The outcome of [`AuthCenter::authenticate`] or [`AuthCenter::confirm_address_change`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOutcome {
    /// The challenge is unknown, already used, or expired.
    TimedOut,
    /// The card is locked: by this attempt's wrong PIN, or before it.
    CardLocked,
    /// The card was reported lost since the swipe.
    CardLost,
    /// The cryptogram is not the card's for this challenge, order, amount and counter.
    BadCryptogram,
    /// The cryptogram is right but its counter is not above the last one accepted.
    Replayed,
    /// The encrypted PIN could not be decrypted (damaged or tampered with). Not counted as a
    /// wrong PIN.
    PinUnreadable,
    /// A wrong PIN; the card locks after `tries_left` more.
    WrongPin {
        tries_left: u32,
    },
    /// The delivery address is not the registered one: ask the consumer, then call
    /// [`AuthCenter::confirm_address_change`] with the same challenge id.
    ConfirmAddressChange,
    /// The consumer did not confirm the other delivery address.
    AddressChangeDeclined,
    /// The amount is above the available credit.
    CreditRefused {
        amount_cents: u64,
        available_cents: u64,
    },
    Authorised(Authorisation),
}

impl AuthOutcome {
    pub fn prompt(&self) -> Prompt {
        match self {
            AuthOutcome::TimedOut => Prompt::timed_out(),
            AuthOutcome::CardLocked => Prompt::card_locked(),
            AuthOutcome::CardLost => Prompt::card_lost(),
            AuthOutcome::BadCryptogram | AuthOutcome::Replayed => Prompt::card_not_recognised(),
            AuthOutcome::PinUnreadable => Prompt::pin_unreadable(),
            AuthOutcome::WrongPin { tries_left } => Prompt::wrong_pin(*tries_left),
            AuthOutcome::ConfirmAddressChange => Prompt::confirm_address_change(),
            AuthOutcome::AddressChangeDeclined => Prompt::address_change_declined(),
            AuthOutcome::CreditRefused { .. } => Prompt::credit_refused(),
            AuthOutcome::Authorised(_) => Prompt::authorised(),
        }
    }

    pub fn is_authorised(&self) -> bool {
        matches!(self, AuthOutcome::Authorised(_))
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
    node_secret: StaticSecret,
    expires_at: u64,
    stage: Stage,
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

/// The authentication center: the durable [`AuthState`], the issuer master key, the
/// outstanding challenges and the refused-swipe limiter.
pub struct AuthCenter {
    state: AuthState,
    master: IssuerKey,
    /// Derived from `master`; card tokens are computed under it.
    token_key: TokenKey,
    hasher: PinHasher,
    /// Card token → the reader bound to it (derived from `state.readers`).
    reader_by_card: HashMap<String, String>,
    challenges: HashMap<String, Challenge>,
    /// Reader id → the id of its outstanding challenge.
    challenge_by_reader: HashMap<String, String>,
    refusals: HashMap<String, RefusalWindow>,
    /// Cards (by token) changed and readers registered since the last
    /// [`AuthCenter::take_changes`].
    dirty_cards: BTreeSet<String>,
    new_readers: Vec<String>,
}

impl std::fmt::Debug for AuthCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCenter")
            .field("cards", &self.state.cards.len())
            .field("readers", &self.state.readers.len())
            .field("outstanding_challenges", &self.challenges.len())
            .finish_non_exhaustive()
    }
}

impl AuthCenter {
    /// An empty center with the production PIN hasher.
    pub fn new(master: IssuerKey, config: AuthConfig) -> AuthCenter {
        AuthCenter {
            state: AuthState {
                config,
                ..AuthState::default()
            },
            token_key: derive_token_key(&master),
            master,
            hasher: PinHasher::default(),
            reader_by_card: HashMap::new(),
            challenges: HashMap::new(),
            challenge_by_reader: HashMap::new(),
            refusals: HashMap::new(),
            dirty_cards: BTreeSet::new(),
            new_readers: Vec::new(),
        }
    }

    /// The durable changes made since the last call, in an order that replays to the current
    /// state: cards first (a reader names its card), then new readers. The node journals them
    /// before it answers the call that made them.
    pub fn take_changes(&mut self) -> Vec<AuthChange> {
        let mut changes: Vec<AuthChange> = std::mem::take(&mut self.dirty_cards)
            .into_iter()
            .filter_map(|n| self.state.cards.get(&n).cloned().map(AuthChange::Card))
            .collect();
        changes.extend(
            std::mem::take(&mut self.new_readers)
                .into_iter()
                .filter_map(|id| self.state.readers.get(&id).cloned().map(AuthChange::Reader)),
        );
        changes
    }

    /// A center restored from its stored state (no challenges: they do not survive a
    /// restart). Checks that every card is stored under its token and every token and last
    /// four is well formed, and that every reader's card exists, belongs to the reader's
    /// account and is bound to no other reader. (Whether a token was computed under this
    /// master key cannot be checked without the card's number: a card of another issuer's
    /// store would simply never match a swipe.)
    pub fn from_state(master: IssuerKey, state: AuthState) -> Result<AuthCenter, CardError> {
        let mut center = AuthCenter::new(master, state.config.clone());
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
        center.state = state;
        Ok(center)
    }

    /// Hash new PINs with `hasher` (e.g. cheap parameters in tests).
    pub fn with_pin_hasher(mut self, hasher: PinHasher) -> AuthCenter {
        self.hasher = hasher;
        self
    }

    /// The durable state, to store.
    pub fn state(&self) -> &AuthState {
        &self.state
    }

    pub fn config(&self) -> &AuthConfig {
        &self.state.config
    }

    /// The token of `card_number` under this center's token key (what the node stores for it).
    pub fn card_token(&self, card_number: &str) -> String {
        card_token(&self.token_key, card_number)
    }

    /// The card with this number, if issued (looked up by its token).
    pub fn card(&self, number: &str) -> Option<&Card> {
        self.state.cards.get(&self.card_token(number))
    }

    pub fn reader(&self, id: &str) -> Option<&Reader> {
        self.state.readers.get(id)
    }

    /// The reader `card_number` is bound to, if any.
    pub fn reader_of_card(&self, card_number: &str) -> Option<&Reader> {
        self.reader_by_card
            .get(&self.card_token(card_number))
            .and_then(|id| self.state.readers.get(id))
    }

    /// How many challenges are outstanding (expired ones included until purged or used).
    pub fn outstanding_challenges(&self) -> usize {
        self.challenges.len()
    }

    /// Issues a card to consumer `holder` with `pin` and the holder's registered delivery
    /// address. Returns the card key for personalisation (it goes into the card's chip and
    /// nowhere else; the node does not keep it). The node keeps the card's token and last four
    /// digits, not its number.
    pub fn issue_card(
        &mut self,
        number: &str,
        holder: &str,
        pin: &str,
        registered_address: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<CardKey, CardError> {
        if !is_valid_card_number(number) {
            return Err(CardError::InvalidCardNumber);
        }
        check_field(holder, "holder")?;
        let token = self.card_token(number);
        if self.state.cards.contains_key(&token) {
            return Err(CardError::DuplicateCard(mask_card_number(number)));
        }
        let pin_hash = self.hasher.hash(pin, rng)?;
        self.dirty_cards.insert(token.clone());
        self.state.cards.insert(
            token.clone(),
            Card {
                token,
                last4: last4_of(number),
                holder: holder.to_string(),
                status: CardStatus::Active,
                pin_hash,
                last_counter: 0,
                pin_failures: 0,
                registered_address: registered_address.to_string(),
            },
        );
        Ok(derive_card_key(&self.master, number))
    }

    /// Registers a reader and binds it to its card: one reader per card and one card per
    /// reader. The reader's account must be the card's holder. The stored [`Reader`] names the
    /// card by its token.
    pub fn register_reader(&mut self, new: NewReader) -> Result<(), CardError> {
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
        if self.state.readers.contains_key(&id) {
            return Err(CardError::DuplicateReader(id));
        }
        let card_token = self.card_token(&card_number);
        let card = self
            .state
            .cards
            .get(&card_token)
            .ok_or_else(|| CardError::UnknownCard(mask_card_number(&card_number)))?;
        if let Some(other) = self.reader_by_card.get(&card_token) {
            return Err(CardError::CardAlreadyBound {
                card: mask_card_number(&card_number),
                reader: other.clone(),
            });
        }
        if card.holder != account {
            return Err(CardError::AccountMismatch {
                account,
                card: mask_card_number(&card_number),
            });
        }
        self.reader_by_card.insert(card_token.clone(), id.clone());
        self.new_readers.push(id.clone());
        self.state.readers.insert(
            id.clone(),
            Reader {
                id,
                owner,
                card_token,
                account,
                network,
            },
        );
        Ok(())
    }

    /// The card with this number, to change; it is recorded as changed.
    fn card_mut(&mut self, number: &str) -> Result<&mut Card, CardError> {
        let token = self.card_token(number);
        let card = self
            .state
            .cards
            .get_mut(&token)
            .ok_or_else(|| CardError::UnknownCard(mask_card_number(number)))?;
        self.dirty_cards.insert(token);
        Ok(card)
    }

    /// Administrator: unlocks a locked card and clears its PIN failures. A lost card stays
    /// lost (`CardLost`).
    pub fn unlock_card(&mut self, number: &str) -> Result<(), CardError> {
        let card = self.card_mut(number)?;
        if card.status == CardStatus::Lost {
            return Err(CardError::CardLost(mask_card_number(number)));
        }
        card.status = CardStatus::Active;
        card.pin_failures = 0;
        Ok(())
    }

    /// The holder reports the card lost: no swipe or outstanding challenge of it succeeds any
    /// more.
    pub fn report_lost(&mut self, number: &str) -> Result<(), CardError> {
        self.card_mut(number)?.status = CardStatus::Lost;
        Ok(())
    }

    /// Changes the card holder's registered delivery address (a permanent change).
    pub fn set_registered_address(&mut self, number: &str, address: &str) -> Result<(), CardError> {
        self.card_mut(number)?.registered_address = address.to_string();
        Ok(())
    }

    /// Drops every expired challenge.
    pub fn purge_expired(&mut self, now: u64) {
        let expired: Vec<String> = self
            .challenges
            .iter()
            .filter(|(_, c)| now >= c.expires_at)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.take_challenge(&id);
        }
        self.refusals.retain(|_, w| now < w.end());
    }

    fn take_challenge(&mut self, id: &str) -> Option<Challenge> {
        let challenge = self.challenges.remove(id)?;
        if self
            .challenge_by_reader
            .get(&challenge.reader_id)
            .map(String::as_str)
            == Some(id)
        {
            self.challenge_by_reader.remove(&challenge.reader_id);
        }
        Some(challenge)
    }

    fn refuse(&mut self, reader_id: &str, refusal: SwipeRefusal, now: u64) -> SwipeRefusal {
        let window = self
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
        &mut self,
        reader_id: &str,
        card_number: &str,
        peer: IpAddr,
        order_id: &str,
        amount_cents: u64,
        now: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<ChallengeIssued, SwipeRefusal> {
        if let Some(window) = self.refusals.get(reader_id) {
            if now < window.end() && window.refused >= self.state.config.refused_swipes_per_minute {
                return Err(SwipeRefusal::RateLimited {
                    retry_at: window.end(),
                });
            }
        }
        let Some(reader) = self.state.readers.get(reader_id) else {
            return Err(SwipeRefusal::UnknownReader);
        };
        let token = self.card_token(card_number);
        if reader.card_token != token {
            return Err(self.refuse(reader_id, SwipeRefusal::CardNotBound, now));
        }
        if !reader.accepts_peer(peer) {
            return Err(self.refuse(reader_id, SwipeRefusal::WrongNetwork, now));
        }
        let (status, holder_matches) = match self.state.cards.get(&token) {
            Some(card) => (card.status, card.holder == reader.account),
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
        let challenge_id = format!("ch_{}", hex(&id_bytes));
        let mut challenge = [0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        let node_secret = random_secret(rng);
        let node_public = PublicKey::from(&node_secret).to_bytes();
        let expires_at = now.saturating_add(self.state.config.challenge_ttl_secs);

        if let Some(previous) = self.challenge_by_reader.get(reader_id).cloned() {
            self.take_challenge(&previous);
        }
        self.challenges.insert(
            challenge_id.clone(),
            Challenge {
                reader_id: reader_id.to_string(),
                card_number: card_number.to_string(),
                card_token: token,
                order_id: order_id.to_string(),
                amount_cents,
                challenge,
                node_secret,
                expires_at,
                stage: Stage::Issued,
            },
        );
        self.challenge_by_reader
            .insert(reader_id.to_string(), challenge_id.clone());
        Ok(ChallengeIssued {
            challenge_id,
            challenge,
            node_public,
            expires_at,
        })
    }

    /// The live challenge `id`, taken out of the table; `None` (and dropped) if unknown or
    /// expired.
    /// The account (consumer id) an outstanding challenge is for: the node looks up its
    /// available credit before [`AuthCenter::authenticate`].
    pub fn challenge_account(&self, challenge_id: &str) -> Option<String> {
        let challenge = self.challenges.get(challenge_id)?;
        self.state
            .cards
            .get(&challenge.card_token)
            .map(|c| c.holder.clone())
    }

    /// The order an outstanding challenge is for.
    pub fn challenge_order(&self, challenge_id: &str) -> Option<String> {
        self.challenges
            .get(challenge_id)
            .map(|c| c.order_id.clone())
    }

    fn take_live_challenge(&mut self, id: &str, now: u64) -> Option<Challenge> {
        let challenge = self.take_challenge(id)?;
        (now < challenge.expires_at).then_some(challenge)
    }

    /// Step 3 for challenge `challenge_id`: the card's `cryptogram` over the challenge, order,
    /// amount and `counter`; the encrypted PIN; the order's delivery address (empty: nothing to
    /// deliver); the consumer's decision about a different address if the caller already has
    /// it; the account's available credit now.
    ///
    /// Checks, in order: challenge, card status, cryptogram, counter, PIN, address, credit. See
    /// the module documentation for the address-change round trip.
    #[allow(clippy::too_many_arguments)]
    pub fn authenticate(
        &mut self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
        confirm_address_change: Option<bool>,
        available_credit_cents: u64,
        now: u64,
    ) -> AuthOutcome {
        let Some(mut challenge) = self.take_live_challenge(challenge_id, now) else {
            return AuthOutcome::TimedOut;
        };
        let max_failures = self.state.config.max_pin_failures;
        let Some(card) = self.state.cards.get_mut(&challenge.card_token) else {
            return AuthOutcome::TimedOut;
        };
        match card.status {
            CardStatus::Active => {}
            CardStatus::Locked => return AuthOutcome::CardLocked,
            CardStatus::Lost => return AuthOutcome::CardLost,
        }

        // Card authenticity: the key of the number presented at the swipe (its token is this
        // card's, checked then).
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
        if counter <= card.last_counter {
            return AuthOutcome::Replayed;
        }
        // From here on the card changes (counter, PIN failures, lock): it must be journaled.
        self.dirty_cards.insert(card.token.clone());
        card.last_counter = counter;

        // Identity.
        let Ok(pin) = decrypt_pin(&challenge.node_secret, &challenge.challenge, pin) else {
            return AuthOutcome::PinUnreadable;
        };
        if !verify_pin(&card.pin_hash, pin.expose()) {
            card.pin_failures = card.pin_failures.saturating_add(1);
            if card.pin_failures >= max_failures {
                card.status = CardStatus::Locked;
                return AuthOutcome::CardLocked;
            }
            return AuthOutcome::WrongPin {
                tries_left: max_failures - card.pin_failures,
            };
        }
        drop(pin);
        card.pin_failures = 0;

        // Address.
        let temporary_address_change = if same_address(&card.registered_address, delivery_address) {
            false
        } else {
            match confirm_address_change {
                None => {
                    challenge.stage = Stage::AwaitingAddressConfirmation;
                    self.challenge_by_reader
                        .insert(challenge.reader_id.clone(), challenge_id.to_string());
                    self.challenges.insert(challenge_id.to_string(), challenge);
                    return AuthOutcome::ConfirmAddressChange;
                }
                Some(false) => return AuthOutcome::AddressChangeDeclined,
                Some(true) => true,
            }
        };

        // Credit.
        self.finish(challenge, temporary_address_change, available_credit_cents)
    }

    /// The consumer's answer to [`AuthOutcome::ConfirmAddressChange`] for `challenge_id`:
    /// `accept` goes on with the credit check (with the available credit now), a refusal ends
    /// with `AddressChangeDeclined`. A challenge that is unknown, expired or not waiting for
    /// this answer gives `TimedOut` (and is dropped).
    pub fn confirm_address_change(
        &mut self,
        challenge_id: &str,
        accept: bool,
        available_credit_cents: u64,
        now: u64,
    ) -> AuthOutcome {
        let Some(challenge) = self.take_live_challenge(challenge_id, now) else {
            return AuthOutcome::TimedOut;
        };
        if challenge.stage != Stage::AwaitingAddressConfirmation {
            return AuthOutcome::TimedOut;
        }
        match self
            .state
            .cards
            .get(&challenge.card_token)
            .map(|c| c.status)
        {
            Some(CardStatus::Active) => {}
            Some(CardStatus::Locked) => return AuthOutcome::CardLocked,
            Some(CardStatus::Lost) => return AuthOutcome::CardLost,
            None => return AuthOutcome::TimedOut,
        }
        if !accept {
            return AuthOutcome::AddressChangeDeclined;
        }
        self.finish(challenge, true, available_credit_cents)
    }

    fn finish(
        &self,
        challenge: Challenge,
        temporary_address_change: bool,
        available_credit_cents: u64,
    ) -> AuthOutcome {
        if challenge.amount_cents > available_credit_cents {
            return AuthOutcome::CreditRefused {
                amount_cents: challenge.amount_cents,
                available_cents: available_credit_cents,
            };
        }
        let (account, card_last4) = self
            .state
            .cards
            .get(&challenge.card_token)
            .map(|c| (c.holder.clone(), c.last4.clone()))
            .unwrap_or_default();
        AuthOutcome::Authorised(Authorisation {
            order_id: challenge.order_id,
            amount_cents: challenge.amount_cents,
            card_last4,
            account,
            reader_id: challenge.reader_id,
            temporary_address_change,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
