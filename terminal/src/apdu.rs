//! The OneCard applet's commands as the reader program sends them, and its answers parsed.
//!
//! The applet (personalised on the card; its simulator twin is `simulator/src/card/`):
//!
//! | command | APDU | answer |
//! | --- | --- | --- |
//! | SELECT by AID | `00 A4 04 00 09 <AID> 00` | `90 00` |
//! | READ CARD DATA | `80 B0 00 00 00` | `len | card number | len | holder ref | counter u32 BE | 90 00` |
//! | GENERATE CRYPTOGRAM | `80 AE 00 00 Lc challenge[16] amount u64 BE | id len | order id 00` | `counter u32 BE | cryptogram[16] | 90 00` |
//!
//! Status words other than `90 00` are errors with a meaning of their own (see [`StatusWord`]).

use onecard_protocol::crypto::{CHALLENGE_LEN, CRYPTOGRAM_LEN, MAX_ORDER_ID_LEN};

/// The OneCard applet's AID: a proprietary `F0` RID, "ONECARD", version 1.
pub const AID: [u8; 9] = [0xF0, 0x4F, 0x4E, 0x45, 0x43, 0x41, 0x52, 0x44, 0x01];

/// A status word the card answered with, other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusWord {
    #[error("the card has no OneCard application (6A 82)")]
    AppNotFound,
    #[error("the card refused: application not selected (69 85)")]
    NotSelected,
    #[error("the card's transaction counter is exhausted (69 84)")]
    CounterExhausted,
    #[error("the card found the command's data malformed (6A 80)")]
    BadData,
    #[error("the card refused the command's length (67 00)")]
    WrongLength,
    #[error("the card answered {0:02X} {1:02X}")]
    Other(u8, u8),
}

/// What went wrong with the card's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    #[error("{0}")]
    Status(StatusWord),
    #[error("the card's answer is truncated or malformed: {0}")]
    Malformed(&'static str),
    #[error("the order id must be 1 to {MAX_ORDER_ID_LEN} bytes")]
    OrderId,
}

/// The card's identity as READ CARD DATA returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardData {
    pub card_number: String,
    pub holder_ref: String,
    pub counter: u32,
}

/// The card's answer to GENERATE CRYPTOGRAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCryptogram {
    pub counter: u32,
    pub cryptogram: [u8; CRYPTOGRAM_LEN],
}

pub fn select() -> Vec<u8> {
    let mut v = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    v.extend_from_slice(&AID);
    v.push(0x00);
    v
}

pub fn read_card_data() -> Vec<u8> {
    vec![0x80, 0xB0, 0x00, 0x00, 0x00]
}

pub fn generate_cryptogram(
    challenge: &[u8; CHALLENGE_LEN],
    amount_cents: u64,
    order_id: &str,
) -> Result<Vec<u8>, ApduError> {
    let id = order_id.as_bytes();
    if id.is_empty() || id.len() > MAX_ORDER_ID_LEN {
        return Err(ApduError::OrderId);
    }
    let data_len = CHALLENGE_LEN + 8 + 1 + id.len();
    let mut v = vec![0x80, 0xAE, 0x00, 0x00, data_len as u8];
    v.extend_from_slice(challenge);
    v.extend_from_slice(&amount_cents.to_be_bytes());
    v.push(id.len() as u8);
    v.extend_from_slice(id);
    v.push(0x00);
    Ok(v)
}

/// Splits a response APDU into its data, or the status word's error.
pub fn check(response: &[u8]) -> Result<&[u8], ApduError> {
    if response.len() < 2 {
        return Err(ApduError::Malformed("shorter than a status word"));
    }
    let (data, sw) = response.split_at(response.len() - 2);
    match (sw[0], sw[1]) {
        (0x90, 0x00) => Ok(data),
        (0x6A, 0x82) => Err(ApduError::Status(StatusWord::AppNotFound)),
        (0x69, 0x85) => Err(ApduError::Status(StatusWord::NotSelected)),
        (0x69, 0x84) => Err(ApduError::Status(StatusWord::CounterExhausted)),
        (0x6A, 0x80) => Err(ApduError::Status(StatusWord::BadData)),
        (0x67, 0x00) => Err(ApduError::Status(StatusWord::WrongLength)),
        (a, b) => Err(ApduError::Status(StatusWord::Other(a, b))),
    }
}

pub fn parse_card_data(response: &[u8]) -> Result<CardData, ApduError> {
    let data = check(response)?;
    let (number, rest) = take_text(data, "card number")?;
    let (holder, rest) = take_text(rest, "holder reference")?;
    let counter: [u8; 4] = rest
        .try_into()
        .map_err(|_| ApduError::Malformed("the counter is not 4 bytes at the end"))?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApduError::Malformed("the card number is not digits"));
    }
    Ok(CardData {
        card_number: number,
        holder_ref: holder,
        counter: u32::from_be_bytes(counter),
    })
}

fn take_text<'a>(data: &'a [u8], what: &'static str) -> Result<(String, &'a [u8]), ApduError> {
    let (&len, rest) = data.split_first().ok_or(ApduError::Malformed(what))?;
    let len = len as usize;
    if rest.len() < len {
        return Err(ApduError::Malformed(what));
    }
    let text = std::str::from_utf8(&rest[..len])
        .map_err(|_| ApduError::Malformed(what))?
        .to_string();
    Ok((text, &rest[len..]))
}

pub fn parse_cryptogram(response: &[u8]) -> Result<CardCryptogram, ApduError> {
    let data = check(response)?;
    if data.len() != 4 + CRYPTOGRAM_LEN {
        return Err(ApduError::Malformed("a cryptogram answer is 4 + 16 bytes"));
    }
    let mut cryptogram = [0u8; CRYPTOGRAM_LEN];
    cryptogram.copy_from_slice(&data[4..]);
    Ok(CardCryptogram {
        counter: u32::from_be_bytes(data[..4].try_into().expect("4 bytes")),
        cryptogram,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_the_documented_bytes() {
        assert_eq!(
            select(),
            [
                0x00, 0xA4, 0x04, 0x00, 0x09, 0xF0, 0x4F, 0x4E, 0x45, 0x43, 0x41, 0x52, 0x44, 0x01,
                0x00
            ]
        );
        assert_eq!(read_card_data(), [0x80, 0xB0, 0x00, 0x00, 0x00]);
        let g = generate_cryptogram(&[9; 16], 1999, "o-1").unwrap();
        assert_eq!(&g[..5], &[0x80, 0xAE, 0x00, 0x00, 16 + 8 + 1 + 3]);
        assert_eq!(&g[5..21], &[9; 16]);
        assert_eq!(&g[21..29], &1999u64.to_be_bytes());
        assert_eq!(g[29], 3);
        assert_eq!(&g[30..33], b"o-1");
        assert_eq!(g[33], 0x00);
        assert_eq!(g.len(), 34);
        assert_eq!(
            generate_cryptogram(&[0; 16], 1, ""),
            Err(ApduError::OrderId)
        );
        assert!(generate_cryptogram(&[0; 16], 1, &"x".repeat(129)).is_err());
    }

    #[test]
    fn answers_are_parsed_and_bad_ones_refused() {
        let mut ok = vec![4];
        ok.extend_from_slice(b"4000");
        ok.push(2);
        ok.extend_from_slice(b"c1");
        ok.extend_from_slice(&7u32.to_be_bytes());
        ok.extend_from_slice(&[0x90, 0x00]);
        assert_eq!(
            parse_card_data(&ok).unwrap(),
            CardData {
                card_number: "4000".into(),
                holder_ref: "c1".into(),
                counter: 7
            }
        );
        // Truncated anywhere: a clear error, never a panic.
        for cut in 0..ok.len() - 2 {
            let mut t = ok[..cut].to_vec();
            t.extend_from_slice(&[0x90, 0x00]);
            assert!(parse_card_data(&t).is_err(), "cut at {cut}");
        }
        assert_eq!(
            parse_card_data(&[0x69, 0x85]),
            Err(ApduError::Status(StatusWord::NotSelected))
        );
        assert_eq!(
            check(&[0x6A, 0x82]),
            Err(ApduError::Status(StatusWord::AppNotFound))
        );
        assert!(matches!(check(&[0x90]), Err(ApduError::Malformed(_))));
        let mut c = 8u32.to_be_bytes().to_vec();
        c.extend_from_slice(&[5; 16]);
        c.extend_from_slice(&[0x90, 0x00]);
        assert_eq!(
            parse_cryptogram(&c).unwrap(),
            CardCryptogram {
                counter: 8,
                cryptogram: [5; 16]
            }
        );
        assert!(parse_cryptogram(&c[1..]).is_err());
        assert_eq!(
            parse_cryptogram(&[0x69, 0x84]),
            Err(ApduError::Status(StatusWord::CounterExhausted))
        );
    }
}
