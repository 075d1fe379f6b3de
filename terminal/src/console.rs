//! The reader's display, keypad and speaker on a text terminal: prompts as lines, sound cues as
//! the terminal bell, the PIN typed without echo (on a TTY), yes/no questions.

use std::io::{BufRead, Write};

use onecard_protocol::{Prompt, SoundCue};

use crate::flow::Console;

/// How many bells each sound cue rings: none for a plain step, one to draw attention, two for
/// an error, three for a locked card.
pub fn bells(sound: SoundCue) -> usize {
    match sound {
        SoundCue::Ok => 0,
        SoundCue::Attention => 1,
        SoundCue::Error => 2,
        SoundCue::Locked => 3,
    }
}

/// A console over any input and output; [`TerminalConsole::stdio`] for the real terminal.
pub struct TerminalConsole<R, W> {
    input: R,
    output: W,
    /// Read the PIN without echo from the controlling terminal (rpassword) instead of `input`.
    hide_pin: bool,
}

impl<R: BufRead, W: Write> TerminalConsole<R, W> {
    pub fn new(input: R, output: W) -> TerminalConsole<R, W> {
        TerminalConsole {
            input,
            output,
            hide_pin: false,
        }
    }

    fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.input.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim().to_string()),
        }
    }
}

impl TerminalConsole<std::io::StdinLock<'static>, std::io::Stdout> {
    /// Standard input and output; the PIN is read without echo when standard input is a TTY.
    pub fn stdio() -> Self {
        use std::io::IsTerminal;
        TerminalConsole {
            hide_pin: std::io::stdin().is_terminal(),
            input: std::io::stdin().lock(),
            output: std::io::stdout(),
        }
    }
}

impl<R: BufRead, W: Write> Console for TerminalConsole<R, W> {
    fn show(&mut self, prompt: &Prompt) {
        let bell = "\u{7}".repeat(bells(prompt.sound));
        let _ = writeln!(self.output, "{bell}{}", prompt.text);
        let _ = self.output.flush();
    }

    fn read_pin(&mut self) -> Option<String> {
        let _ = write!(self.output, "PIN: ");
        let _ = self.output.flush();
        let pin = if self.hide_pin {
            rpassword::read_password()
                .ok()
                .map(|p| p.trim().to_string())
        } else {
            self.line()
        };
        pin.filter(|p| !p.is_empty())
    }

    fn confirm(&mut self, question: &Prompt) -> bool {
        let bell = "\u{7}".repeat(bells(question.sound));
        let _ = write!(self.output, "{bell}{} [y/N] ", question.text);
        let _ = self.output.flush();
        self.line()
            .is_some_and(|a| matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_ring_by_their_sound_and_answers_are_read() {
        let input = b"4711\ny\n".as_slice();
        let mut out = Vec::new();
        let mut c = TerminalConsole::new(input, &mut out);
        c.show(&Prompt::enter_pin());
        assert_eq!(c.read_pin().as_deref(), Some("4711"));
        assert!(c.confirm(&Prompt::confirm_address_change()));
        c.show(&Prompt::card_locked());
        c.show(&Prompt::authorised());
        // End of input: no PIN, no consent.
        assert_eq!(c.read_pin(), None);
        assert!(!c.confirm(&Prompt::confirm_address_change()));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], format!("\u{7}{}", Prompt::enter_pin().text));
        assert!(text.contains(&format!("\u{7}\u{7}\u{7}{}", Prompt::card_locked().text)));
        assert!(
            text.contains(&format!("\n{}\n", Prompt::authorised().text)),
            "no bell for Ok"
        );
        assert!(!text.contains("4711"), "the PIN is never echoed");
    }
}
