//! The output queue every front's connection driver writes through: bytes
//! are appended at the back and written to a non-blocking socket as the web
//! server takes them.
//!
//! Owns: queued response bytes and the write loop that never blocks.
//! Must not: encode any protocol (fronts append already-encoded bytes) or wait.

use std::io::{self, Write};

/// Response bytes not yet taken by the peer.
#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    start: usize,
}

impl OutQueue {
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Where to append encoded output.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Write queued bytes until all are written or `w` would block.
    pub fn flush_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while self.start < self.buf.len() {
            match w.write(&self.buf[self.start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(3);
            self.taken.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut q = OutQueue::new();
        q.tail().extend_from_slice(b"hello world");
        let mut w = Narrow {
            taken: Vec::new(),
            room: 7,
        };
        q.flush_to(&mut w).unwrap();
        assert_eq!(q.pending(), 4);
        q.tail().extend_from_slice(b"!");
        w.room = 100;
        q.flush_to(&mut w).unwrap();
        assert_eq!(q.pending(), 0);
        assert_eq!(w.taken, b"hello world!");
    }
}
