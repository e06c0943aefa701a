//! Any PARAMS stream: decoding never panics, never exceeds the cap, and what
//! it decodes encodes back to a stream that decodes the same.
#![no_main]

use fcgi_shim::front::fastcgi::codec::{decode_name_values, encode_name_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode_name_values(data, 64) {
        assert!(pairs.len() <= 64);
        let mut again = Vec::new();
        for (name, value) in &pairs {
            encode_name_value(&mut again, name, value);
        }
        assert_eq!(decode_name_values(&again, 64).as_ref(), Ok(&pairs));
    }
});
