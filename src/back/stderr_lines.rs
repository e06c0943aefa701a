//! An application's stderr as log lines (cgi programs, the wsgi worker).
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
}

impl StderrLines {
    /// Keep the last `keep` lines for [`StderrLines::summary`].
    pub fn new(prefix: String, keep: usize) -> StderrLines {
        StderrLines {
            prefix,
            partial: Vec::new(),
            tail: VecDeque::new(),
            keep,
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

    /// "stderr: last | lines" or "no stderr output", for a failure's log line.
    pub fn summary(&self) -> String {
        if self.tail.is_empty() {
            return "no stderr output".to_string();
        }
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        format!("stderr: {}", tail.join(" | "))
    }

    fn log_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        log::warn!("{} stderr: {text}", self.prefix);
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
    }
}
