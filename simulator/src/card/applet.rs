//! The OneCard applet: what runs on the card (F1). Pure: an APDU in, a response APDU out, no I/O.
//!
//! The card holds its card number, its holder reference, its key (from personalisation:
//! [`crypto::derive_card_key`] of the issuer master key and the card number) and its
//! transaction counter, which persists across power cycles (it is the card's EEPROM).
//!
//! # Protocol
//!
//! Short APDUs only (ISO 7816-4; no extended length). `Le`, when present, is accepted and
//! ignored: the whole answer is always returned (at most 256 data bytes).
//!
//! | command | APDU | answer |
//! |---|---|---|
//! | SELECT | `00 A4 04 00 09 <AID> [Le]` | `90 00`; another AID: `6A 82` (selection unchanged); P1 P2 not `04 00`: `6B 00` |
//! | READ CARD DATA | `80 B0 00 00 [Le]` | `len u8 \| card number \| len u8 \| holder ref \| counter u32 BE \| 90 00` |
//! | GENERATE CRYPTOGRAM | `80 AE 00 00 Lc <data> [Le]` | `new counter u32 BE \| cryptogram [16] \| 90 00` |
//!
//! GENERATE CRYPTOGRAM's data is `challenge [16] | amount in cents u64 BE | order id length u8 |
//! order id UTF-8 (1..=128 bytes)`. The card increments its counter first, then answers
//! [`crypto::cryptogram`]`(key, challenge, order id, amount, new counter)`.
//!
//! Status words, checked in this order:
//!
//! 1. `67 00` the APDU is shorter than 4 bytes, or `Lc` does not match the bytes that follow
//!    (including `Lc = 00` followed by bytes: an extended-length APDU, not supported); also
//!    READ CARD DATA with a body.
//! 2. `6E 00` a CLA other than `00` and `80`.
//! 3. `6D 00` an INS the CLA does not have (`00`: only `A4`; `80`: only `B0` and `AE`).
//! 4. `6B 00` P1 P2 not `04 00` (SELECT) or `00 00` (READ CARD DATA, GENERATE CRYPTOGRAM).
//! 5. `69 85` READ CARD DATA or GENERATE CRYPTOGRAM while the applet is not selected.
//! 6. `6A 80` GENERATE CRYPTOGRAM whose data is malformed (absent, lengths inconsistent, order
//!    id empty, longer than 128 bytes or not UTF-8); `6A 82` SELECT of another AID.
//! 7. `69 84` GENERATE CRYPTOGRAM with the counter at `u32::MAX` (the card is exhausted;
//!    nothing changes).
//!
//! Power off, power on and reset deselect the applet ([`CardApplet::reset`]).

use onecard_engine::cards::crypto::{self, CardKey, CHALLENGE_LEN, MAX_ORDER_ID_LEN};

/// The applet's AID: `F0` (a proprietary, unregistered AID) then `"ONECARD"` and version `01`.
pub const AID: [u8; 9] = [0xF0, 0x4F, 0x4E, 0x45, 0x43, 0x41, 0x52, 0x44, 0x01];

/// The card's answer to reset (ISO 7816-3), 11 bytes:
///
/// ```text
/// 3B              TS   direct convention
/// 87              T0   Y1 = 8: only TD1 follows; K = 7 historical bytes
/// 01              TD1  Y2 = 0: no more interface bytes; T = 1 (the only protocol offered)
/// 4F 4E 45 43 41 52 44   historical bytes "ONECARD" (the first, 4F, is a proprietary
///                        category indicator in ISO 7816-4 terms)
/// D6              TCK  XOR of T0 .. the last historical byte; required because a
///                      protocol other than T=0 is indicated
/// ```
///
/// No TA1 (default Fi/Di) and no TA2 (negotiable mode), so a reader may use it as is.
pub const ATR: [u8; 11] = [
    0x3B, 0x87, 0x01, 0x4F, 0x4E, 0x45, 0x43, 0x41, 0x52, 0x44, 0xD6,
];

/// The historical bytes of [`ATR`].
#[cfg(test)]
pub const ATR_HISTORICAL_BYTES: &[u8] = b"ONECARD";

/// CLA of ISO commands (SELECT).
pub const CLA_ISO: u8 = 0x00;
/// CLA of the applet's proprietary commands.
pub const CLA_PROPRIETARY: u8 = 0x80;
/// INS of SELECT.
pub const INS_SELECT: u8 = 0xA4;
/// INS of READ CARD DATA.
pub const INS_READ_CARD_DATA: u8 = 0xB0;
/// INS of GENERATE CRYPTOGRAM.
pub const INS_GENERATE_CRYPTOGRAM: u8 = 0xAE;

/// Status words (SW1 SW2).
pub mod sw {
    /// Success.
    pub const OK: u16 = 0x9000;
    /// Wrong length: APDU shorter than 4 bytes, `Lc` inconsistent, an unexpected body.
    pub const WRONG_LENGTH: u16 = 0x6700;
    /// Counter exhausted: no further cryptogram can be generated.
    pub const COUNTER_EXHAUSTED: u16 = 0x6984;
    /// Conditions of use not satisfied: the applet is not selected.
    pub const NOT_SELECTED: u16 = 0x6985;
    /// Incorrect data field.
    pub const WRONG_DATA: u16 = 0x6A80;
    /// File or application not found: SELECT of another AID.
    pub const NOT_FOUND: u16 = 0x6A82;
    /// Wrong P1 P2.
    pub const WRONG_P1P2: u16 = 0x6B00;
    /// INS not supported.
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
    /// CLA not supported.
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
}

/// Longest card number or holder reference a card can hold (bytes of printable ASCII), so that
/// READ CARD DATA's answer always fits in one short response (256 data bytes).
pub const MAX_FIELD_LEN: usize = 64;

/// Bytes of GENERATE CRYPTOGRAM's data before the order id.
const GENERATE_FIXED_LEN: usize = CHALLENGE_LEN + 8 + 1;

/// The applet of one card.
#[derive(Debug)]
pub struct CardApplet {
    card_number: String,
    holder_ref: String,
    key: CardKey,
    counter: u32,
    selected: bool,
}

/// A command APDU, split (short APDUs only).
struct Command<'a> {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    /// The body (`Lc` bytes); `None` for cases 1 and 2.
    data: Option<&'a [u8]>,
}

impl<'a> Command<'a> {
    /// Splits a short command APDU; `Err(WRONG_LENGTH)` if it is not one.
    fn parse(apdu: &'a [u8]) -> Result<Command<'a>, u16> {
        let [cla, ins, p1, p2, rest @ ..] = apdu else {
            return Err(sw::WRONG_LENGTH);
        };
        let data = match rest {
            // Case 1 (no body, no Le) or case 2 (Le only).
            [] | [_] => None,
            [lc, body @ ..] => {
                let lc = usize::from(*lc);
                // Lc = 0 followed by bytes would be an extended-length APDU: not supported.
                if lc == 0 {
                    return Err(sw::WRONG_LENGTH);
                }
                // Case 3 (body) or case 4 (body and Le).
                if body.len() != lc && body.len() != lc + 1 {
                    return Err(sw::WRONG_LENGTH);
                }
                Some(&body[..lc])
            }
        };
        Ok(Command {
            cla: *cla,
            ins: *ins,
            p1: *p1,
            p2: *p2,
            data,
        })
    }
}

impl CardApplet {
    /// Whether a card can hold this card number and holder reference: each 1 to
    /// [`MAX_FIELD_LEN`] bytes of printable ASCII (spaces allowed in the holder reference only).
    pub fn check_personalisation(card_number: &str, holder_ref: &str) -> Result<(), String> {
        fn check(what: &str, value: &str, space_ok: bool) -> Result<(), String> {
            if value.is_empty() || value.len() > MAX_FIELD_LEN {
                return Err(format!(
                    "the {what} must be 1 to {MAX_FIELD_LEN} characters"
                ));
            }
            let ok = |b: u8| b.is_ascii_graphic() || (space_ok && b == b' ');
            if !value.bytes().all(ok) {
                return Err(format!(
                    "the {what} must be printable ASCII{}",
                    if space_ok { "" } else { " without spaces" }
                ));
            }
            Ok(())
        }
        check("card number", card_number, false)?;
        check("holder reference", holder_ref, true)
    }

    /// A personalised card, powered off (not selected). `counter` is the counter of the last
    /// transaction (0 for a new card): the next cryptogram uses `counter + 1`.
    ///
    /// # Panics
    ///
    /// If [`CardApplet::check_personalisation`] refuses the card number or holder reference.
    pub fn new(card_number: String, holder_ref: String, key: CardKey, counter: u32) -> CardApplet {
        if let Err(e) = CardApplet::check_personalisation(&card_number, &holder_ref) {
            panic!("cannot personalise the card: {e}");
        }
        CardApplet {
            card_number,
            holder_ref,
            key,
            counter,
            selected: false,
        }
    }

    /// The transaction counter (of the last cryptogram generated).
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// Power off, power on or warm reset: the applet is deselected; the counter stays.
    pub fn reset(&mut self) {
        self.selected = false;
    }

    /// Answers one command APDU with its response APDU (data, then SW1 SW2). Never panics.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let (mut out, sw) = match self.dispatch(apdu) {
            Ok(data) => (data, sw::OK),
            Err(sw) => (Vec::with_capacity(2), sw),
        };
        out.extend_from_slice(&sw.to_be_bytes());
        out
    }

    fn dispatch(&mut self, apdu: &[u8]) -> Result<Vec<u8>, u16> {
        let c = Command::parse(apdu)?;
        match (c.cla, c.ins) {
            (CLA_ISO, INS_SELECT) => self.select(&c),
            (CLA_PROPRIETARY, INS_READ_CARD_DATA) => self.read_card_data(&c),
            (CLA_PROPRIETARY, INS_GENERATE_CRYPTOGRAM) => self.generate_cryptogram(&c),
            (CLA_ISO | CLA_PROPRIETARY, _) => Err(sw::INS_NOT_SUPPORTED),
            _ => Err(sw::CLA_NOT_SUPPORTED),
        }
    }

    fn select(&mut self, c: &Command<'_>) -> Result<Vec<u8>, u16> {
        if (c.p1, c.p2) != (0x04, 0x00) {
            return Err(sw::WRONG_P1P2);
        }
        // Exact match only; a failed SELECT leaves the selection as it was (ISO 7816-4).
        if c.data != Some(&AID[..]) {
            return Err(sw::NOT_FOUND);
        }
        self.selected = true;
        Ok(Vec::new())
    }

    fn read_card_data(&mut self, c: &Command<'_>) -> Result<Vec<u8>, u16> {
        if c.data.is_some() {
            return Err(sw::WRONG_LENGTH);
        }
        if (c.p1, c.p2) != (0x00, 0x00) {
            return Err(sw::WRONG_P1P2);
        }
        if !self.selected {
            return Err(sw::NOT_SELECTED);
        }
        let number = self.card_number.as_bytes();
        let holder = self.holder_ref.as_bytes();
        let mut out = Vec::with_capacity(1 + number.len() + 1 + holder.len() + 4 + 2);
        // Both fit in a u8: check_personalisation caps them at MAX_FIELD_LEN.
        out.push(number.len() as u8);
        out.extend_from_slice(number);
        out.push(holder.len() as u8);
        out.extend_from_slice(holder);
        out.extend_from_slice(&self.counter.to_be_bytes());
        Ok(out)
    }

    fn generate_cryptogram(&mut self, c: &Command<'_>) -> Result<Vec<u8>, u16> {
        if (c.p1, c.p2) != (0x00, 0x00) {
            return Err(sw::WRONG_P1P2);
        }
        if !self.selected {
            return Err(sw::NOT_SELECTED);
        }
        let (challenge, amount, order_id) =
            parse_generate_data(c.data.unwrap_or_default()).ok_or(sw::WRONG_DATA)?;
        let next = self.counter.checked_add(1).ok_or(sw::COUNTER_EXHAUSTED)?;
        let cryptogram = crypto::cryptogram(&self.key, &challenge, order_id, amount, next)
            .ok_or(sw::WRONG_DATA)?;
        self.counter = next;
        let mut out = Vec::with_capacity(4 + cryptogram.len() + 2);
        out.extend_from_slice(&next.to_be_bytes());
        out.extend_from_slice(&cryptogram);
        Ok(out)
    }
}

/// `challenge [16] | amount u64 BE | order id length u8 | order id UTF-8`, exactly.
fn parse_generate_data(data: &[u8]) -> Option<([u8; CHALLENGE_LEN], u64, &str)> {
    let fixed = data.get(..GENERATE_FIXED_LEN)?;
    let (challenge, rest) = fixed.split_at(CHALLENGE_LEN);
    let (amount, id_len) = rest.split_at(8);
    let id_len = usize::from(id_len[0]);
    if id_len == 0 || id_len > MAX_ORDER_ID_LEN {
        return None;
    }
    let id = &data[GENERATE_FIXED_LEN..];
    if id.len() != id_len {
        return None;
    }
    Some((
        challenge.try_into().ok()?,
        u64::from_be_bytes(amount.try_into().ok()?),
        std::str::from_utf8(id).ok()?,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use onecard_engine::cards::crypto::{IssuerKey, CRYPTOGRAM_LEN};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub const NUMBER: &str = "4000001234567890";
    pub const HOLDER: &str = "c-000042";

    pub fn key() -> CardKey {
        crypto::derive_card_key(&IssuerKey::from_bytes([7u8; 32]), NUMBER)
    }

    pub fn card(counter: u32) -> CardApplet {
        CardApplet::new(NUMBER.into(), HOLDER.into(), key(), counter)
    }

    pub fn select_apdu() -> Vec<u8> {
        let mut v = vec![0x00, 0xA4, 0x04, 0x00, 0x09];
        v.extend_from_slice(&AID);
        v.push(0x00);
        v
    }

    pub fn generate_apdu(challenge: &[u8; 16], amount: u64, order_id: &str) -> Vec<u8> {
        let mut data = challenge.to_vec();
        data.extend_from_slice(&amount.to_be_bytes());
        data.push(order_id.len() as u8);
        data.extend_from_slice(order_id.as_bytes());
        apdu(0x80, 0xAE, 0, 0, &data, true)
    }

    /// A case 3 or 4 APDU (`le`: append `Le = 00`).
    fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], le: bool) -> Vec<u8> {
        let mut v = vec![cla, ins, p1, p2, data.len() as u8];
        v.extend_from_slice(data);
        if le {
            v.push(0);
        }
        v
    }

    fn sw(resp: &[u8]) -> u16 {
        u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]])
    }

    fn selected(counter: u32) -> CardApplet {
        let mut c = card(counter);
        assert_eq!(c.process(&select_apdu()), [0x90, 0x00]);
        c
    }

    /// The expected READ CARD DATA answer for the test card at `counter`.
    fn card_data(counter: u32) -> Vec<u8> {
        let mut v = vec![NUMBER.len() as u8];
        v.extend_from_slice(NUMBER.as_bytes());
        v.push(HOLDER.len() as u8);
        v.extend_from_slice(HOLDER.as_bytes());
        v.extend_from_slice(&counter.to_be_bytes());
        v.extend_from_slice(&[0x90, 0x00]);
        v
    }

    #[test]
    fn the_atr_is_well_formed_with_a_correct_tck() {
        assert_eq!(ATR[0], 0x3B, "direct convention");
        let t0 = ATR[1];
        assert_eq!(t0 >> 4, 0x8, "only TD1 follows T0");
        let k = usize::from(t0 & 0x0F);
        let td1 = ATR[2];
        assert_eq!(td1 >> 4, 0, "no interface bytes after TD1");
        assert_eq!(td1 & 0x0F, 1, "T=1");
        assert_eq!(&ATR[3..3 + k], ATR_HISTORICAL_BYTES);
        assert_eq!(ATR.len(), 3 + k + 1, "TS T0 TD1, historical bytes, TCK");
        // TCK: the XOR of every byte from T0 to TCK inclusive is zero.
        assert_eq!(ATR[1..].iter().fold(0u8, |a, b| a ^ b), 0);
    }

    #[test]
    fn select_the_aid_with_or_without_le() {
        let mut c = card(0);
        assert_eq!(c.process(&select_apdu()), [0x90, 0x00]);
        let mut c = card(0);
        let without_le = apdu(0x00, 0xA4, 0x04, 0x00, &AID, false);
        assert_eq!(c.process(&without_le), [0x90, 0x00]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), card_data(0));
    }

    #[test]
    fn select_another_aid_is_not_found_and_keeps_the_selection() {
        let mut c = card(0);
        let mut other = AID;
        other[8] = 0x02;
        assert_eq!(c.process(&apdu(0, 0xA4, 4, 0, &other, true)), [0x6A, 0x82]);
        // A prefix of the AID, a longer AID, no AID at all.
        assert_eq!(
            c.process(&apdu(0, 0xA4, 4, 0, &AID[..8], true)),
            [0x6A, 0x82]
        );
        let mut longer = AID.to_vec();
        longer.push(0);
        assert_eq!(c.process(&apdu(0, 0xA4, 4, 0, &longer, true)), [0x6A, 0x82]);
        assert_eq!(c.process(&[0, 0xA4, 4, 0]), [0x6A, 0x82]);
        assert_eq!(c.process(&[0, 0xA4, 4, 0, 0]), [0x6A, 0x82]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 0]), [0x69, 0x85]);
        // Once selected, a failed SELECT leaves it selected.
        assert_eq!(c.process(&select_apdu()), [0x90, 0x00]);
        assert_eq!(c.process(&apdu(0, 0xA4, 4, 0, &other, true)), [0x6A, 0x82]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 0]), card_data(0));
    }

    #[test]
    fn select_with_other_p1_p2_is_wrong_p1_p2() {
        let mut c = card(0);
        for (p1, p2) in [
            (0x00, 0x00),
            (0x04, 0x0C),
            (0x04, 0x02),
            (0x02, 0x00),
            (0xFF, 0xFF),
        ] {
            let resp = c.process(&apdu(0x00, 0xA4, p1, p2, &AID, true));
            assert_eq!(resp, [0x6B, 0x00], "P1 P2 = {p1:02X} {p2:02X}");
        }
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), [0x69, 0x85]);
    }

    #[test]
    fn read_card_data_with_and_without_le() {
        let mut c = selected(41);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 0]), card_data(41));
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), card_data(41));
        // Le is ignored: the whole answer comes back.
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 4]), card_data(41));
    }

    #[test]
    fn read_card_data_errors() {
        let mut c = card(0);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 0]), [0x69, 0x85]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 1, 0]), [0x6B, 0x00]);
        let mut c = selected(0);
        assert_eq!(c.process(&[0x80, 0xB0, 1, 0, 0]), [0x6B, 0x00]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 1]), [0x6B, 0x00]);
        // A body where none is expected.
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 1, 0xAA]), [0x67, 0x00]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0, 1, 0xAA, 0]), [0x67, 0x00]);
    }

    #[test]
    fn generate_cryptogram_increments_the_counter_and_verifies() {
        let mut c = selected(0);
        let challenge = [0x5Au8; 16];
        for expected in 1..=3u32 {
            let order = format!("o-{expected}");
            let resp = c.process(&generate_apdu(&challenge, 1999, &order));
            assert_eq!(resp.len(), 4 + CRYPTOGRAM_LEN + 2);
            assert_eq!(sw(&resp), 0x9000);
            let counter = u32::from_be_bytes(resp[..4].try_into().unwrap());
            assert_eq!(counter, expected);
            assert_eq!(c.counter(), expected);
            let cryptogram = &resp[4..4 + CRYPTOGRAM_LEN];
            assert!(crypto::cryptogram_matches(
                &key(),
                &challenge,
                &order,
                1999,
                counter,
                cryptogram
            ));
            // Not under the previous counter, another amount or another order.
            assert!(!crypto::cryptogram_matches(
                &key(),
                &challenge,
                &order,
                1999,
                counter - 1,
                cryptogram
            ));
            assert!(!crypto::cryptogram_matches(
                &key(),
                &challenge,
                &order,
                2000,
                counter,
                cryptogram
            ));
        }
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), card_data(3));
    }

    #[test]
    fn generate_cryptogram_without_le_and_with_the_longest_order_id() {
        let mut c = selected(10);
        let mut data = [1u8; 16].to_vec();
        data.extend_from_slice(&u64::MAX.to_be_bytes());
        let order = "é".repeat(64); // 128 bytes of UTF-8
        data.push(128);
        data.extend_from_slice(order.as_bytes());
        let resp = c.process(&apdu(0x80, 0xAE, 0, 0, &data, false));
        assert_eq!(sw(&resp), 0x9000);
        assert_eq!(resp[..4], 11u32.to_be_bytes());
        assert!(crypto::cryptogram_matches(
            &key(),
            &[1u8; 16],
            &order,
            u64::MAX,
            11,
            &resp[4..20]
        ));
    }

    #[test]
    fn generate_cryptogram_not_selected_or_wrong_p1_p2() {
        let mut c = card(0);
        let g = generate_apdu(&[0; 16], 1, "o");
        assert_eq!(c.process(&g), [0x69, 0x85]);
        let mut c = selected(0);
        let mut bad = g.clone();
        bad[2] = 1;
        assert_eq!(c.process(&bad), [0x6B, 0x00]);
        let mut bad = g.clone();
        bad[3] = 0x80;
        assert_eq!(c.process(&bad), [0x6B, 0x00]);
        assert_eq!(c.counter(), 0);
    }

    #[test]
    fn generate_cryptogram_malformed_data_is_wrong_data() {
        let mut c = selected(5);
        let good = |id_len: u8, id: &[u8]| {
            let mut d = [9u8; 16].to_vec();
            d.extend_from_slice(&500u64.to_be_bytes());
            d.push(id_len);
            d.extend_from_slice(id);
            d
        };
        let cases: Vec<Vec<u8>> = vec![
            vec![],                  // no data at all
            vec![0; 24],             // no order id length
            good(0, b""),            // empty order id
            good(2, b"o"),           // length says more than there is
            good(1, b"ab"),          // length says less than there is
            good(129, &[b'x'; 129]), // too long
            good(2, &[0xC3, 0x28]),  // not UTF-8
            good(1, &[0xFF]),        // not UTF-8
            good(2, &[0xE2, 0x82]),  // truncated UTF-8
        ];
        for (i, data) in cases.iter().enumerate() {
            let resp = if data.is_empty() {
                c.process(&[0x80, 0xAE, 0, 0])
            } else {
                c.process(&apdu(0x80, 0xAE, 0, 0, data, true))
            };
            assert_eq!(resp, [0x6A, 0x80], "case {i}");
        }
        // Case 2 (Le only, no data) too.
        assert_eq!(c.process(&[0x80, 0xAE, 0, 0, 0]), [0x6A, 0x80]);
        assert_eq!(c.counter(), 5, "nothing changed");
    }

    #[test]
    fn an_exhausted_counter_refuses_and_changes_nothing() {
        let mut c = selected(u32::MAX - 1);
        let g = generate_apdu(&[3; 16], 100, "o-last");
        let resp = c.process(&g);
        assert_eq!(sw(&resp), 0x9000);
        assert_eq!(resp[..4], u32::MAX.to_be_bytes());
        assert_eq!(c.process(&g), [0x69, 0x84]);
        assert_eq!(c.process(&g), [0x69, 0x84]);
        assert_eq!(c.counter(), u32::MAX);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), card_data(u32::MAX));
    }

    #[test]
    fn length_errors() {
        let mut c = selected(0);
        for short in [&[][..], &[0x80], &[0x80, 0xAE], &[0x80, 0xAE, 0]] {
            assert_eq!(c.process(short), [0x67, 0x00], "{short:02X?}");
        }
        let g = generate_apdu(&[0; 16], 1, "o-1");
        // Truncated anywhere after the header and Lc: Lc no longer matches.
        for cut in 6..g.len() - 1 {
            assert_eq!(c.process(&g[..cut]), [0x67, 0x00], "cut at {cut}");
        }
        // Two trailing bytes after the body.
        let mut long = g.clone();
        long.push(0);
        assert_eq!(c.process(&long), [0x67, 0x00]);
        // Lc = 0 followed by bytes (extended length): not supported.
        assert_eq!(c.process(&[0x80, 0xAE, 0, 0, 0, 0, 1, 0xAA]), [0x67, 0x00]);
        assert_eq!(c.process(&[0x80, 0xAE, 0, 0, 0, 0]), [0x67, 0x00]);
        // SELECT with a wrong Lc (10 bytes follow: Lc 08 and 0C match neither case 3 nor 4;
        // Lc 0A would be a case 3 SELECT of the 10-byte AID `AID | 00`, not found).
        for lc in [0x08, 0x0C, 0xFF] {
            let mut s = select_apdu();
            s[4] = lc;
            assert_eq!(c.process(&s), [0x67, 0x00], "Lc {lc:02X}");
        }
        let mut s = select_apdu();
        s[4] = 0x0A;
        assert_eq!(c.process(&s), [0x6A, 0x82]);
        assert_eq!(c.counter(), 0);
    }

    #[test]
    fn unknown_cla_and_ins() {
        let mut c = selected(0);
        assert_eq!(c.process(&[0x00, 0xB0, 0, 0, 0]), [0x6D, 0x00]);
        assert_eq!(c.process(&[0x00, 0xAE, 0, 0, 0]), [0x6D, 0x00]);
        assert_eq!(c.process(&[0x80, 0xA4, 4, 0, 0]), [0x6D, 0x00]);
        assert_eq!(c.process(&[0x80, 0xCA, 0, 0, 0]), [0x6D, 0x00]);
        assert_eq!(c.process(&[0x00, 0xC0, 0, 0, 0]), [0x6D, 0x00]);
        for cla in [0x01, 0x04, 0x0C, 0x84, 0x90, 0xA0, 0xFF] {
            assert_eq!(
                c.process(&[cla, 0xB0, 0, 0, 0]),
                [0x6E, 0x00],
                "CLA {cla:02X}"
            );
            assert_eq!(c.process(&[cla, 0xA4, 4, 0]), [0x6E, 0x00], "CLA {cla:02X}");
        }
        // The CLA is checked before the INS, the INS before P1 P2.
        assert_eq!(c.process(&[0xFF, 0xFF, 0xFF, 0xFF]), [0x6E, 0x00]);
        assert_eq!(c.process(&[0x80, 0xFF, 0xFF, 0xFF]), [0x6D, 0x00]);
    }

    #[test]
    fn reset_deselects_and_the_counter_persists() {
        let mut c = selected(0);
        let resp = c.process(&generate_apdu(&[1; 16], 10, "o-1"));
        assert_eq!(sw(&resp), 0x9000);
        c.reset();
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), [0x69, 0x85]);
        assert_eq!(c.process(&generate_apdu(&[1; 16], 10, "o-1")), [0x69, 0x85]);
        assert_eq!(c.process(&select_apdu()), [0x90, 0x00]);
        assert_eq!(c.process(&[0x80, 0xB0, 0, 0]), card_data(1));
        let resp = c.process(&generate_apdu(&[1; 16], 10, "o-1"));
        assert_eq!(resp[..4], 2u32.to_be_bytes());
    }

    #[test]
    fn personalisation_limits() {
        assert!(CardApplet::check_personalisation(NUMBER, HOLDER).is_ok());
        assert!(CardApplet::check_personalisation(NUMBER, "Ada Lovelace").is_ok());
        let long = "1".repeat(MAX_FIELD_LEN);
        assert!(CardApplet::check_personalisation(&long, &long).is_ok());
        let too_long = "1".repeat(MAX_FIELD_LEN + 1);
        assert!(CardApplet::check_personalisation(&too_long, HOLDER).is_err());
        assert!(CardApplet::check_personalisation(NUMBER, &too_long).is_err());
        assert!(CardApplet::check_personalisation("", HOLDER).is_err());
        assert!(CardApplet::check_personalisation(NUMBER, "").is_err());
        assert!(CardApplet::check_personalisation("4000 0012", HOLDER).is_err());
        assert!(CardApplet::check_personalisation(NUMBER, "Zoë").is_err());
        assert!(CardApplet::check_personalisation(NUMBER, "a\nb").is_err());
        // The longest fields still fit one short response.
        let mut c = CardApplet::new(long.clone(), long.clone(), key(), 0);
        c.process(&select_apdu());
        let resp = c.process(&[0x80, 0xB0, 0, 0, 0]);
        assert_eq!(resp.len(), 1 + MAX_FIELD_LEN + 1 + MAX_FIELD_LEN + 4 + 2);
        assert!(resp.len() - 2 <= 256);
    }

    #[test]
    #[should_panic(expected = "cannot personalise the card")]
    fn new_refuses_an_invalid_personalisation() {
        CardApplet::new(String::new(), HOLDER.into(), key(), 0);
    }

    #[test]
    fn the_key_does_not_show_in_debug() {
        let c = card(0);
        let shown = format!("{c:?}");
        assert!(shown.contains("CardKey(<secret>)"), "{shown}");
    }

    /// Every known status word; anything else from the applet is a bug.
    const KNOWN: [u16; 9] = [
        sw::OK,
        sw::WRONG_LENGTH,
        sw::COUNTER_EXHAUSTED,
        sw::NOT_SELECTED,
        sw::WRONG_DATA,
        sw::NOT_FOUND,
        sw::WRONG_P1P2,
        sw::INS_NOT_SUPPORTED,
        sw::CLA_NOT_SUPPORTED,
    ];

    /// A random APDU: raw bytes, or a plausible header with a random or mutated body, so that
    /// the fuzz loop reaches every branch and not just `67 00`.
    fn random_apdu(rng: &mut ChaCha8Rng) -> Vec<u8> {
        match rng.gen_range(0..6) {
            0 => {
                let n = rng.gen_range(0..300);
                (0..n).map(|_| rng.gen()).collect()
            }
            1 => {
                let n = rng.gen_range(0..8);
                (0..n).map(|_| rng.gen()).collect()
            }
            2 | 3 => {
                let mut g = generate_apdu(
                    &rng.gen(),
                    rng.gen(),
                    &"x".repeat(rng.gen_range(1..=MAX_ORDER_ID_LEN)),
                );
                for _ in 0..rng.gen_range(0..3) {
                    let i = rng.gen_range(0..g.len());
                    g[i] = rng.gen();
                }
                if rng.gen_bool(0.2) {
                    g.truncate(rng.gen_range(0..g.len()));
                }
                g
            }
            _ => {
                let cla = [0x00, 0x80, rng.gen()][rng.gen_range(0..3)];
                let ins = [0xA4, 0xB0, 0xAE, rng.gen()][rng.gen_range(0..4)];
                let mut v = vec![cla, ins, rng.gen_range(0..5), rng.gen_range(0..2)];
                let body = rng.gen_range(0..40);
                if body > 0 || rng.gen_bool(0.5) {
                    v.push(if rng.gen_bool(0.8) {
                        body as u8
                    } else {
                        rng.gen()
                    });
                }
                v.extend((0..body).map(|_| rng.gen::<u8>()));
                if rng.gen_bool(0.3) {
                    v.push(rng.gen());
                }
                v
            }
        }
    }

    /// Arbitrary bytes never panic, always get a known status word, and only a successful
    /// GENERATE CRYPTOGRAM moves the counter (by one). A fixed seed: `proptest` is not a
    /// dev-dependency of the simulator.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from_be_bytes(*b"ONECARD\x01"));
        // Close enough to the end that the counter runs out part way.
        let mut c = card(u32::MAX - 5_000);
        let mut counts = std::collections::HashMap::<u16, u64>::new();
        for i in 0..200_000u32 {
            if i % 7 == 0 {
                c.process(&select_apdu());
            }
            if i % 1_000 == 999 {
                c.reset();
            }
            let apdu = random_apdu(&mut rng);
            let before = c.counter();
            let resp = c.process(&apdu);
            assert!(resp.len() >= 2, "{apdu:02X?}");
            let status = sw(&resp);
            assert!(KNOWN.contains(&status), "{status:04X} for {apdu:02X?}");
            *counts.entry(status).or_default() += 1;
            let generated = status == sw::OK && apdu.get(..2) == Some(&[0x80, 0xAE]);
            let expected = if generated { before + 1 } else { before };
            assert_eq!(c.counter(), expected, "{apdu:02X?}");
            if generated {
                assert_eq!(resp.len(), 22);
                assert_eq!(resp[..4], c.counter().to_be_bytes());
            }
        }
        // The loop reached every branch.
        for status in &KNOWN {
            assert!(
                counts.contains_key(status),
                "{status:04X} never seen: {counts:?}"
            );
        }
    }
}
