//! How a card number is shown or logged (SPEC I10): the one masking rule of the workspace, for
//! card numbers and for anything else shown by its last four characters (a bank account).

/// `************7890`: every character but the last four replaced by `*`. A value of four
/// characters or fewer is masked whole: its "last four" would be all of it, and a value that
/// short is no card number anyway, so nothing of it is shown.
pub fn mask_card_number(number: &str) -> String {
    let n = number.chars().count();
    let keep = if n > 4 { 4 } else { 0 };
    number
        .chars()
        .enumerate()
        .map(|(i, c)| if i < n - keep { '*' } else { c })
        .collect()
}

/// `************` and the last four digits: how a card known only by its last four (the node
/// stores no card number) is shown; the same width as a masked 16-digit number.
pub fn mask_last4(last4: &str) -> String {
    format!("************{last4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_only_the_last_four_of_a_longer_value() {
        assert_eq!(mask_card_number("4000001234567890"), "************7890");
        assert_eq!(mask_card_number("12345"), "*2345");
        assert_eq!(
            mask_card_number("DE89370400440532013000"),
            "******************3000"
        );
        // Characters, not bytes.
        assert_eq!(mask_card_number("äöü12345"), "****2345");
    }

    #[test]
    fn four_characters_or_fewer_are_masked_whole() {
        assert_eq!(mask_card_number("1234"), "****");
        assert_eq!(mask_card_number("12"), "**");
        assert_eq!(mask_card_number(""), "");
    }

    #[test]
    fn last_four_are_shown_as_a_masked_number() {
        assert_eq!(mask_last4("7890"), "************7890");
        assert_eq!(mask_last4("7890"), mask_card_number("4000001234567890"));
    }
}
