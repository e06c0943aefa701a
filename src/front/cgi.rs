//! The CGI front: one request, served once, when a web server runs us as a
//! plain CGI program (no FastCGI socket on fd 0).
//!
//! Owns: the environment as the request's meta-variables, stdin as its body
//! (CONTENT_LENGTH bytes), stdout as its CGI response.
//! Must not: loop or stay alive after the response.

use std::io::{self, Write};
use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;
use std::os::unix::ffi::OsStrExt;

use crate::back::{Back, Context};
use crate::request::{Exchange, InputEvent, Request, ResponseHead};
use crate::sys::{self, SignalPipe};

struct CgiExchange {
    request: Request,
    body: Vec<u8>,
    /// Body bytes still to read from stdin.
    remaining: usize,
    head_sent: bool,
}

/// Serve the one request of a CGI invocation.
pub fn serve_once(back: &mut dyn Back, signals: &SignalPipe) {
    let params: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let request = Request::new(params);
    let remaining = request
        .get("CONTENT_LENGTH")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut exchange = CgiExchange {
        request,
        body: Vec::new(),
        remaining,
        head_sent: false,
    };
    let mut ctx = Context {
        signals,
        stop_deadline: None,
    };
    back.serve(&mut exchange, &mut ctx);
    let _ = io::stdout().flush();
    back.shutdown();
}

impl Exchange for CgiExchange {
    fn request(&self) -> &Request {
        &self.request
    }

    fn poll_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        (self.remaining > 0 && self.body.len() < 256 * 1024)
            .then(|| (sys::stdin_fd(), PollFlags::POLLIN))
    }

    fn input_pending(&self) -> bool {
        false
    }

    fn on_ready(&mut self) -> io::Result<InputEvent> {
        let mut buf = vec![0u8; self.remaining.min(65536)];
        let n = nix::unistd::read(sys::stdin_fd(), &mut buf)?;
        if n == 0 {
            self.remaining = 0;
            return Ok(InputEvent::Progress);
        }
        self.remaining -= n;
        self.body.extend_from_slice(&buf[..n]);
        Ok(InputEvent::Progress)
    }

    fn body(&self) -> &[u8] {
        &self.body
    }

    fn consume_body(&mut self, n: usize) {
        self.body.drain(..n.min(self.body.len()));
    }

    fn body_finished(&self) -> bool {
        self.remaining == 0
    }

    fn send_head(&mut self, head: &ResponseHead) -> io::Result<()> {
        let mut text = Vec::new();
        head.write_cgi(&mut text);
        self.head_sent = true;
        self.send_body(&text)
    }

    fn send_body(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }

    fn output_backlog(&self) -> usize {
        0 // written at once: a CGI web server reads our output as we write it
    }

    fn head_sent(&self) -> bool {
        self.head_sent
    }
}
