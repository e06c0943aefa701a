//! Any bytes an application could write as its response head, through the
//! CGI head parser (the cgi kind) and the WSGI head frame parser (the wsgi
//! kind): parsing never panics, a head fed in two pieces parses as in one,
//! an accepted head written out (what every front sends) has no CR, LF or
//! NUL but its line ends, and it parses back to the same head.
#![no_main]

use fcgi_shim::back::wsgi::parse_head;
use fcgi_shim::request::{CgiHeadParser, HeadProgress, ResponseHead};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn written(head: &ResponseHead) -> Vec<u8> {
    let mut out = Vec::new();
    head.write_cgi(&mut out);
    let lines = out.strip_suffix(b"\r\n").expect("the blank line");
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").expect("every line ends in CRLF");
        assert!(!line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
        assert!(!line.is_empty(), "an empty line inside the head");
    }
    out
}

fn parse_cgi(pieces: &[&[u8]]) -> Option<Result<(ResponseHead, Vec<u8>), String>> {
    let mut parser = CgiHeadParser::new(MAX);
    let mut result = None;
    for (i, piece) in pieces.iter().enumerate() {
        match parser.push(piece) {
            Ok(HeadProgress::Partial) => {}
            Ok(HeadProgress::Complete(head, mut body)) => {
                for rest in &pieces[i + 1..] {
                    body.extend_from_slice(rest);
                }
                result = Some(Ok((head, body)));
                break;
            }
            Err(e) => {
                result = Some(Err(e.to_string()));
                break;
            }
        }
    }
    result
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let whole = parse_cgi(&[data]);
    let pieces = parse_cgi(&[&data[..split], &data[split..]]);
    // An error may show earlier when the pieces are smaller (too large).
    if let (Some(Ok(a)), Some(Ok(b))) = (&whole, &pieces) {
        assert_eq!(a, b, "split at {split}");
    }
    if let Some(Ok((head, _))) = &whole {
        let out = written(head);
        match CgiHeadParser::new(out.len() + 1).push(&out) {
            Ok(HeadProgress::Complete(again, body)) => {
                // A local redirect is written without its Status line, so its
                // reason is not carried (the web server answers it).
                if head.is_local_redirect() {
                    assert_eq!(again.headers(), head.headers());
                    assert!(again.is_local_redirect());
                } else {
                    assert_eq!(&again, head);
                }
                assert!(body.is_empty());
            }
            other => panic!("written head does not parse back: {other:?}"),
        }
    }
    if let Ok(head) = parse_head(data, MAX) {
        written(&head);
    }
});
