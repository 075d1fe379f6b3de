//! The printer adapter against a test printer: a plain TCP listener on a loopback port.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use onecard_adapters::printer::{decode, print_to, DeliverySlip, PrintError, Stage};

/// More than the loopback socket buffers can hold (send 4 MiB + receive 32 MiB at most here),
/// so a printer that does not read makes the writer block.
const FLOOD: usize = 64 << 20;

fn slip() -> DeliverySlip {
    DeliverySlip {
        order_id: "ORD-7".into(),
        merchant: "Green Grocer".into(),
        amount: "42.50".into(),
        currency: "EUR".into(),
        delivery_name: "Grace Hopper".into(),
        delivery_address: "1 Navy Yard, Arlington".into(),
        delivery_phone: "+1 555 0100".into(),
        items: vec![("Apples 1kg".into(), 3), ("Honey".into(), 1)],
        release: "on receipt".into(),
    }
}

/// A printer that records one job: everything until the sender shuts down its write half.
fn recording_printer() -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut job = Vec::new();
        stream.read_to_end(&mut job).unwrap();
        job
    });
    (addr, handle)
}

#[test]
fn printer_receives_the_slip() {
    let (addr, printer) = recording_printer();
    let s = slip();
    print_to(addr, &s.to_escpos(), Duration::from_secs(5)).unwrap();
    let job = printer.join().unwrap();
    assert_eq!(job, s.to_escpos());
    let d = decode(&job).unwrap();
    for expected in [
        "Order: ORD-7",
        "TOTAL: 42.50 EUR",
        "Deliver to: Grace Hopper",
        "Address: 1 Navy Yard, Arlington",
        "Phone: +1 555 0100",
        "3 x Apples 1kg",
        "1 x Honey",
        "Release: on receipt",
    ] {
        assert!(
            d.lines.iter().any(|l| l == expected),
            "missing {expected:?} in {:?}",
            d.lines
        );
    }
    assert_eq!(d.lines, s.text_lines());
    assert!(d.beeps > 0, "no beep");
    assert!(d.cut, "no cut");
}

#[test]
fn hostile_fields_arrive_sanitised() {
    let (addr, printer) = recording_printer();
    let mut s = slip();
    s.delivery_name = "Mallory\x1dV\x00\n\x1bB\x03\x03".into();
    s.delivery_address = "2 Side St\r\n\x1b@\x1bE\x01FREE".into();
    s.items = vec![("Tea\x10\x04\x01".into(), 2)];
    print_to(addr, &s.to_escpos(), Duration::from_secs(5)).unwrap();
    let d = decode(&printer.join().unwrap()).unwrap();
    assert_eq!(d.lines[4], "Deliver to: MalloryV B");
    assert_eq!(d.lines[5], "Address: 2 Side St  @EFREE");
    assert_eq!(d.lines[8], "2 x Tea");
    assert_eq!(d.lines.len(), s.text_lines().len());
    assert_eq!((d.beeps, d.fed_lines, d.cut), (3, 4, true));
    assert_eq!(d.bold_lines, [0, d.lines.len() - 2]);
}

#[test]
fn offline_printer_is_refused_quickly() {
    // Bind then drop: the port is free and nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let err = print_to(addr, &slip().to_escpos(), Duration::from_secs(2)).unwrap_err();
    assert!(
        matches!(err, PrintError::Refused { addr: a } if a == addr),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn printer_that_never_reads_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let printer = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // Hold the connection open without reading until the test is over.
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(stream);
    });

    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = print_to(addr, &vec![b'A'; FLOOD], timeout).unwrap_err();
    let elapsed = started.elapsed();
    done_tx.send(()).unwrap();
    printer.join().unwrap();

    match err {
        PrintError::TimedOut { stage, written, .. } => {
            assert_eq!(stage, Stage::Write);
            assert!(written < FLOOD);
        }
        other => panic!("expected a write timeout, got {other:?}"),
    }
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "hung for {elapsed:?}");
}

#[test]
fn slip_fits_the_socket_buffers_of_a_printer_that_never_reads() {
    // The limit of TCP printing, pinned down: a slip is accepted by the kernel even if the
    // printer never reads it; only the print queue's status checks can tell (not here yet).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let printer = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(stream);
    });
    let result = print_to(addr, &slip().to_escpos(), Duration::from_millis(300));
    done_tx.send(()).unwrap();
    printer.join().unwrap();
    result.unwrap();
}

#[test]
fn printer_that_hangs_up_gives_broken_pipe() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let printer = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        // Closing with unread data resets the connection.
    });
    let started = Instant::now();
    let err = print_to(addr, &vec![b'A'; FLOOD], Duration::from_secs(5)).unwrap_err();
    printer.join().unwrap();
    assert!(matches!(err, PrintError::BrokenPipe { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
