//! The AJP13 front on the wire, as a web server would speak it (no web
//! server): CPING/CPONG, two requests on one kept connection (END_RESPONSE
//! reuse=1), a body asked for with GET_BODY_CHUNK, SHUTDOWN, and a malformed
//! packet closing only its connection.

mod apache_support;
mod common;
mod servers_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use apache_support::free_loopback_port;
use servers_support::{Endpoint, Site};

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
    out.push(0);
}

fn packet(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x12, 0x34];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A FORWARD_REQUEST for `method` (AJP code) `uri` with `content_length`.
fn forward(method: u8, uri: &str, query: &str, content_length: Option<usize>) -> Vec<u8> {
    let mut p = vec![2, method];
    string(&mut p, b"HTTP/1.1");
    string(&mut p, uri.as_bytes());
    string(&mut p, b"192.0.2.9");
    p.extend_from_slice(&0xFFFFu16.to_be_bytes());
    string(&mut p, b"localhost");
    p.extend_from_slice(&80u16.to_be_bytes());
    p.push(0);
    let n: u16 = if content_length.is_some() { 2 } else { 1 };
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&[0xA0, 0x0B]);
    string(&mut p, b"localhost");
    if let Some(len) = content_length {
        p.extend_from_slice(&[0xA0, 0x08]);
        string(&mut p, len.to_string().as_bytes());
    }
    if !query.is_empty() {
        p.push(0x05);
        string(&mut p, query.as_bytes());
    }
    p.push(0xFF);
    packet(&p)
}

/// Read one packet from the shim ('A' 'B' length payload).
fn read_packet(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).expect("packet head");
    assert_eq!(&head[..2], b"AB", "{head:?}");
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
    s.read_exact(&mut payload).expect("packet payload");
    payload
}

/// Read a response to its END_RESPONSE: (status, body, reuse), answering
/// GET_BODY_CHUNKs from `body`.
fn read_response(s: &mut TcpStream, mut body: &[u8]) -> (u16, Vec<u8>, bool) {
    let mut status = 0;
    let mut out = Vec::new();
    loop {
        let p = read_packet(s);
        match p[0] {
            4 => status = u16::from_be_bytes([p[1], p[2]]),
            3 => {
                let len = usize::from(u16::from_be_bytes([p[1], p[2]]));
                assert_eq!(p.len(), 3 + len + 1, "chunk length and trailing NUL");
                assert!(p.len() <= 8192 - 4, "within the packet size");
                out.extend_from_slice(&p[3..3 + len]);
            }
            5 => return (status, out, p[1] == 1),
            6 => {
                let want = usize::from(u16::from_be_bytes([p[1], p[2]]));
                assert!(want > 0 && want <= 8186, "{want}");
                let n = want.min(body.len());
                let mut chunk = (n as u16).to_be_bytes().to_vec();
                chunk.extend_from_slice(&body[..n]);
                body = &body[n..];
                s.write_all(&packet(&chunk)).unwrap();
            }
            t => panic!("unexpected packet type {t}: {p:?}"),
        }
    }
}

#[test]
fn ajp_on_the_wire() {
    let site = Site::new();
    let port = free_loopback_port();
    let shim = site.serve(
        &[
            "protocol=ajp".into(),
            "method=single".into(),
            format!("port={port}"),
        ],
        Endpoint::Tcp(port),
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    // CPING -> CPONG.
    s.write_all(&packet(&[10])).unwrap();
    assert_eq!(read_packet(&mut s), [9]);

    // Two GETs on the same connection.
    for i in 0..2 {
        s.write_all(&forward(2, "/hello/world", "x=1", None))
            .unwrap();
        let (status, body, reuse) = read_response(&mut s, b"");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{text}\n{}", shim.log_text());
        assert!(reuse, "request {i}: END_RESPONSE without reuse");
        for want in [
            "SCRIPT_NAME=\n",
            "PATH_INFO=/hello/world\n",
            "QUERY_STRING=x=1\n",
            "REQUEST_METHOD=GET\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    // A POST of 100 000 bytes: the first chunk unasked, the rest asked for.
    let body = common::prng_bytes(100_000, 7);
    let mut first = 8186u16.to_be_bytes().to_vec();
    first.extend_from_slice(&body[..8186]);
    let mut out = forward(4, "/echo", "", Some(body.len()));
    out.extend_from_slice(&packet(&first));
    s.write_all(&out).unwrap();
    let (status, echoed, reuse) = read_response(&mut s, &body[8186..]);
    assert_eq!(status, 200, "{}", shim.log_text());
    assert!(echoed == body, "echoed {} bytes, differ", echoed.len());
    assert!(reuse);

    // SHUTDOWN closes the connection.
    s.write_all(&packet(&[7])).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    // A bad packet type: that connection closes with a log line; the next
    // connection is served.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    bad.write_all(&packet(&[42, 1, 2])).unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        shim.log_text()
            .contains("ajp: closing the connection from 127.0.0.1: unexpected packet type 42"),
        "{}",
        shim.log_text()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&forward(2, "/again", "", None)).unwrap();
    let (status, body, _) = read_response(&mut s, b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("PATH_INFO=/again\n"));
}
