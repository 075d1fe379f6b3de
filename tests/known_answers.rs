//! Known answers of the reader protocol (docs/reader-protocol.md): the Rust implementation must
//! give exactly the bytes that `scripts/known-answers.py` (an independent implementation in
//! Python: standard library, with X25519 and ChaCha20-Poly1305 written out and checked against
//! the RFCs) computes for the same fixed inputs. The expected values below are that script's
//! output, copied as hex literals; they are never computed by the code under test. A mismatch
//! means the code and the published protocol disagree: fix the code (or publish a new protocol
//! version), never the literals.

use std::collections::VecDeque;

use onecard_engine::cards::crypto::{card_token, derive_card_key, derive_token_key, IssuerKey};
use onecard_protocol::crypto::{cryptogram, cryptogram_input, CardKey};
use onecard_protocol::pin::{decrypt_pin, encrypt_pin, EncryptedPin};
use onecard_protocol::wire::PinBody;
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::apdu;
use rand::{CryptoRng, RngCore};

// ---- Fixed inputs ---------------------------------------------------------------------------

const CARD_NUMBER: &str = "4000001234567890";
const ORDER_ID: &str = "order-42";
const AMOUNT_CENTS: u64 = 4999;
const COUNTER: u32 = 7;
const PIN: &str = "2580";

/// Bytes `first`, `first + 1`, … (`N` of them).
fn run<const N: usize>(first: u8) -> [u8; N] {
    std::array::from_fn(|i| first + i as u8)
}

fn master() -> IssuerKey {
    IssuerKey::from_bytes(run::<32>(0x00))
}
fn challenge() -> [u8; 16] {
    run(0xa0)
}
fn node_secret() -> [u8; 32] {
    run(0x40)
}
fn reader_secret() -> [u8; 32] {
    run(0x60)
}
fn nonce() -> [u8; 12] {
    run(0x80)
}

// ---- Expected values (scripts/known-answers.py) ---------------------------------------------

const CARD_KEY: &str = "7e33e0a40da5913fb2f8381fe54c80e011f8408d23e406b9c06177cf60d2123a";
const CRYPTOGRAM_INPUT: &str =
    "4f434331a0a1a2a3a4a5a6a7a8a9aaabacadaeaf086f726465722d3432000000000000138700000007";
const CRYPTOGRAM: &str = "a7174290db4e09978f9ab2f83ac4e305";
/// The same payment's cryptogram with counter 1001: out of the window for a new card.
const CRYPTOGRAM_1001: &str = "d8faee866019f2e61b510174be5e80e0";
const SELECT_APDU: &str = "00a4040009f04f4e45434152440100";
const READ_CARD_DATA_APDU: &str = "80b0000000";
/// Holder reference "alice", last counter 6.
const READ_CARD_DATA_ANSWER: &str = "103430303030303132333435363738393005616c696365000000069000";
const GENERATE_CRYPTOGRAM_APDU: &str =
    "80ae000021a0a1a2a3a4a5a6a7a8a9aaabacadaeaf0000000000001387086f726465722d343200";
const CARD_ANSWER: &str = "00000007a7174290db4e09978f9ab2f83ac4e3059000";
// Token key (not exposed by the engine; checked through the token):
// ba463d92770d10126436d30af0a8b6fe570305bf00e144caf5d8739e7bded664
const CARD_TOKEN: &str = "9e76ddb9be8ce8be208838ea5c4b78fba7e33568468a0b6255a05eb8668c85ed";
// PVK (not exposed by the engine; checked through the verifier):
// 0b584896e47932183e1fe1329f2bf8680643d964f0f5279376331a89a3638c19
const PIN_VERIFIER: &str = "db2f2e1922f2266e208d2abe0233925204701c8f69a5b76c8085c84fc04b3302";
const NODE_PUBLIC: &str = "79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a";
const READER_PUBLIC: &str = "675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f";
// Shared secret d6fb939511b2381bc8599b4b8edc5968829450dfd7a87aebe78a703cd04cd54e and transport
// key a78a3d50e8bc584157ce720ae45b78f3afa8b89d88bf49bd51ec569449dc0453 are internal to
// encrypt_pin / decrypt_pin: checked through the ciphertext and its decryption.
const CIPHERTEXT_AND_TAG: &str = "1436ac0b83f139d4fc065e1a61b728c79ef95ed5";

// ---- Helpers --------------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex")
}

fn unhex_n<const N: usize>(text: &str) -> [u8; N] {
    unhex(text).try_into().expect("length")
}

/// An "RNG" that yields exactly the bytes it was given, in order, and panics when it runs out:
/// it fixes the ephemeral secret and the nonce `encrypt_pin` draws, and shows in what order
/// and how many bytes it draws.
struct Scripted(VecDeque<u8>);

impl Scripted {
    fn new(parts: &[&[u8]]) -> Scripted {
        Scripted(parts.iter().flat_map(|p| p.iter().copied()).collect())
    }
}

impl RngCore for Scripted {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            *d = self.0.pop_front().expect("the scripted bytes ran out");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Not random at all: for known answers only.
impl CryptoRng for Scripted {}

// ---- The card -------------------------------------------------------------------------------

#[test]
fn card_key_is_hkdf_of_the_master_key_and_the_card_number() {
    let key = derive_card_key(&master(), CARD_NUMBER);
    assert_eq!(hex(key.as_bytes()), CARD_KEY);
}

#[test]
fn cryptogram_input_has_the_published_layout() {
    let input = cryptogram_input(&challenge(), ORDER_ID, AMOUNT_CENTS, COUNTER).unwrap();
    assert_eq!(hex(&input), CRYPTOGRAM_INPUT);
}

#[test]
fn cryptogram_is_the_truncated_hmac() {
    let key = derive_card_key(&master(), CARD_NUMBER);
    let c = cryptogram(&key, &challenge(), ORDER_ID, AMOUNT_CENTS, COUNTER).unwrap();
    assert_eq!(hex(&c), CRYPTOGRAM);
    // The same from the published key alone (what a card personalised with it computes).
    let published = CardKey::from_bytes(unhex_n(CARD_KEY));
    let c = cryptogram(&published, &challenge(), ORDER_ID, AMOUNT_CENTS, COUNTER).unwrap();
    assert_eq!(hex(&c), CRYPTOGRAM);
}

#[test]
fn the_reader_programs_apdu_and_the_cards_answer_are_the_published_bytes() {
    assert_eq!(hex(&apdu::select()), SELECT_APDU);
    assert_eq!(hex(&apdu::read_card_data()), READ_CARD_DATA_APDU);
    let command = apdu::generate_cryptogram(&challenge(), AMOUNT_CENTS, ORDER_ID).unwrap();
    assert_eq!(hex(&command), GENERATE_CRYPTOGRAM_APDU);

    // A card personalised with the published key whose last transaction was counter 6: it
    // increments first, so this cryptogram is for counter 7.
    let mut card = CardApplet::new(
        CARD_NUMBER.into(),
        "alice".into(),
        CardKey::from_bytes(unhex_n(CARD_KEY)),
        COUNTER - 1,
    );
    assert_eq!(card.process(&unhex(SELECT_APDU)), [0x90, 0x00]);
    let data = card.process(&unhex(READ_CARD_DATA_APDU));
    assert_eq!(hex(&data), READ_CARD_DATA_ANSWER);
    let data = apdu::parse_card_data(&data).unwrap();
    assert_eq!(
        (
            data.card_number.as_str(),
            data.holder_ref.as_str(),
            data.counter
        ),
        (CARD_NUMBER, "alice", COUNTER - 1)
    );
    let answer = card.process(&unhex(GENERATE_CRYPTOGRAM_APDU));
    assert_eq!(hex(&answer), CARD_ANSWER);
    assert_eq!(card.counter(), COUNTER);
    let parsed = apdu::parse_cryptogram(&answer).unwrap();
    assert_eq!(parsed.counter, COUNTER);
    assert_eq!(hex(&parsed.cryptogram), CRYPTOGRAM);
}

// ---- What the node stores (card token, PIN verifier) ----------------------------------------

#[test]
fn card_token_is_the_hmac_under_the_token_key() {
    let token = card_token(&derive_token_key(&master()), CARD_NUMBER);
    assert_eq!(token, CARD_TOKEN);
}

#[test]
fn pin_verifier_is_the_hmac_under_the_pin_verification_key() {
    use onecard_engine::cards::pin::{derive_pin_key, pin_verifier};
    let pvk = derive_pin_key(&master());
    let verifier = pin_verifier(&pvk, CARD_TOKEN, PIN).expect("a valid PIN");
    assert_eq!(hex(verifier.as_bytes()), PIN_VERIFIER);
}

// ---- The PIN on its way to the node ---------------------------------------------------------

#[test]
fn encrypt_pin_with_fixed_secret_and_nonce_gives_the_published_ciphertext() {
    // encrypt_pin draws the reader's ephemeral X25519 secret (32 bytes), then the nonce (12).
    let mut rng = Scripted::new(&[&reader_secret(), &nonce()]);
    let node_public: [u8; 32] = unhex_n(NODE_PUBLIC);
    let encrypted = encrypt_pin(&node_public, &challenge(), PIN, &mut rng).unwrap();
    assert!(
        rng.0.is_empty(),
        "encrypt_pin drew fewer bytes than 32 + 12"
    );
    assert_eq!(hex(&encrypted.reader_public), READER_PUBLIC);
    assert_eq!(hex(&encrypted.nonce), hex(&nonce()));
    assert_eq!(hex(&encrypted.ciphertext), CIPHERTEXT_AND_TAG);

    // On the wire: three lowercase hex strings.
    let body = PinBody::of(&encrypted);
    assert_eq!(body.reader_public, READER_PUBLIC);
    assert_eq!(body.nonce, "808182838485868788898a8b");
    assert_eq!(body.ciphertext, CIPHERTEXT_AND_TAG);
    assert_eq!(body.to_pin().as_ref(), Some(&encrypted));
}

#[test]
fn decrypt_pin_opens_the_published_ciphertext_with_the_node_secret() {
    // The protocol crate re-exports no x25519 type; the node secret's type (x25519_dalek::StaticSecret,
    // which is `From<[u8; 32]>`) is inferred from decrypt_pin's parameter.
    let secret = node_secret().into();
    let encrypted = EncryptedPin {
        reader_public: unhex_n(READER_PUBLIC),
        nonce: nonce(),
        ciphertext: unhex(CIPHERTEXT_AND_TAG),
    };
    let pin = decrypt_pin(&secret, &challenge(), &encrypted).expect("the node opens it");
    assert_eq!(pin.expose(), PIN);

    // Bound to its challenge (the associated data and the HKDF info) and to every byte.
    let mut other = challenge();
    other[15] ^= 1;
    assert!(decrypt_pin(&secret, &other, &encrypted).is_err());
    let mut flipped = encrypted.clone();
    flipped.ciphertext[19] ^= 1;
    assert!(decrypt_pin(&secret, &challenge(), &flipped).is_err());

    // The published node public key is the node secret's: a PIN encrypted to it with any
    // reader secret opens with the node secret.
    let mut rng = Scripted::new(&[&[0x11; 32], &[0x22; 12]]);
    let fresh = encrypt_pin(&unhex_n(NODE_PUBLIC), &challenge(), PIN, &mut rng).unwrap();
    let pin = decrypt_pin(&secret, &challenge(), &fresh).expect("the node opens it");
    assert_eq!(pin.expose(), PIN);
}

// ---- The node accepts what an independent reader computes -----------------------------------

/// The authentication center, fed the published bytes: its challenge and key pair fixed by a
/// scripted RNG, the cryptograms and the encrypted PIN exactly as the Python script computed
/// them. Also pins the counter window at its published default (1000) and the order in which
/// a swipe draws its random bytes.
#[test]
fn the_authentication_center_accepts_the_published_bytes() {
    use onecard_engine::cards::{AuthCenter, AuthConfig, AuthOutcome, NewReader};

    let now = 1_000;
    let address = "1 Main Street";
    let center = AuthCenter::new(master(), AuthConfig::default());
    assert_eq!(center.config().max_counter_jump, 1000);
    let mut log = Vec::new();
    let key = center
        .issue_card(CARD_NUMBER, "alice", PIN, address, &mut log)
        .unwrap();
    assert_eq!(hex(key.as_bytes()), CARD_KEY);
    let card = center.card(CARD_NUMBER).unwrap();
    assert_eq!(card.token, CARD_TOKEN);
    assert_eq!(hex(card.pin_verifier.as_bytes()), PIN_VERIFIER);
    center
        .register_reader(
            NewReader {
                id: "r1".into(),
                owner: "alice".into(),
                card_number: CARD_NUMBER.into(),
                account: "alice".into(),
                network: "127.0.0.1/32".parse().unwrap(),
            },
            &mut log,
        )
        .unwrap();
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    let pin = EncryptedPin {
        reader_public: unhex_n(READER_PUBLIC),
        nonce: nonce(),
        ciphertext: unhex(CIPHERTEXT_AND_TAG),
    };

    // A swipe draws the challenge id (16 bytes), the challenge (16) and, at the first swipe of
    // an agreement key's epoch, the node's X25519 secret (32); later swipes of the epoch send
    // the same key.
    let swipe = |id: u8, first_of_epoch: bool| {
        let (id_bytes, challenge_bytes, secret) = ([id; 16], challenge(), node_secret());
        let mut draws: Vec<&[u8]> = vec![&id_bytes, &challenge_bytes];
        if first_of_epoch {
            draws.push(&secret);
        }
        let mut rng = Scripted::new(&draws);
        let ch = center
            .swipe(
                "r1",
                CARD_NUMBER,
                peer,
                ORDER_ID,
                AMOUNT_CENTS,
                now,
                &mut rng,
            )
            .unwrap();
        assert!(rng.0.is_empty(), "a swipe drew fewer bytes than scripted");
        assert_eq!(ch.challenge, challenge());
        assert_eq!(hex(&ch.node_public), NODE_PUBLIC);
        ch.challenge_id
    };
    let authenticate = |id: &str, counter: u32, cryptogram: &str, log: &mut Vec<_>| {
        center.authenticate(
            id,
            counter,
            &unhex(cryptogram),
            &pin,
            address,
            None,
            10_000,
            now + 1,
            |_| false,
            log,
        )
    };

    let id = swipe(1, true);
    // Counter 1001 for a card whose last accepted counter is 0: out of the window; the card is
    // unchanged and the challenge stays usable.
    assert_eq!(
        authenticate(&id, 1001, CRYPTOGRAM_1001, &mut log),
        AuthOutcome::CounterOutOfWindow
    );
    assert_eq!(center.card(CARD_NUMBER).unwrap().last_counter, 0);
    match authenticate(&id, COUNTER, CRYPTOGRAM, &mut log) {
        AuthOutcome::Authorised(a) => {
            assert_eq!(a.order_id, ORDER_ID);
            assert_eq!(a.amount_cents, AMOUNT_CENTS);
            assert_eq!(a.card_last4, "7890");
            assert_eq!(a.account, "alice");
            assert!(!a.temporary_address_change);
        }
        other => panic!("expected an authorisation, got {other:?}"),
    }
    assert_eq!(center.card(CARD_NUMBER).unwrap().last_counter, COUNTER);
    // The challenge is used up.
    assert_eq!(
        authenticate(&id, COUNTER, CRYPTOGRAM, &mut log),
        AuthOutcome::TimedOut
    );

    // The same cryptogram again, for a fresh challenge with the same bytes: a replay.
    let id = swipe(2, false);
    assert_eq!(
        authenticate(&id, COUNTER, CRYPTOGRAM, &mut log),
        AuthOutcome::Replayed
    );
}
