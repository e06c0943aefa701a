//! `kind = "fastcgi"`: one request relayed to a FastCGI program (php-cgi,
//! flup, libfcgi), sans-I/O, through the one FastCGI codec
//! (`front::fastcgi::codec`). The driver and the process are `back::server`'s.
//!
//! Owns: re-framing the request (BEGIN_REQUEST as a responder, the params
//! with `params = {...}` set or replaced (and PATH_TRANSLATED left out when
//! they set SCRIPT_FILENAME), STDIN records as the body
//! arrives) and the answer (STDOUT records: a CGI response head, parsed by
//! [`CgiHeadParser`], then body bytes passed on as each record comes;
//! STDERR records as log lines; END_REQUEST ends it).
//! Must not: read or write sockets, or buffer a body.

use super::server::{Event, Refusal, Wire};
use crate::front::fastcgi::codec::{self, Decoded, RecordType, Role};
use crate::request::{self, CgiHeadParser, HeadProgress, Request, ScriptName};

/// The request id of our one request per connection.
const REQUEST_ID: u16 = 1;

pub struct FastcgiWire {
    params: Vec<(String, String)>,
    script_name: ScriptName,
    head: Option<CgiHeadParser>,
}

impl FastcgiWire {
    pub fn new(
        params: Vec<(String, String)>,
        script_name: ScriptName,
        max_head: usize,
    ) -> FastcgiWire {
        FastcgiWire {
            params,
            script_name,
            head: Some(CgiHeadParser::new(max_head)),
        }
    }
}

impl Wire for FastcgiWire {
    fn begin(
        &mut self,
        req: &Request,
        _body_empty: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        codec::encode_begin_request(out, REQUEST_ID, Role::Responder, false);
        let mut pairs = Vec::new();
        let params = &self.params;
        let set = |name: &[u8]| params.iter().any(|(n, _)| n.as_bytes() == name);
        // A SCRIPT_FILENAME of ours (php-cgi's front controller) makes the web
        // server's PATH_TRANSLATED (its file for PATH_INFO) wrong: php-cgi
        // would look for that file ("No input file specified.").
        let drop_translated = set(b"SCRIPT_FILENAME") && !set(b"PATH_TRANSLATED");
        request::for_each_application_meta_variable(req, &self.script_name, |n, v| {
            let stale = drop_translated && n == b"PATH_TRANSLATED";
            if !set(n) && !stale {
                codec::encode_name_value(&mut pairs, n, v);
            }
        });
        for (name, value) in params {
            codec::encode_name_value(&mut pairs, name.as_bytes(), value.as_bytes());
        }
        codec::encode_stream(out, RecordType::Params, REQUEST_ID, &pairs);
        codec::encode_record(out, RecordType::Params, REQUEST_ID, &[]);
        Ok(())
    }

    fn body(&mut self, data: &[u8], out: &mut Vec<u8>) {
        codec::encode_stream(out, RecordType::Stdin, REQUEST_ID, data);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        codec::encode_record(out, RecordType::Stdin, REQUEST_ID, &[]);
    }

    fn decode(&mut self, input: &[u8], _eof: bool) -> Result<(usize, Event), String> {
        let (record, used) = match codec::decode_record(input) {
            Ok(Decoded::Complete(record, used)) => (record, used),
            Ok(Decoded::Partial) => return Ok((0, Event::NeedMore)),
            Err(e) => return Err(format!("it broke the FastCGI protocol: {e}")),
        };
        let content = codec::HEADER_LEN..codec::HEADER_LEN + record.content.len();
        match record.rtype {
            RecordType::Stdout => {
                let Some(parser) = &mut self.head else {
                    return Ok((used, Event::Body(content)));
                };
                match parser.push(record.content) {
                    Ok(HeadProgress::Partial) => Ok((used, Event::NeedMore)),
                    Ok(HeadProgress::Complete(head, rest)) => {
                        self.head = None;
                        Ok((used, Event::Head(head, rest)))
                    }
                    Err(e) => Err(format!("invalid response head: {e}")),
                }
            }
            RecordType::Stderr => Ok((used, Event::Log(content))),
            RecordType::EndRequest if self.head.is_some() => {
                Err("it ended the request without a response head".into())
            }
            RecordType::EndRequest => Ok((used, Event::End)),
            // GET_VALUES_RESULT, UNKNOWN_TYPE: nothing we asked for.
            _ => Ok((used, Event::NeedMore)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_records_and_params_replaced() {
        let mut w = FastcgiWire::new(
            vec![("SCRIPT_FILENAME".into(), "/app/index.php".into())],
            ScriptName::AsReceived,
            4096,
        );
        let req = Request::new(vec![
            (b"SCRIPT_FILENAME".to_vec(), b"/web/mysite.fcgi".to_vec()),
            (b"REQUEST_METHOD".to_vec(), b"POST".to_vec()),
            (b"HTTP_PROXY".to_vec(), b"evil".to_vec()),
            (b"PATH_TRANSLATED".to_vec(), b"/web/x.php".to_vec()),
        ]);
        let mut out = Vec::new();
        w.begin(&req, false, &mut out).unwrap();
        w.body(b"abc", &mut out);
        w.end(&mut out);
        let mut types = Vec::new();
        let mut params = Vec::new();
        let mut stdin = Vec::new();
        let mut at = 0;
        while let Ok(Decoded::Complete(r, used)) = codec::decode_record(&out[at..]) {
            types.push(r.rtype);
            match r.rtype {
                RecordType::Params => params.extend_from_slice(r.content),
                RecordType::Stdin => stdin.extend_from_slice(r.content),
                _ => {}
            }
            at += used;
        }
        assert_eq!(at, out.len());
        use RecordType::*;
        assert_eq!(types, [BeginRequest, Params, Params, Stdin, Stdin]);
        assert_eq!(stdin, b"abc");
        let pairs = codec::decode_name_values(&params, 100).unwrap();
        assert_eq!(
            pairs,
            [
                (&b"REQUEST_METHOD"[..], &b"POST"[..]),
                (b"SCRIPT_NAME", b""),
                (b"PATH_INFO", b""),
                (b"SCRIPT_FILENAME", b"/app/index.php"),
            ]
        );
    }

    #[test]
    fn answer_streamed_record_by_record() {
        let mut input = Vec::new();
        codec::encode_record(
            &mut input,
            RecordType::Stdout,
            1,
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n",
        );
        codec::encode_record(&mut input, RecordType::Stderr, 1, b"warning\n");
        codec::encode_record(&mut input, RecordType::Stdout, 1, b"\r\nbody1");
        codec::encode_record(&mut input, RecordType::Stdout, 1, b"body2");
        codec::encode_end_request(&mut input, 1, 0, codec::ProtocolStatus::RequestComplete);
        let mut w = FastcgiWire::new(Vec::new(), ScriptName::AsReceived, 4096);
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let (used, event) = w.decode(&input[at..], false).unwrap();
            let text = match &event {
                Event::Head(h, rest) => {
                    format!("head {} {}", h.status(), String::from_utf8_lossy(rest))
                }
                Event::Body(r) => {
                    format!("body {}", String::from_utf8_lossy(&input[at..][r.clone()]))
                }
                Event::Log(r) => {
                    format!("log {}", String::from_utf8_lossy(&input[at..][r.clone()]))
                }
                Event::End => "end".into(),
                Event::NeedMore => "more".into(),
            };
            seen.push(text);
            at += used;
            if event == Event::End {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                "more",
                "log warning\n",
                "head 404 body1",
                "body body2",
                "end"
            ]
        );
        assert!(
            FastcgiWire::new(Vec::new(), ScriptName::AsReceived, 4096)
                .decode(b"HTTP/1.1 200", false)
                .is_err()
        );
    }
}
