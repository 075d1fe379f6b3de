//! A strict decoder for the ESC/POS the encoder emits, for tests and the demo.
//!
//! It understands exactly the commands of [`super::escpos`] (`ESC @`, `ESC a n`, `ESC E n`,
//! `ESC B n t`, `ESC d n`, `GS V m`, `LF`) and printable ASCII text, and returns a typed
//! [`DecodeError`] for anything else: an unknown command, a control or non-ASCII byte in the
//! text, an out-of-range argument, a command cut short, text left without its line feed, or
//! bytes after the cut. It is the printer as the tests see it: if a slip field could inject a
//! command, decoding would fail or show a line the slip never wrote.

use super::escpos::{ALIGN, BEEP, BEEP_MAX, BOLD, CUT, ESC, FEED, GS, INIT, LF};

/// What a printer would do with a byte stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The printed text lines, in order (a line ends at `LF`, or at `ESC d` if text is pending).
    /// Blank lines fed by `ESC d n` are counted in [`Decoded::fed_lines`], not listed here.
    pub lines: Vec<String>,
    /// Indexes into `lines` of the lines printed with emphasis (`ESC E 1` on when the line ended).
    pub bold_lines: Vec<usize>,
    /// Indexes into `lines` of the centred lines (`ESC a 1` in force when the line ended).
    pub centred_lines: Vec<usize>,
    /// Whether the stream was initialised (`ESC @`) before anything else.
    pub initialised: bool,
    /// Total beeps requested: the sum of `n` over every `ESC B n t`.
    pub beeps: u32,
    /// Total lines fed by `ESC d n`.
    pub fed_lines: u32,
    /// Whether the paper was cut (`GS V`); nothing may follow the cut.
    pub cut: bool,
}

/// Why a byte stream is not one the encoder could have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `ESC`/`GS` followed by a command byte the encoder never emits.
    #[error("unknown command {prefix:#04x} {command:#04x} at byte {offset}")]
    UnknownCommand {
        /// Offset of the `ESC`/`GS` byte.
        offset: usize,
        /// `ESC` (1B) or `GS` (1D).
        prefix: u8,
        /// The byte after it.
        command: u8,
    },
    /// A byte that is neither printable ASCII, `LF` nor the start of a known command.
    #[error("unexpected byte {byte:#04x} at byte {offset}")]
    UnexpectedByte {
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A command's argument is out of the range the encoder uses.
    #[error("bad argument {value} for {command} at byte {offset}")]
    BadArgument {
        /// Offset of the command's first byte.
        offset: usize,
        /// The command, e.g. `"ESC a"`.
        command: &'static str,
        /// The argument byte.
        value: u8,
    },
    /// The stream ends in the middle of a command.
    #[error("command at byte {offset} is cut short")]
    Truncated {
        /// Offset of the command's first byte.
        offset: usize,
    },
    /// The stream ends with text that no `LF` or `ESC d` printed.
    #[error("text at the end of the stream is not terminated by a line feed")]
    UnterminatedLine,
    /// Bytes follow the cut.
    #[error("byte {offset} follows the cut")]
    AfterCut {
        /// Offset of the first byte after the cut.
        offset: usize,
    },
}

#[derive(Default)]
struct State {
    out: Decoded,
    pending: String,
    bold: bool,
    centred: bool,
}

impl State {
    fn end_line(&mut self) {
        let index = self.out.lines.len();
        if self.bold {
            self.out.bold_lines.push(index);
        }
        if self.centred {
            self.out.centred_lines.push(index);
        }
        self.out.lines.push(std::mem::take(&mut self.pending));
    }
}

/// Decodes `bytes` as the encoder's ESC/POS; see the module docs for what is accepted.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut st = State::default();
    let mut i = 0;
    // The argument bytes of the command starting at `at`, or `Truncated`.
    let args = |at: usize, n: usize| -> Result<&[u8], DecodeError> {
        bytes
            .get(at + 2..at + 2 + n)
            .ok_or(DecodeError::Truncated { offset: at })
    };
    while i < bytes.len() {
        if st.out.cut {
            return Err(DecodeError::AfterCut { offset: i });
        }
        let byte = bytes[i];
        match byte {
            0x20..=0x7E => {
                st.pending.push(char::from(byte));
                i += 1;
            }
            LF => {
                st.end_line();
                i += 1;
            }
            ESC | GS => {
                let command = *bytes
                    .get(i + 1)
                    .ok_or(DecodeError::Truncated { offset: i })?;
                let bad = |command: &'static str, value: u8| DecodeError::BadArgument {
                    offset: i,
                    command,
                    value,
                };
                match (byte, command) {
                    (ESC, c) if [ESC, c] == INIT => {
                        if i == 0 {
                            st.out.initialised = true;
                        }
                        st.bold = false;
                        st.centred = false;
                        st.pending.clear();
                        i += 2;
                    }
                    (ESC, ALIGN) => {
                        st.centred = match args(i, 1)?[0] {
                            0 | b'0' => false,
                            1 | b'1' => true,
                            v => return Err(bad("ESC a", v)),
                        };
                        i += 3;
                    }
                    (ESC, BOLD) => {
                        st.bold = match args(i, 1)?[0] {
                            0 => false,
                            1 => true,
                            v => return Err(bad("ESC E", v)),
                        };
                        i += 3;
                    }
                    (ESC, BEEP) => {
                        let a = args(i, 2)?;
                        let (n, t) = (a[0], a[1]);
                        if !(1..=BEEP_MAX).contains(&n) {
                            return Err(bad("ESC B", n));
                        }
                        if !(1..=BEEP_MAX).contains(&t) {
                            return Err(bad("ESC B", t));
                        }
                        st.out.beeps += u32::from(n);
                        i += 4;
                    }
                    (ESC, FEED) => {
                        let n = args(i, 1)?[0];
                        if !st.pending.is_empty() {
                            st.end_line();
                        }
                        st.out.fed_lines += u32::from(n);
                        i += 3;
                    }
                    (GS, CUT) => {
                        match args(i, 1)?[0] {
                            0 | 1 | b'0' | b'1' => {}
                            v => return Err(bad("GS V", v)),
                        }
                        if !st.pending.is_empty() {
                            return Err(DecodeError::UnterminatedLine);
                        }
                        st.out.cut = true;
                        i += 3;
                    }
                    _ => {
                        return Err(DecodeError::UnknownCommand {
                            offset: i,
                            prefix: byte,
                            command,
                        })
                    }
                }
            }
            _ => return Err(DecodeError::UnexpectedByte { offset: i, byte }),
        }
    }
    if !st.pending.is_empty() {
        return Err(DecodeError::UnterminatedLine);
    }
    Ok(st.out)
}

#[cfg(test)]
mod tests {
    use super::super::escpos::{Align, Encoder};
    use super::super::slip::{DeliverySlip, RULE, TITLE};
    use super::*;

    fn slip() -> DeliverySlip {
        DeliverySlip {
            order_id: "ORD-0042".into(),
            merchant: "Corner Books".into(),
            amount: "42.50".into(),
            currency: "EUR".into(),
            delivery_name: "Ada Lovelace".into(),
            delivery_address: "12 St James's Square, London".into(),
            delivery_phone: "+44 20 7946 0000".into(),
            items: vec![("Notes on the Engine".into(), 2), ("Bookmark".into(), 1)],
            release: "on receipt".into(),
        }
    }

    #[test]
    fn slip_round_trip() {
        let d = decode(&slip().to_escpos()).unwrap();
        assert_eq!(
            d.lines,
            [
                TITLE,
                "Corner Books",
                "Order: ORD-0042",
                RULE,
                "Deliver to: Ada Lovelace",
                "Address: 12 St James's Square, London",
                "Phone: +44 20 7946 0000",
                RULE,
                "2 x Notes on the Engine",
                "1 x Bookmark",
                RULE,
                "TOTAL: 42.50 EUR",
                "Release: on receipt",
            ]
        );
        assert_eq!(d.bold_lines, [0, 11]);
        assert_eq!(d.centred_lines, [0, 1]);
        assert!(d.initialised);
        assert_eq!(d.beeps, 3);
        assert_eq!(d.fed_lines, 4);
        assert!(d.cut);
        assert_eq!(d.lines, slip().text_lines());
    }

    #[test]
    fn no_items_round_trip() {
        let mut s = slip();
        s.items.clear();
        let d = decode(&s.to_escpos()).unwrap();
        assert_eq!(d.lines[8], "(no items)");
        assert_eq!(d.lines[9], RULE);
    }

    #[test]
    fn hostile_fields_are_sanitised_not_injected() {
        let mut s = slip();
        // A cut, a beeper run, a code-page switch, a real-time status request and a bold toggle.
        s.delivery_name = "Eve\x1dV\x00\x1bB\x03\x03".into();
        s.delivery_address = "1 Main St\nTOTAL: 0.01 EUR\r\n\x1bt\x10\x10\x04\x01".into();
        s.delivery_phone = "555\x1bE\x01 0100 \u{9b}5i".into();
        s.items = vec![("Mug\x1b@ é\x7f".into(), 1)];
        s.release = "\x1bd\x7fnever".into();
        let bytes = s.to_escpos();
        let d = decode(&bytes).unwrap();
        assert_eq!(d.lines.len(), 12);
        assert_eq!(d.lines[4], "Deliver to: EveVB");
        assert_eq!(d.lines[5], "Address: 1 Main St TOTAL: 0.01 EUR  t");
        assert_eq!(d.lines[6], "Phone: 555E 0100 5i");
        assert_eq!(d.lines[8], "1 x Mug@ ?");
        assert_eq!(d.lines[11], "Release: dnever");
        // Still exactly one beep run, one feed, one cut, the same bold lines.
        assert_eq!((d.beeps, d.fed_lines, d.cut), (3, 4, true));
        assert_eq!(d.bold_lines, [0, 10]);
        // The command bytes are exactly the encoder's own: no field added any.
        let count = |b: u8| bytes.iter().filter(|&&x| x == b).count();
        assert_eq!(count(GS), 1);
        assert_eq!(count(ESC), 9);
        assert_eq!(count(LF), 12);
    }

    #[test]
    fn decode_rejects_what_the_encoder_never_emits() {
        use DecodeError::*;
        let err = |b: &[u8]| decode(b).unwrap_err();
        assert_eq!(
            err(b"\x1bt\x10"),
            UnknownCommand {
                offset: 0,
                prefix: ESC,
                command: b't'
            }
        );
        assert_eq!(
            err(b"\x1b@\x1d!\x11"),
            UnknownCommand {
                offset: 2,
                prefix: GS,
                command: b'!'
            }
        );
        assert_eq!(
            err(b"ok\x10\x04\x01"),
            UnexpectedByte {
                offset: 2,
                byte: 0x10
            }
        );
        assert_eq!(
            err("é\n".as_bytes()),
            UnexpectedByte {
                offset: 0,
                byte: 0xC3
            }
        );
        assert_eq!(
            err(b"a\rb\n"),
            UnexpectedByte {
                offset: 1,
                byte: b'\r'
            }
        );
        assert_eq!(
            err(b"\x1bE\x02"),
            BadArgument {
                offset: 0,
                command: "ESC E",
                value: 2
            }
        );
        assert_eq!(
            err(b"\x1bB\x00\x02"),
            BadArgument {
                offset: 0,
                command: "ESC B",
                value: 0
            }
        );
        assert_eq!(err(b"\x1ba"), Truncated { offset: 0 });
        assert_eq!(err(b"x\n\x1b"), Truncated { offset: 2 });
        assert_eq!(err(b"\x1bB\x03"), Truncated { offset: 0 });
        assert_eq!(err(b"dangling"), UnterminatedLine);
        assert_eq!(err(b"x\n\x1dV\x01y\n"), AfterCut { offset: 5 });
    }

    #[test]
    fn feed_prints_pending_text() {
        let mut bytes = Encoder::new().init().align(Align::Left).finish();
        bytes.extend_from_slice(b"tail\x1bd\x02");
        let d = decode(&bytes).unwrap();
        assert_eq!(d.lines, ["tail"]);
        assert_eq!(d.fed_lines, 2);
        assert!(!d.cut);
    }
}
