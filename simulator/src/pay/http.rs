//! A small asynchronous HTTP/1.1 client for `onecard-sim pay`: one keep-alive connection, one
//! request at a time, optionally *from* a given local IPv4 address (each simulated reader
//! connects from the address it is registered with; the node checks a swipe's peer address
//! against it). Runs on a current-thread Tokio runtime (actix-rt's), many connections per
//! thread.
//!
//! Why not the reader program's own link (`onecard_terminal::http_link::HttpLink`, ureq 2)? It
//! cannot bind its connections to a local address (ureq 2 connects with
//! `TcpStream::connect_timeout`), and it blocks a thread per connection: measured against the
//! node, a thread per connection cost the client about twice the CPU per request of one event
//! loop (the wake-ups). Here a request is one write of a reused buffer, an answer is read into
//! another, and nothing else is allocated per request.
//!
//! Plain HTTP only: the readers connect from 127.x.y.z, so the node is on loopback. Answers with
//! `Content-Length` or `Transfer-Encoding: chunked` are understood; `Connection: close` (or any
//! failure) drops the connection and the next request opens a new one. Nothing is retried.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use actix_rt::net::{TcpSocket, TcpStream};

/// The largest answer (head and body) accepted.
const MAX_ANSWER: usize = 4 << 20;
/// The largest answer head accepted.
const MAX_HEAD: usize = 16 << 10;

/// Why a request got no answer.
#[derive(Debug)]
pub enum HttpError {
    /// The connection could not be opened (or bound to the local address).
    Connect(io::Error),
    /// Sending or receiving failed, or timed out.
    Io(io::Error),
    /// The node closed the connection before a whole answer.
    Closed,
    /// The answer is not HTTP/1.1 as this client reads it.
    Malformed(&'static str),
}

impl HttpError {
    /// A short name for the error counts (`connect`, `timeout`, `reset`, `io`, `closed`,
    /// `malformed`).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "connect",
            HttpError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                "timeout"
            }
            HttpError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                "reset"
            }
            HttpError::Io(_) => "io",
            HttpError::Closed => "closed",
            HttpError::Malformed(_) => "malformed",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Closed => write!(f, "the node closed the connection"),
            HttpError::Malformed(what) => write!(f, "malformed answer: {what}"),
        }
    }
}

/// An answer: its status and body (borrowed from the connection's buffer until the next
/// request).
#[derive(Debug)]
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

/// What a request carries besides its method and path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// `Authorization: Bearer …`.
    pub bearer: Option<&'a str>,
    /// A JSON body.
    pub json: Option<&'a [u8]>,
}

/// One keep-alive connection to the node.
pub struct Conn {
    remote: SocketAddrV4,
    /// `Host` header value.
    host: String,
    local: Option<Ipv4Addr>,
    timeout: Duration,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes of `buf` filled.
    filled: usize,
    /// Where the last answer's body is (in `buf`, or in `chunked` for a chunked answer).
    body: std::ops::Range<usize>,
    chunked_body: Option<Vec<u8>>,
    /// Connections opened so far.
    pub connects: u64,
    /// Requests sent so far.
    pub requests: u64,
    /// Random, per connection: with `requests`, each POST's `Idempotency-Key`.
    key_prefix: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("remote", &self.remote)
            .field("local", &self.local)
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection to `remote`, opened at the first request; from `local` if given (port
    /// chosen by the kernel), else from whatever address the kernel picks.
    pub fn new(remote: SocketAddrV4, local: Option<Ipv4Addr>, timeout: Duration) -> Conn {
        Conn {
            remote,
            host: remote.to_string(),
            local,
            timeout,
            stream: None,
            out: Vec::with_capacity(1024),
            buf: vec![0; 8192],
            filled: 0,
            body: 0..0,
            chunked_body: None,
            connects: 0,
            requests: 0,
            key_prefix: rand::random(),
        }
    }

    /// Opens the connection now if it is not open (so that the first request's latency is not
    /// the connection's).
    pub async fn connect(&mut self) -> Result<(), HttpError> {
        if self.stream.is_none() {
            let stream =
                actix_rt::time::timeout(self.timeout, connect_from(self.local, self.remote))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                    .map_err(HttpError::Connect)?;
            stream.set_nodelay(true).map_err(HttpError::Connect)?;
            self.stream = Some(stream);
            self.connects += 1;
        }
        Ok(())
    }

    /// The local address of the open connection, if any.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// One request, its whole answer (within the timeout). Any failure closes the connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: Extra<'_>,
    ) -> Result<Response<'_>, HttpError> {
        let result = actix_rt::time::timeout(self.timeout, self.exchange(method, path, extra))
            .await
            .unwrap_or_else(|_| Err(HttpError::Io(io::ErrorKind::TimedOut.into())));
        match result {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                }
                let body = match &self.chunked_body {
                    Some(b) => &b[..],
                    None => &self.buf[self.body.clone()],
                };
                Ok(Response { status, body })
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Sends the request, reads the answer; the status and whether the node closes.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        extra: Extra<'_>,
    ) -> Result<(u16, bool), HttpError> {
        self.connect().await?;
        self.requests += 1;
        self.out.clear();
        let out = &mut self.out;
        for part in [
            method.as_bytes(),
            b" ",
            path.as_bytes(),
            b" HTTP/1.1\r\nHost: ",
            self.host.as_bytes(),
            b"\r\nAccept: application/json\r\n",
        ] {
            out.extend_from_slice(part);
        }
        if method == "POST" {
            // As the reference reader program and a careful merchant do: every POST can be
            // retried safely, so the node stores each answer with its key (a real cost the load
            // must include).
            out.extend_from_slice(b"Idempotency-Key: ");
            out.extend_from_slice(hex::encode(self.key_prefix.to_be_bytes()).as_bytes());
            push_decimal(out, self.requests as usize);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(token) = extra.bearer {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match extra.json {
            Some(body) => {
                out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
                push_decimal(out, body.len());
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(body);
            }
            None if method == "GET" || method == "HEAD" => out.extend_from_slice(b"\r\n"),
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
        let stream = self.stream.as_ref().expect("connected above");
        let mut sent = 0;
        while sent < self.out.len() {
            match stream.try_write(&self.out[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    stream.writable().await.map_err(HttpError::Io)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
        self.read_answer(method == "HEAD").await
    }

    /// Reads one answer into `buf`.
    async fn read_answer(&mut self, head_only: bool) -> Result<(u16, bool), HttpError> {
        self.filled = 0;
        self.chunked_body = None;
        // The head.
        let head_end = loop {
            if let Some(i) = find_head_end(&self.buf[..self.filled]) {
                break i;
            }
            if self.filled >= MAX_HEAD {
                return Err(HttpError::Malformed("the head is too large"));
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        let body_start = head_end + 4;
        if head_only
            || head.status == 204
            || head.status == 304
            || (100..200).contains(&head.status)
        {
            self.body = body_start..body_start;
            return Ok((head.status, head.close));
        }
        if head.chunked {
            let body = self.read_chunked(body_start).await?;
            self.chunked_body = Some(body);
            return Ok((head.status, head.close));
        }
        let Some(len) = head.content_length else {
            // No length: the body runs to the end of the connection.
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(HttpError::Closed) => break,
                    Err(e) => return Err(e),
                }
            }
            self.body = body_start..self.filled;
            return Ok((head.status, true));
        };
        let end = body_start
            .checked_add(len)
            .filter(|e| *e <= MAX_ANSWER)
            .ok_or(HttpError::Malformed("the body is too large"))?;
        while self.filled < end {
            self.fill().await?;
        }
        self.body = body_start..end;
        Ok((head.status, head.close))
    }

    /// Reads more bytes into `buf` (growing it when full), waiting for them. `Closed` at the
    /// end of the stream.
    async fn fill(&mut self) -> Result<(), HttpError> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= MAX_ANSWER {
                return Err(HttpError::Malformed("the answer is too large"));
            }
            let grown = (self.buf.len() * 2).min(MAX_ANSWER);
            self.buf.resize(grown, 0);
        }
        let stream = self.stream.as_ref().ok_or(HttpError::Closed)?;
        loop {
            stream.readable().await.map_err(HttpError::Io)?;
            match stream.try_read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(HttpError::Io(e)),
            }
        }
    }

    /// Decodes a chunked body that starts at `pos` in `buf`.
    async fn read_chunked(&mut self, mut pos: usize) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line_end = self.line_at(pos).await?;
            let line = &self.buf[pos..line_end];
            let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size_text)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(HttpError::Malformed("a chunk size is not hexadecimal"))?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let end = self.line_at(pos).await?;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > MAX_ANSWER {
                return Err(HttpError::Malformed("the body is too large"));
            }
            while self.filled < pos + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }

    /// The index of the `\r\n` ending the line that starts at `pos`, reading more as needed.
    async fn line_at(&mut self, pos: usize) -> Result<usize, HttpError> {
        loop {
            if let Some(i) = self.buf[pos.min(self.filled)..self.filled]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                return Ok(pos + i);
            }
            self.fill().await?;
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// The status line and the headers this client needs.
fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or(&[]);
    let (version, rest) = status_line
        .split_at_checked(9)
        .ok_or(HttpError::Malformed("no status line"))?;
    if !(version == b"HTTP/1.1 " || version == b"HTTP/1.0 ") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let status = rest
        .get(..3)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("no status code"))?;
    let mut h = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == b"HTTP/1.0 ",
    };
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(HttpError::Malformed("Content-Length is not a number"))?;
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.chunked = value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if value.eq_ignore_ascii_case(b"close") {
                h.close = true;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                h.close = false;
            }
        }
    }
    Ok(h)
}

/// A TCP connection to `remote`, bound first to `local` (port 0: the kernel picks one).
async fn connect_from(local: Option<Ipv4Addr>, remote: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(local) = local {
        socket.bind(SocketAddr::from((local, 0))).map_err(|e| {
            io::Error::new(e.kind(), format!("binding to local address {local}: {e}"))
        })?;
    }
    socket.connect(SocketAddr::V4(remote)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        actix_rt::Runtime::new().expect("a runtime").block_on(f)
    }

    #[test]
    fn heads_parse() {
        let h =
            parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\nContent-Type: x").unwrap();
        assert_eq!(
            h,
            Head {
                status: 201,
                content_length: Some(12),
                chunked: false,
                close: false
            }
        );
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close")
                .unwrap();
        assert!(h.chunked && h.close);
        assert!(parse_head(b"HTTP/2 200").is_err());
        assert!(parse_head(b"HTTP/1.1 2x0 OK").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: many").is_err());
        let mut v = Vec::new();
        push_decimal(&mut v, 0);
        v.push(b' ');
        push_decimal(&mut v, 12034);
        assert_eq!(v, b"0 12034");
    }

    /// A server that answers each request of one connection with the next of `answers`, and
    /// reports each request's first line and the peer address.
    fn serve(answers: Vec<&'static str>) -> (SocketAddrV4, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let handle = std::thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            let mut seen = vec![peer.ip().to_string()];
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for answer in answers {
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap() == 0 {
                    break;
                }
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                seen.push(format!(
                    "{} {}",
                    first.trim_end(),
                    String::from_utf8(body).unwrap()
                ));
                writer.write_all(answer.as_bytes()).unwrap();
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn one_connection_from_the_local_address_carries_every_request() {
        let (addr, server) = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        ]);
        let local: Ipv4Addr = "127.0.3.4".parse().unwrap();
        let mut c = Conn::new(addr, Some(local), Duration::from_secs(5));
        block_on(async {
            let r = c.request("GET", "/a", Extra::default()).await.unwrap();
            assert_eq!((r.status, r.body), (200, &b"{}"[..]));
            let r = c
                .request(
                    "POST",
                    "/b",
                    Extra {
                        bearer: Some("t"),
                        json: Some(b"{\"x\":1}"),
                    },
                )
                .await
                .unwrap();
            assert_eq!((r.status, r.body), (201, &b"abcde"[..]));
            let r = c.request("POST", "/c", Extra::default()).await.unwrap();
            assert_eq!((r.status, r.body.len()), (404, 0));
        });
        assert_eq!(c.connects, 1);
        assert_eq!(c.requests, 3);
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0], "127.0.3.4",
            "the connection comes from the bound address"
        );
        assert_eq!(
            &seen[1..],
            [
                "GET /a HTTP/1.1 ",
                "POST /b HTTP/1.1 {\"x\":1}",
                "POST /c HTTP/1.1 "
            ]
        );
    }

    #[test]
    fn a_closed_or_truncated_answer_is_an_error_and_the_next_request_reconnects() {
        let (addr, server) = serve(vec!["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
        let mut c = Conn::new(addr, None, Duration::from_secs(5));
        block_on(async {
            let e = c.request("GET", "/", Extra::default()).await.unwrap_err();
            assert_eq!(e.kind(), "closed", "{e}");
            server.join().unwrap();
            // Nothing listens any more: the reconnection fails.
            let e = c.request("GET", "/", Extra::default()).await.unwrap_err();
            assert_eq!(e.kind(), "connect", "{e}");
        });
    }

    #[test]
    fn a_silent_node_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let mut c = Conn::new(addr, None, Duration::from_millis(200));
        let e = block_on(c.request("GET", "/", Extra::default())).unwrap_err();
        assert_eq!(e.kind(), "timeout", "{e}");
        drop(listener);
    }
}
