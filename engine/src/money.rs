//! Money: an exact amount with two decimals over `rust_decimal`.
//!
//! Every amount in the engine is an [`Amount`]. It is always at scale 2, parsing never rounds,
//! and arithmetic is checked: an overflow is an error, never a wrapped or rounded value.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string or a computation is not an acceptable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error(
        "malformed amount {0:?}: expected digits with at most two decimals, such as \"12.34\""
    )]
    Malformed(String),
    #[error("amount {0} must be greater than zero")]
    NotPositive(Amount),
    #[error("amount {0} must not be negative")]
    Negative(Amount),
    #[error("amount arithmetic overflowed")]
    Overflow,
}

/// An exact, signed amount of money with exactly two decimals.
///
/// Balances of clearing accounts are negative, so the type is signed; inputs from outside go
/// through [`Amount::parse_positive`] or [`Amount::parse_non_negative`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Default for Amount {
    /// Zero, at scale 2 like every amount (`Decimal::default()` has scale 0).
    fn default() -> Amount {
        Amount::ZERO
    }
}

/// The most integer digits an amount may have: 26, so that its cents (28 digits) fit
/// `Decimal`'s 96-bit mantissa (about 7.9 × 10^28). Anything longer is an overflow error.
const MAX_INTEGER_DIGITS: usize = 26;

impl Amount {
    pub const ZERO: Amount = Amount(Decimal::from_parts(0, 0, 0, false, 2));

    /// An amount from minor units (cents): `from_cents(1234)` is 12.34.
    pub fn from_cents(cents: i64) -> Amount {
        Amount(Decimal::new(cents, 2))
    }

    /// An amount from minor units, if it fits `Decimal`.
    pub fn from_cents_i128(cents: i128) -> Result<Amount, AmountError> {
        Decimal::try_from_i128_with_scale(cents, 2)
            .map(Amount)
            .map_err(|_| AmountError::Overflow)
    }

    /// Minor units (cents). Every `Amount` is kept at scale 2, so this is the mantissa.
    pub fn cents(self) -> i128 {
        debug_assert_eq!(self.0.scale(), 2);
        self.0.mantissa()
    }

    /// Parses `^\d+(\.\d{1,2})?$` exactly, with no rounding. Sign characters, exponents,
    /// leading or trailing dots and a third decimal are all refused.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let malformed = || AmountError::Malformed(text.to_string());
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let frac = match frac_part {
            None => "00".to_string(),
            Some(f) if (1..=2).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{f:0<2}")
            }
            Some(_) => return Err(malformed()),
        };
        let int_trimmed = int_part.trim_start_matches('0');
        if int_trimmed.len() > MAX_INTEGER_DIGITS {
            return Err(AmountError::Overflow);
        }
        let int_digits = if int_trimmed.is_empty() {
            "0"
        } else {
            int_trimmed
        };
        let cents: i128 = format!("{int_digits}{frac}")
            .parse()
            .map_err(|_| malformed())?;
        Amount::from_cents_i128(cents)
    }

    /// Parses and requires a value greater than zero.
    pub fn parse_positive(text: &str) -> Result<Amount, AmountError> {
        let a = Amount::parse(text)?;
        if a.is_zero() {
            return Err(AmountError::NotPositive(a));
        }
        Ok(a)
    }

    /// Parses and allows zero (never negative: `parse` refuses signs).
    pub fn parse_non_negative(text: &str) -> Result<Amount, AmountError> {
        Amount::parse(text)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }
    pub fn is_positive(self) -> bool {
        !self.is_negative() && !self.is_zero()
    }

    /// Exact addition in cents; an error rather than a rounded result when the sum does not
    /// fit (rust_decimal alone would drop decimals to make it fit).
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        let cents = self
            .cents()
            .checked_add(other.cents())
            .ok_or(AmountError::Overflow)?;
        Amount::from_cents_i128(cents)
    }
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        let cents = self
            .cents()
            .checked_sub(other.cents())
            .ok_or(AmountError::Overflow)?;
        Amount::from_cents_i128(cents)
    }
    pub fn checked_neg(self) -> Amount {
        Amount(-self.0)
    }
    pub fn min(self, other: Amount) -> Amount {
        if self <= other {
            self
        } else {
            other
        }
    }

    pub fn as_decimal(self) -> Decimal {
        self.0
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

/// Human-readable formats (JSON) carry the decimal string; binary formats (the journal) carry
/// the signed number of cents, which is compact and exact.
impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_i128(self.cents())
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let (neg, digits) = match s.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, s.as_str()),
            };
            let a = Amount::parse(digits).map_err(serde::de::Error::custom)?;
            Ok(if neg { a.checked_neg() } else { a })
        } else {
            let cents = i128::deserialize(d)?;
            Amount::from_cents_i128(cents).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_two_decimal_amounts() {
        assert_eq!(Amount::parse("12.34").unwrap(), Amount::from_cents(1234));
        assert_eq!(
            Amount::parse("250").unwrap(),
            Amount::parse("250.00").unwrap()
        );
        assert_eq!(Amount::parse("250.5").unwrap(), Amount::from_cents(25050));
        assert_eq!(Amount::parse("0").unwrap(), Amount::ZERO);
        assert_eq!(Amount::parse("007.10").unwrap().to_string(), "7.10");
    }

    #[test]
    fn refuses_every_other_spelling() {
        for bad in [
            "", ".5", "5.", "+5", "-5.00", "1e3", "12.340", "12.345", "abc", " 1", "1 ", "1,00",
            "0x10", "1.2.3", "١٢",
        ] {
            assert!(
                matches!(Amount::parse(bad), Err(AmountError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
    }

    #[test]
    fn accepts_every_amount_decimal_holds_and_refuses_longer_ones_as_overflow() {
        let biggest = "99999999999999999999999999.99";
        assert_eq!(Amount::parse(biggest).unwrap().to_string(), biggest);
        assert_eq!(
            Amount::parse("1000000000000000").unwrap().to_string(),
            "1000000000000000.00"
        );
        assert_eq!(
            Amount::parse("000000000000000000000000000001.5")
                .unwrap()
                .to_string(),
            "1.50"
        );
        assert_eq!(
            Amount::parse("100000000000000000000000000"),
            Err(AmountError::Overflow)
        );
        let big = Amount::parse(biggest).unwrap();
        // Decimal's mantissa holds about 7.9 × 10^28 cents: the eighth addition cannot fit.
        let seven = (0..6).try_fold(big, |s, _| s.checked_add(big)).unwrap();
        assert_eq!(seven.checked_add(big), Err(AmountError::Overflow));
        assert_eq!(
            seven.checked_neg().checked_sub(big),
            Err(AmountError::Overflow)
        );
        let bin = bincode::serialize(&big).unwrap();
        assert_eq!(bincode::deserialize::<Amount>(&bin).unwrap(), big);
    }

    #[test]
    fn positive_means_greater_than_zero() {
        assert!(matches!(
            Amount::parse_positive("0.00"),
            Err(AmountError::NotPositive(_))
        ));
        assert!(Amount::parse_positive("0.01").is_ok());
        assert!(Amount::parse_non_negative("0.00").is_ok());
    }

    #[test]
    fn arithmetic_is_exact_and_checked() {
        let a = Amount::parse("0.10").unwrap();
        let b = Amount::parse("0.20").unwrap();
        assert_eq!(a.checked_add(b).unwrap(), Amount::parse("0.30").unwrap());
        assert_eq!(a.checked_sub(b).unwrap().to_string(), "-0.10");
        let huge = Amount::parse("99999999999999999999999999.99").unwrap();
        assert_eq!(
            huge.checked_add(huge)
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge))
                .and_then(|h| h.checked_add(huge)),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn display_always_has_two_decimals() {
        assert_eq!(Amount::parse("5").unwrap().to_string(), "5.00");
        assert_eq!(Amount::ZERO.to_string(), "0.00");
        assert_eq!(Amount::from_cents(-5).to_string(), "-0.05");
    }

    #[test]
    fn serde_round_trips_in_json_and_bincode() {
        let a = Amount::from_cents(-123456);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"-1234.56\"");
        assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), a);
        let bin = bincode::serialize(&a).unwrap();
        assert_eq!(bincode::deserialize::<Amount>(&bin).unwrap(), a);
    }
}
