//! `kind = "scgi"`: one request relayed to an SCGI server (flup's
//! `scgi` WSGIServer, ...), sans-I/O, through the one SCGI codec
//! (`front::scgi::encode_head`). The driver and the process are
//! `back::server`'s.
//!
//! Owns: the request head (CONTENT_LENGTH, which SCGI needs before the
//! body: the web server's, or 0 for a body known to be empty; otherwise
//! 411) and the answer: a CGI response head parsed by [`CgiHeadParser`],
//! then body bytes until the server closes the connection. Our sending
//! half is closed after the body, for applications that read their input
//! to its end.
//! Must not: read or write sockets, or buffer a body.

use super::server::{Event, Refusal, Wire};
use crate::request::{self, CgiHeadParser, HeadProgress, Request, ScriptName};

pub struct ScgiWire {
    script_name: ScriptName,
    head: Option<CgiHeadParser>,
}

impl ScgiWire {
    pub fn new(script_name: ScriptName, max_head: usize) -> ScgiWire {
        ScgiWire {
            script_name,
            head: Some(CgiHeadParser::new(max_head)),
        }
    }
}

impl Wire for ScgiWire {
    fn begin(&mut self, req: &Request, body_empty: bool, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let length = match req.get("CONTENT_LENGTH").filter(|l| !l.is_empty()) {
            Some(l) => l
                .parse::<u64>()
                .map_err(|_| Refusal(400, format!("invalid CONTENT_LENGTH {l:?}")))?,
            None if body_empty => 0,
            None => {
                return Err(Refusal(
                    411,
                    "an SCGI server needs the body's length first".into(),
                ));
            }
        };
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        request::for_each_application_meta_variable(req, &self.script_name, |n, v| {
            pairs.push((n.to_vec(), v.to_vec()));
        });
        crate::front::scgi::encode_head(
            out,
            length,
            pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        Ok(())
    }

    fn body(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(data);
    }

    fn end(&mut self, _out: &mut Vec<u8>) {}

    fn half_close(&self) -> bool {
        true
    }

    fn decode(&mut self, input: &[u8], eof: bool) -> Result<(usize, Event), String> {
        let Some(parser) = &mut self.head else {
            return Ok(match (input.len(), eof) {
                (0, true) => (0, Event::End),
                (0, false) => (0, Event::NeedMore),
                (n, _) => (n, Event::Body(0..n)),
            });
        };
        if input.is_empty() {
            return Ok((0, Event::NeedMore));
        }
        match parser.push(input) {
            Ok(HeadProgress::Partial) => Ok((input.len(), Event::NeedMore)),
            Ok(HeadProgress::Complete(head, rest)) => {
                self.head = None;
                Ok((input.len(), Event::Head(head, rest)))
            }
            Err(e) => Err(format!("invalid response head: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::scgi::{Decoded, decode_head};

    #[test]
    fn head_round_trips_through_the_front_decoder() {
        let req = Request::new(vec![
            (b"CONTENT_LENGTH".to_vec(), b"3".to_vec()),
            (b"REQUEST_METHOD".to_vec(), b"POST".to_vec()),
        ]);
        let mut out = Vec::new();
        ScgiWire::new(ScriptName::AsReceived, 4096)
            .begin(&req, false, &mut out)
            .unwrap();
        let Ok(Decoded::Complete(head, used)) = decode_head(&out, 4096, 100) else {
            panic!("not decoded: {}", String::from_utf8_lossy(&out));
        };
        assert_eq!(used, out.len());
        assert_eq!(head.content_length, 3);
        assert!(
            head.params
                .contains(&(b"REQUEST_METHOD".to_vec(), b"POST".to_vec()))
        );
        let chunked = Request::new(vec![(b"REQUEST_METHOD".to_vec(), b"POST".to_vec())]);
        let refused = ScgiWire::new(ScriptName::AsReceived, 4096).begin(&chunked, false, &mut out);
        assert_eq!(refused.map_err(|r| r.0), Err(411));
    }

    #[test]
    fn answer_until_close() {
        let mut w = ScgiWire::new(ScriptName::AsReceived, 4096);
        assert_eq!(
            w.decode(b"Status: 201 Created\r\nContent-Type: a/b\r\n", false)
                .unwrap()
                .1,
            Event::NeedMore
        );
        let (used, event) = w.decode(b"\r\nhi", false).unwrap();
        let Event::Head(head, rest) = event else {
            panic!()
        };
        assert_eq!((used, head.status(), rest.as_slice()), (4, 201, &b"hi"[..]));
        assert_eq!(w.decode(b"more", false).unwrap(), (4, Event::Body(0..4)));
        assert_eq!(w.decode(b"", true).unwrap(), (0, Event::End));
        assert!(
            ScgiWire::new(ScriptName::AsReceived, 4096)
                .decode(b"garbage\r\n\r\n", false)
                .is_err()
        );
    }
}
