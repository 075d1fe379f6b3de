//! The card side of vsmartcard's vpcd protocol: plugs a [`CardApplet`] into a vpcd reader.
//!
//! vpcd (the `vsmartcard-vpcd` driver of pcscd) listens on TCP: port [`READER_00_00_PORT`]
//! for reader `Virtual PCD 00 00`, 35964 for `Virtual PCD 00 01`. The card connects to it.
//! Each frame, both ways, is a 2-byte big-endian length and a payload:
//!
//! - a 1-byte payload is a control code: [`POWER_OFF`], [`POWER_ON`], [`RESET`] (no reply;
//!   each deselects the applet) or [`GET_ATR`] (the reply is a frame holding the ATR). Other
//!   codes are ignored, as vsmartcard's own cards do;
//! - a longer payload is a command APDU; the reply is a frame holding the response APDU;
//! - an empty payload is ignored (vpcd never sends one).
//!
//! **Removing the card** is closing the connection: pcscd then sees the reader empty
//! (`get_status_change` goes from PRESENT to EMPTY). [`run_card`] takes the stream by value and
//! drops it when it returns, so returning (vpcd closed, a stop request, an error) pulls the
//! card out; ending the process (Ctrl-C, SIGTERM) does the same, the kernel closing the socket.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::applet::{CardApplet, ATR};

/// vpcd's port for reader `Virtual PCD 00 00` (the second reader, `... 00 01`, is on 35964).
pub const READER_00_00_PORT: u16 = 35963;

/// Control code: power off (no reply).
pub const POWER_OFF: u8 = 0;
/// Control code: power on (no reply).
pub const POWER_ON: u8 = 1;
/// Control code: warm reset (no reply).
pub const RESET: u8 = 2;
/// Control code: get the ATR (the reply is the ATR).
pub const GET_ATR: u8 = 4;

/// How often a blocked read wakes up to look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// A vpcd that stops reading our replies for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Connects to vpcd at `addr`, retrying until `timeout` has passed (vpcd may not be listening
/// yet: pcscd loads it on start). Returns the last connection error after the deadline.
pub fn connect_with_retry<A: ToSocketAddrs>(addr: A, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let error = match addr.to_socket_addrs() {
            Ok(addrs) => {
                let mut last = io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "the address resolved to nothing",
                );
                let mut connected = None;
                for a in addrs {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(10));
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                match connected {
                    Some(s) => return Ok(s),
                    None => last,
                }
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(error);
        }
        thread::sleep(RETRY_PAUSE.min(deadline - now));
    }
}

/// What reading a frame came to.
enum Incoming {
    Frame(Vec<u8>),
    /// vpcd closed the connection between two frames.
    Closed,
    /// `stop` was set.
    Stopped,
}

/// Fills `buf` from `stream`, across partial reads and read timeouts. `Ok(false)` if `stop`
/// was set, or if vpcd closed before the first byte and `eof_ok`; a close after the first
/// byte is an `UnexpectedEof` error.
fn fill(
    stream: &mut TcpStream,
    buf: &mut [u8],
    stop: &AtomicBool,
    eof_ok: bool,
) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && eof_ok => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                    "vpcd closed the connection in the middle of a frame ({filled} of {} bytes)",
                    buf.len()
                ),
                ))
            }
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_frame(stream: &mut TcpStream, stop: &AtomicBool) -> io::Result<Incoming> {
    let mut header = [0u8; 2];
    if !fill(stream, &mut header, stop, true)? {
        return Ok(if stop.load(Ordering::Relaxed) {
            Incoming::Stopped
        } else {
            Incoming::Closed
        });
    }
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes(header))];
    if !fill(stream, &mut payload, stop, false)? {
        return Ok(Incoming::Stopped);
    }
    Ok(Incoming::Frame(payload))
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 65535 bytes")
    })?;
    // One write for header and payload: one segment on the wire.
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)?;
    stream.flush()
}

/// Serves vpcd's frames on `stream` with `applet` until vpcd closes the connection (`Ok`), `stop`
/// is set (`Ok`, within about 50 ms) or the connection fails (`Err`; a close in the middle of
/// a frame is an `UnexpectedEof` error). The stream is dropped on return, which removes the
/// card from the reader.
///
/// Insertion and removal are power cycles: the applet is reset (deselected) on entry and on
/// return. Its counter persists, so the same applet can be inserted again.
pub fn run_card(
    mut stream: TcpStream,
    applet: &mut CardApplet,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STOP_POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    applet.reset();
    let result = serve(&mut stream, applet, stop);
    applet.reset();
    result
}

fn serve(stream: &mut TcpStream, applet: &mut CardApplet, stop: &AtomicBool) -> io::Result<()> {
    loop {
        let payload = match read_frame(stream, stop)? {
            Incoming::Frame(p) => p,
            Incoming::Closed | Incoming::Stopped => return Ok(()),
        };
        match payload[..] {
            [] => {}
            [POWER_OFF | POWER_ON | RESET] => applet.reset(),
            [GET_ATR] => write_frame(stream, &ATR)?,
            [_] => {}
            _ => {
                let response = applet.process(&payload);
                write_frame(stream, &response)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::applet::tests::{card, generate_apdu, key, select_apdu};
    use onecard_engine::cards::crypto;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A fake vpcd on a free loopback port, and a card thread plugged into it.
    struct Rig {
        vpcd: TcpStream,
        card: JoinHandle<(io::Result<()>, CardApplet)>,
        stop: Arc<AtomicBool>,
    }

    fn rig(mut applet: CardApplet) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let card_stop = stop.clone();
        let card = thread::spawn(move || {
            let stream = connect_with_retry(addr, Duration::from_secs(5)).unwrap();
            let r = run_card(stream, &mut applet, &card_stop);
            (r, applet)
        });
        let (vpcd, _) = listener.accept().unwrap();
        vpcd.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Rig { vpcd, card, stop }
    }

    fn send(vpcd: &mut TcpStream, payload: &[u8]) {
        let mut f = (payload.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        vpcd.write_all(&f).unwrap();
    }

    fn recv(vpcd: &mut TcpStream) -> Vec<u8> {
        let mut h = [0u8; 2];
        vpcd.read_exact(&mut h).unwrap();
        let mut p = vec![0u8; usize::from(u16::from_be_bytes(h))];
        vpcd.read_exact(&mut p).unwrap();
        p
    }

    fn exchange(vpcd: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
        send(vpcd, payload);
        recv(vpcd)
    }

    #[test]
    fn a_session_over_the_vpcd_framing() {
        let Rig {
            mut vpcd, card: t, ..
        } = rig(card(7));
        send(&mut vpcd, &[POWER_ON]);
        assert_eq!(exchange(&mut vpcd, &[GET_ATR]), ATR);
        assert_eq!(exchange(&mut vpcd, &select_apdu()), [0x90, 0x00]);
        let challenge = [0xC4u8; 16];
        let resp = exchange(&mut vpcd, &generate_apdu(&challenge, 4_250, "order-17"));
        assert_eq!(resp.len(), 22);
        assert_eq!(resp[20..], [0x90, 0x00]);
        assert_eq!(resp[..4], 8u32.to_be_bytes());
        assert!(crypto::cryptogram_matches(
            &key(),
            &challenge,
            "order-17",
            4_250,
            8,
            &resp[4..20]
        ));
        // A polling GET_ATR between APDUs (pcscd does that to see the card is still there).
        assert_eq!(exchange(&mut vpcd, &[GET_ATR]), ATR);
        send(&mut vpcd, &[POWER_OFF]);
        drop(vpcd);
        let (result, applet) = t.join().unwrap();
        result.expect("a close between frames is a clean end");
        assert_eq!(applet.counter(), 8, "the counter persists");
    }

    #[test]
    fn power_off_on_and_reset_deselect() {
        let Rig {
            mut vpcd, card: t, ..
        } = rig(card(0));
        let read = [0x80, 0xB0, 0, 0, 0];
        for control in [POWER_OFF, POWER_ON, RESET] {
            send(&mut vpcd, &[POWER_ON]);
            assert_eq!(exchange(&mut vpcd, &select_apdu()), [0x90, 0x00]);
            assert_eq!(exchange(&mut vpcd, &read).last(), Some(&0x00));
            send(&mut vpcd, &[control]);
            assert_eq!(
                exchange(&mut vpcd, &read),
                [0x69, 0x85],
                "control {control}"
            );
        }
        // Unknown control codes and empty frames are ignored: no reply, nothing changes.
        assert_eq!(exchange(&mut vpcd, &select_apdu()), [0x90, 0x00]);
        send(&mut vpcd, &[3]);
        send(&mut vpcd, &[0xFF]);
        send(&mut vpcd, &[]);
        let resp = exchange(&mut vpcd, &read);
        assert_eq!(resp[resp.len() - 2..], [0x90, 0x00]);
        // Malformed APDUs get status words, not a dropped connection.
        assert_eq!(exchange(&mut vpcd, &[0x80, 0xAE]), [0x67, 0x00]);
        assert_eq!(exchange(&mut vpcd, &[0xFF; 300]), [0x67, 0x00]);
        drop(vpcd);
        t.join().unwrap().0.unwrap();
    }

    #[test]
    fn frames_arriving_byte_by_byte() {
        let Rig {
            mut vpcd, card: t, ..
        } = rig(card(0));
        vpcd.set_nodelay(true).unwrap();
        let mut frames = vec![0, 1, POWER_ON, 0, 1, GET_ATR];
        let sel = select_apdu();
        frames.extend_from_slice(&(sel.len() as u16).to_be_bytes());
        frames.extend_from_slice(&sel);
        for b in frames {
            vpcd.write_all(&[b]).unwrap();
            vpcd.flush().unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(recv(&mut vpcd), ATR);
        assert_eq!(recv(&mut vpcd), [0x90, 0x00]);
        drop(vpcd);
        t.join().unwrap().0.unwrap();
    }

    #[test]
    fn a_close_in_the_middle_of_a_frame_is_an_error() {
        for partial in [&[0x00][..], &[0x00, 0x0E, 0x00, 0xA4, 0x04]] {
            let Rig {
                mut vpcd, card: t, ..
            } = rig(card(0));
            send(&mut vpcd, &[POWER_ON]);
            vpcd.write_all(partial).unwrap();
            drop(vpcd);
            let err = t.join().unwrap().0.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        }
    }

    #[test]
    fn a_stop_request_ends_the_session_and_removes_the_card() {
        let Rig {
            mut vpcd,
            card: t,
            stop,
        } = rig(card(0));
        send(&mut vpcd, &[POWER_ON]);
        assert_eq!(exchange(&mut vpcd, &[GET_ATR]), ATR);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().0.unwrap();
        // The card's end of the connection is closed: vpcd reads end of stream.
        let mut buf = [0u8; 1];
        assert_eq!(vpcd.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn connect_with_retry_waits_for_vpcd_and_gives_up_after_the_timeout() {
        // Find a free port, then listen on it only after a while.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            l.accept().unwrap();
        });
        connect_with_retry(("127.0.0.1", port), Duration::from_secs(10)).unwrap();
        late.join().unwrap();

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = connect_with_retry(("127.0.0.1", port), Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
