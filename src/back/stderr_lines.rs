//! An application's stderr as log lines (cgi programs, the wsgi worker), or
//! a server program's stdout and stderr together (its "output").
//!
//! Owns: splitting what arrives into lines, logging each with the back's
//! prefix, and keeping the last few for the message when the application
//! fails. Must not: read any fd itself; the back reads and pushes bytes.

use std::collections::VecDeque;

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

pub struct StderrLines {
    /// "cgi: /path/prog" or "wsgi: module:app", before " stderr: ...".
    prefix: String,
    partial: Vec<u8>,
    tail: VecDeque<String>,
    keep: usize,
    /// "stderr", or "output" for a server program's stdout and stderr.
    stream: &'static str,
    /// Warn for what a program says on stderr; info for a server's output
    /// (its access log and start-up banner are not warnings).
    level: log::Level,
}

impl StderrLines {
    /// Keep the last `keep` lines for [`StderrLines::summary`].
    pub fn new(prefix: String, keep: usize) -> StderrLines {
        StderrLines {
            prefix,
            partial: Vec::new(),
            tail: VecDeque::new(),
            keep,
            stream: "stderr",
            level: log::Level::Warn,
        }
    }

    /// A server program's stdout and stderr: "output" lines, logged as info.
    pub fn for_server_output(prefix: String, keep: usize) -> StderrLines {
        StderrLines {
            stream: "output",
            level: log::Level::Info,
            ..StderrLines::new(prefix, keep)
        }
    }

    /// Log the complete lines in `data`; an unfinished line waits for more.
    pub fn push(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.log_line(&line[..line.len() - 1]);
        }
        if self.partial.len() > MAX_LINE {
            self.flush();
        }
    }

    /// Log what is left of an unfinished line.
    pub fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.log_line(&line);
        }
    }

    /// Forget everything (a new process).
    pub fn clear(&mut self) {
        self.partial.clear();
        self.tail.clear();
    }

    /// "stderr: last | lines" or "no stderr output" ("output: ..." for a
    /// server program), for a failure's log line.
    pub fn summary(&self) -> String {
        if self.tail.is_empty() {
            return match self.stream {
                "stderr" => "no stderr output".to_string(),
                other => format!("no {other}"),
            };
        }
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        format!("{}: {}", self.stream, tail.join(" | "))
    }

    fn log_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        log::log!(self.level, "{} {}: {text}", self.prefix, self.stream);
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pushes_and_the_tail() {
        let mut s = StderrLines::new("t".into(), 2);
        assert_eq!(s.summary(), "no stderr output");
        s.push(b"one\ntw");
        s.push(b"o\r\nthree");
        assert_eq!(s.summary(), "stderr: one | two");
        s.flush();
        assert_eq!(s.summary(), "stderr: two | three");
        s.push(&[b'x'; MAX_LINE + 1]);
        assert!(s.summary().ends_with(&"x".repeat(10)));
        s.clear();
        assert_eq!(s.summary(), "no stderr output");
        let mut s = StderrLines::for_server_output("t".into(), 2);
        assert_eq!(s.summary(), "no output");
        s.push(b"listening\n");
        assert_eq!(s.summary(), "output: listening");
    }
}
