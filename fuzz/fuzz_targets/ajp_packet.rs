//! Any bytes an AJP13 peer could send: framing and decoding never panic,
//! never use more bytes than given, respect the caps; a complete packet one
//! byte short is incomplete; a forward request never yields a meta-variable
//! outside the fixed set (no arbitrary names from attributes).
#![no_main]

use fcgi_shim::config::Limits;
use fcgi_shim::front::ajp::{Message, decode_body_chunk, decode_message, decode_packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_params: 64,
        max_params_bytes: 4096,
        ..Limits::default()
    };
    // The input as a payload (the framing already done), then as a stream.
    let _ = decode_body_chunk(data);
    check_message(data, &limits);
    if let Ok(Some((payload, used))) = decode_packet(data) {
        assert!(used <= data.len() && used == payload.len() + 4);
        assert_eq!(decode_packet(&data[..used - 1]), Ok(None));
        check_message(payload, &limits);
    }
});

fn check_message(payload: &[u8], limits: &Limits) {
    if let Ok(Message::Forward(f)) = decode_message(payload, limits) {
        let bytes: usize = f.params.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(bytes <= limits.max_params_bytes);
        for (name, _) in &f.params {
            assert!(
                name.starts_with(b"HTTP_")
                    || [
                        &b"GATEWAY_INTERFACE"[..],
                        b"REQUEST_METHOD",
                        b"SERVER_PROTOCOL",
                        b"REQUEST_URI",
                        b"QUERY_STRING",
                        b"SERVER_PORT",
                        b"REQUEST_SCHEME",
                        b"HTTPS",
                        b"REMOTE_ADDR",
                        b"REMOTE_HOST",
                        b"SERVER_NAME",
                        b"CONTENT_TYPE",
                        b"CONTENT_LENGTH",
                        b"REMOTE_USER",
                        b"AUTH_TYPE",
                        b"SSL_CLIENT_CERT",
                        b"SSL_CIPHER",
                        b"SSL_SESSION_ID",
                        b"SSL_CIPHER_USEKEYSIZE",
                        b"REMOTE_PORT",
                        b"SERVER_ADDR",
                    ]
                    .contains(&name.as_slice()),
                "unexpected meta-variable {name:?}"
            );
        }
    }
}
