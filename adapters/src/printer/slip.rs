//! The delivery slip (F16): what the merchant's printer prints when an order is placed.
//!
//! F22 is structural here: [`DeliverySlip`] has a field for each thing a merchant needs to ship
//! (order id, amount, delivery name, address and phone, the items, when the money is released)
//! and no field that could hold card, bank or account data, so such data cannot reach a
//! printer through this type.
//!
//! The printed layout (the bytes are in [`super`]):
//!
//! ```text
//!            DELIVERY SLIP            <- centred, bold
//!            <merchant>               <- centred
//! Order: <order_id>
//! --------------------------------
//! Deliver to: <delivery_name>
//! Address: <delivery_address>
//! Phone: <delivery_phone>
//! --------------------------------
//! <qty> x <item>                      <- one line per item, "(no items)" if none
//! --------------------------------
//! TOTAL: <amount> <currency>          <- bold
//! Release: <release>
//!                                     <- beep 3 x 100 ms, feed 4 lines, partial cut
//! ```

use super::escpos::{Align, Encoder};

/// The printed title of every slip.
pub const TITLE: &str = "DELIVERY SLIP";
/// The separator line (32 columns: fits a 58 mm roll, Font A).
pub const RULE: &str = "--------------------------------";
/// Beeps after the slip is printed: `ESC B 3 2`, three beeps of 100 ms, so the merchant hears it.
pub const BEEP_TIMES: u8 = 3;
/// Duration of each beep in units of 50 ms.
pub const BEEP_DURATION: u8 = 2;
/// Lines fed before the cut, so the last line clears the cutter.
pub const FEED_BEFORE_CUT: u8 = 4;

/// Everything a merchant's printer is told about an order, and nothing more (F22).
///
/// All text fields are sanitised when encoded ([`super::escpos::sanitize`]): control
/// characters are removed (newlines and tabs become spaces) and non-ASCII characters print as
/// `?`, so no field can inject a printer command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySlip {
    /// The order's id at the settlement node.
    pub order_id: String,
    /// The merchant's display name (printed under the title).
    pub merchant: String,
    /// The amount as printed, e.g. `"42.50"`.
    pub amount: String,
    /// The currency code, e.g. `"EUR"`.
    pub currency: String,
    /// The name to deliver to.
    pub delivery_name: String,
    /// The delivery address (one line on the slip; line breaks become spaces).
    pub delivery_address: String,
    /// The phone number for the delivery.
    pub delivery_phone: String,
    /// The items: description and quantity.
    pub items: Vec<(String, u32)>,
    /// When the money is released to the merchant, in words, e.g. `"on receipt"` (F19).
    pub release: String,
}

impl DeliverySlip {
    /// The text lines of the slip, in order, as the printer prints them (before sanitising).
    /// The title and the merchant are centred; the title and the total are bold.
    pub fn text_lines(&self) -> Vec<String> {
        let mut lines = vec![
            TITLE.to_string(),
            self.merchant.clone(),
            format!("Order: {}", self.order_id),
            RULE.to_string(),
            format!("Deliver to: {}", self.delivery_name),
            format!("Address: {}", self.delivery_address),
            format!("Phone: {}", self.delivery_phone),
            RULE.to_string(),
        ];
        if self.items.is_empty() {
            lines.push("(no items)".to_string());
        }
        lines.extend(
            self.items
                .iter()
                .map(|(item, qty)| format!("{qty} x {item}")),
        );
        lines.push(RULE.to_string());
        lines.push(format!("TOTAL: {} {}", self.amount, self.currency));
        lines.push(format!("Release: {}", self.release));
        lines
    }

    /// The slip as ESC/POS bytes: init, centred bold title, centred merchant, the lines, the
    /// items, the bold total, the release condition, a beep (`ESC B 3 2`), a feed and a cut.
    pub fn to_escpos(&self) -> Vec<u8> {
        let lines = self.text_lines();
        let (head, body) = lines.split_at(2);
        let (body, tail) = body.split_at(body.len() - 2);
        let mut enc = Encoder::new();
        enc.init()
            .align(Align::Centre)
            .bold(true)
            .line(&head[0])
            .bold(false)
            .line(&head[1])
            .align(Align::Left);
        for line in body {
            enc.line(line);
        }
        enc.bold(true)
            .line(&tail[0])
            .bold(false)
            .line(&tail[1])
            .beep(BEEP_TIMES, BEEP_DURATION)
            .feed(FEED_BEFORE_CUT)
            .cut();
        enc.finish()
    }
}
