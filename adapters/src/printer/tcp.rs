//! Sending ESC/POS bytes to a network printer: raw TCP, usually port 9100 ([`DEFAULT_PORT`]).
//!
//! One connection per slip: connect (bounded by the timeout), write every byte (the whole write
//! bounded by the timeout again, not each `write` call), flush, and shut down the write half so
//! the printer sees the end of the job. Std `TcpStream` only: a print is one short blocking
//! call, made off the engine's actors by whoever owns the print queue.
//!
//! What success means: the bytes reached the local kernel's socket buffer and the connection was
//! not refused or reset meanwhile. A slip is a few hundred bytes, so it fits in the buffers even
//! if the printer never reads; TCP itself cannot say the paper came out (the printer's real-time
//! status, `DLE EOT n`, is not used yet). A printer that accepts and never reads shows up as
//! [`PrintError::TimedOut`] only once the buffers are full.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The usual raw-printing port of network receipt printers.
pub const DEFAULT_PORT: u16 = 9100;

/// The step that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening the TCP connection.
    Connect,
    /// Writing the bytes (the printer stopped reading).
    Write,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::Write => "writing",
        })
    }
}

/// Why a print did not go through. Every variant is worth a retry later (by the print queue).
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// Nothing listens at the address: the printer is off or its port is closed.
    #[error("printer at {addr} refused the connection (offline?)")]
    Refused {
        /// The printer's address.
        addr: SocketAddr,
    },
    /// The connection could not be opened for another reason (no route, network down, ...).
    #[error("printer at {addr} is unreachable: {source}")]
    Unreachable {
        /// The printer's address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The connection or the write took longer than the timeout.
    #[error("printer at {addr} timed out {stage} ({written} bytes written)")]
    TimedOut {
        /// The printer's address.
        addr: SocketAddr,
        /// Connecting or writing.
        stage: Stage,
        /// Bytes accepted by the socket before the timeout.
        written: usize,
    },
    /// The printer closed or reset the connection while the bytes were being written.
    #[error("printer at {addr} closed the connection after {written} bytes: {source}")]
    BrokenPipe {
        /// The printer's address.
        addr: SocketAddr,
        /// Bytes accepted by the socket before the connection broke.
        written: usize,
        /// The operating system's error (broken pipe, connection reset or aborted).
        source: io::Error,
    },
    /// Any other I/O error.
    #[error("printing to {addr} failed: {source}")]
    Io {
        /// The printer's address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
}

/// Sends `bytes` to the printer at `addr` and closes the write half.
///
/// `timeout` bounds the connect, and then separately the whole write (flush and shutdown
/// included); a zero timeout is taken as 1 ms (std rejects zero timeouts). So a call returns
/// within about twice `timeout`, whatever the printer does.
pub fn print_to(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<(), PrintError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused => PrintError::Refused { addr },
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => PrintError::TimedOut {
                addr,
                stage: Stage::Connect,
                written: 0,
            },
            _ => PrintError::Unreachable { addr, source },
        })?;
    let deadline = Instant::now() + timeout;
    let mut written = 0;
    let write_error = |source: io::Error, written: usize| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PrintError::TimedOut {
            addr,
            stage: Stage::Write,
            written,
        },
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => PrintError::BrokenPipe {
            addr,
            written,
            source,
        },
        _ => PrintError::Io { addr, source },
    };
    while written < bytes.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PrintError::TimedOut {
                addr,
                stage: Stage::Write,
                written,
            });
        }
        stream
            .set_write_timeout(Some(left))
            .map_err(|source| PrintError::Io { addr, source })?;
        match stream.write(&bytes[written..]) {
            Ok(0) => {
                let source = io::Error::from(io::ErrorKind::WriteZero);
                return Err(PrintError::BrokenPipe {
                    addr,
                    written,
                    source,
                });
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(write_error(e, written)),
        }
    }
    stream.flush().map_err(|e| write_error(e, written))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| write_error(e, written))
}
