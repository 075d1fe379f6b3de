//! The small ESC/POS encoder the delivery slip is written with.
//!
//! Only the handful of commands a delivery slip needs, each with its exact bytes. The decoder
//! ([`super::decode`](mod@super::decode)) accepts exactly these commands and nothing else, so
//! anything added here must be added there too.
//!
//! | Command        | Bytes            | Meaning                                              |
//! |----------------|------------------|------------------------------------------------------|
//! | `ESC @`        | `1B 40`          | initialise the printer (clears modes and buffer)     |
//! | `ESC a n`      | `1B 61 n`        | justification: `n` = 0 left, 1 centre (2 right)      |
//! | `ESC E n`      | `1B 45 n`        | emphasis (bold): `n` = 1 on, 0 off                   |
//! | `LF`           | `0A`             | print the buffer and feed one line                   |
//! | `ESC B n t`    | `1B 42 n t`      | beeper: sound `n` times, each `t` × 50 ms (1..=9)    |
//! | `ESC d n`      | `1B 64 n`        | print the buffer and feed `n` lines                  |
//! | `GS V m`       | `1D 56 m`        | cut the paper: `m` = 1 partial cut (0 full cut)      |
//!
//! Text is printable ASCII only (`20`–`7E`), which prints the same under code page 437 (the
//! printers' default) and every other ESC/POS code page: see [`sanitize`].

/// Escape: starts most ESC/POS commands.
pub const ESC: u8 = 0x1B;
/// Group separator: starts the `GS` commands (here only the cut).
pub const GS: u8 = 0x1D;
/// Line feed: prints the buffered line and advances one line.
pub const LF: u8 = 0x0A;

/// `ESC @`: initialise.
pub const INIT: [u8; 2] = [ESC, b'@'];
/// Second byte of `ESC a n` (justification).
pub const ALIGN: u8 = b'a';
/// Second byte of `ESC E n` (emphasis).
pub const BOLD: u8 = b'E';
/// Second byte of `ESC d n` (print and feed `n` lines).
pub const FEED: u8 = b'd';
/// Second byte of `ESC B n t` (beeper).
pub const BEEP: u8 = b'B';
/// Second byte of `GS V m` (cut).
pub const CUT: u8 = b'V';

/// Justification argument of `ESC a n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// `ESC a 0`.
    Left = 0,
    /// `ESC a 1`.
    Centre = 1,
}

/// `GS V 1`: partial cut (leaves a small tab so the slip does not fall on the floor).
pub const PARTIAL_CUT: u8 = 1;

/// The longest beeper run accepted by `ESC B n t` (both `n` and `t` are 1..=9 on Epson-compatible
/// printers).
pub const BEEP_MAX: u8 = 9;

/// Makes `field` safe to put on the paper: code page 437-safe, command-free ASCII.
///
/// - `\n`, `\r` and `\t` become a space (an address typed on several lines stays readable on one);
/// - every other control character (C0 such as `ESC` 1B and `GS` 1D, `DEL` 7F, the C1 range
///   U+0080–U+009F) is removed, so a field can never carry a printer command;
/// - every other non-ASCII character becomes `?` (one `?` per character, not per UTF-8 byte):
///   the slip is printed under the printer's default code page 437, and plain ASCII is the
///   part of it that every ESC/POS printer prints the same.
///
/// The result contains only bytes `20`–`7E`.
pub fn sanitize(field: &str) -> String {
    field
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c if c.is_ascii() => Some(c),
            _ => Some('?'),
        })
        .collect()
}

/// Builds an ESC/POS byte stream. Every text goes through [`sanitize`]; the only way to emit a
/// command byte is one of the methods below.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// `ESC @`.
    pub fn init(&mut self) -> &mut Self {
        self.out.extend_from_slice(&INIT);
        self
    }

    /// `ESC a n`.
    pub fn align(&mut self, align: Align) -> &mut Self {
        self.out.extend_from_slice(&[ESC, ALIGN, align as u8]);
        self
    }

    /// `ESC E 1` / `ESC E 0`.
    pub fn bold(&mut self, on: bool) -> &mut Self {
        self.out.extend_from_slice(&[ESC, BOLD, u8::from(on)]);
        self
    }

    /// The sanitised text followed by `LF`.
    pub fn line(&mut self, text: &str) -> &mut Self {
        self.out.extend_from_slice(sanitize(text).as_bytes());
        self.out.push(LF);
        self
    }

    /// `ESC B n t`: `times` beeps of `duration` × 50 ms, both clamped to 1..=9.
    pub fn beep(&mut self, times: u8, duration: u8) -> &mut Self {
        let times = times.clamp(1, BEEP_MAX);
        let duration = duration.clamp(1, BEEP_MAX);
        self.out.extend_from_slice(&[ESC, BEEP, times, duration]);
        self
    }

    /// `ESC d n`: print and feed `lines` lines.
    pub fn feed(&mut self, lines: u8) -> &mut Self {
        self.out.extend_from_slice(&[ESC, FEED, lines]);
        self
    }

    /// `GS V 1`: partial cut.
    pub fn cut(&mut self) -> &mut Self {
        self.out.extend_from_slice(&[GS, CUT, PARTIAL_CUT]);
        self
    }

    /// The bytes written so far.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_ascii_and_removes_commands() {
        assert_eq!(sanitize("Rue 12, Flat 3"), "Rue 12, Flat 3");
        assert_eq!(sanitize("a\x1b@b\x1dVc"), "a@bVc");
        assert_eq!(sanitize("line1\nline2\r\tx"), "line1 line2  x");
        assert_eq!(sanitize("Müller \u{9b}2J €5"), "M?ller 2J ?5");
        assert_eq!(sanitize("\x7f\x00\x10\x04"), "");
        assert!(sanitize("\u{1F600}ü\u{200B}")
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b)));
    }

    #[test]
    fn encoder_bytes() {
        let bytes = Encoder::new()
            .init()
            .align(Align::Centre)
            .bold(true)
            .line("Hi")
            .bold(false)
            .beep(3, 2)
            .feed(4)
            .cut()
            .finish();
        assert_eq!(
            bytes,
            [
                0x1B, 0x40, 0x1B, 0x61, 1, 0x1B, 0x45, 1, b'H', b'i', 0x0A, 0x1B, 0x45, 0, 0x1B,
                0x42, 3, 2, 0x1B, 0x64, 4, 0x1D, 0x56, 1
            ]
        );
        // Out-of-range beeper arguments are clamped, never emitted as-is.
        assert_eq!(Encoder::new().beep(0, 200).finish(), [0x1B, 0x42, 1, 9]);
    }
}
