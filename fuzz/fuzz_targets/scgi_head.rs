//! Any bytes an SCGI peer could send: decoding the head never panics, never
//! uses more bytes than given, respects the caps, and a prefix of a complete
//! head is never itself complete with a different result.
#![no_main]

use fcgi_shim::front::scgi::{Decoded, decode_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Complete(head, used)) = decode_head(data, 4096, 64) {
        assert!(used <= data.len() && used <= 4096 + 10);
        assert!(head.params.len() <= 64);
        assert_eq!(head.params[0].0, b"CONTENT_LENGTH");
        assert_eq!(
            decode_head(&data[..used - 1], 4096, 64),
            Ok(Decoded::Partial),
            "one byte short of a complete head"
        );
    }
});
