//! Any bytes a web server could send: frame records back to back, then decode
//! each record's content as a BEGIN_REQUEST body and as name-value pairs.
#![no_main]

use fcgi_shim::front::fastcgi::codec::{
    Decoded, decode_begin_request, decode_name_values, decode_record,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Decoded::Complete(record, consumed)) = decode_record(rest) {
        assert!(consumed >= 8 && consumed <= rest.len());
        let _ = decode_begin_request(record.content);
        let _ = decode_name_values(record.content, 1000);
        rest = &rest[consumed..];
    }
});
