//! FastCGI 1.0 wire format, sans-I/O: bytes to records and records to bytes.
//!
//! Owns: record framing (header, content, padding), BEGIN_REQUEST / END_REQUEST
//! bodies, name-value pairs (1- and 4-byte lengths), GET_VALUES answers and
//! UNKNOWN_TYPE replies. Must not: read or write sockets, allocate without a cap
//! chosen by the caller, or panic on any input.
//!
//! All input is read through the private [`Reader`], which hands out
//! bounds-checked sub-slices and never indexes; all output is appended to a
//! caller-owned `Vec<u8>`.
#![forbid(unsafe_code)]

use std::fmt;

/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content a single record can carry.
pub const MAX_CONTENT_LEN: usize = 65535;
/// The only protocol version (FCGI_VERSION_1).
pub const VERSION_1: u8 = 1;

/// Largest length a name-value pair can declare (31 bits, spec 3.4).
const MAX_NAME_VALUE_LEN: usize = 0x7fff_ffff;
/// Cap on the names in one FCGI_GET_VALUES query (the spec defines three).
const GET_VALUES_MAX_NAMES: usize = 64;
/// `what` of [`CodecError::BadLength`] for FCGI_BEGIN_REQUEST.
const BEGIN_REQUEST_BODY: &str = "FCGI_BEGIN_REQUEST body";
/// Every fixed-size body in FastCGI 1.0 (BEGIN_REQUEST, END_REQUEST,
/// UNKNOWN_TYPE) is eight bytes long.
const FIXED_BODY_LEN: usize = 8;
/// `what`s of [`CodecError::Truncated`] for the three parts of a pair.
const PAIR_LENGTH: &str = "name-value pair length";
const PAIR_NAME: &str = "name-value pair name";
const PAIR_VALUE: &str = "name-value pair value";

/// The only flag of FCGI_BEGIN_REQUEST (spec 5.1).
const FCGI_KEEP_CONN: u8 = 1;
/// Variable names of FCGI_GET_VALUES (spec 4.1).
const FCGI_MAX_CONNS: &[u8] = b"FCGI_MAX_CONNS";
const FCGI_MAX_REQS: &[u8] = b"FCGI_MAX_REQS";
const FCGI_MPXS_CONNS: &[u8] = b"FCGI_MPXS_CONNS";

/// Record types (spec section 8). Unknown values are kept as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    Other(u8),
}

impl RecordType {
    /// Map a header's type byte; 1..=11 are the spec's types, anything else is `Other`.
    pub fn from_u8(v: u8) -> RecordType {
        match v {
            1 => RecordType::BeginRequest,
            2 => RecordType::AbortRequest,
            3 => RecordType::EndRequest,
            4 => RecordType::Params,
            5 => RecordType::Stdin,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            8 => RecordType::Data,
            9 => RecordType::GetValues,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            other => RecordType::Other(other),
        }
    }
    /// The type byte written in a header. `Other(n)` gives `n` back unchanged,
    /// so `Other(1)` encodes like `BeginRequest`.
    pub fn as_u8(self) -> u8 {
        match self {
            RecordType::BeginRequest => 1,
            RecordType::AbortRequest => 2,
            RecordType::EndRequest => 3,
            RecordType::Params => 4,
            RecordType::Stdin => 5,
            RecordType::Stdout => 6,
            RecordType::Stderr => 7,
            RecordType::Data => 8,
            RecordType::GetValues => 9,
            RecordType::GetValuesResult => 10,
            RecordType::UnknownType => 11,
            RecordType::Other(other) => other,
        }
    }
    /// Management records use request id 0 (spec 3.3): GET_VALUES, UNKNOWN_TYPE, unknown types.
    ///
    /// The answer depends on `request_id` alone: the spec classifies a record
    /// as management by its null request id, whatever its type.
    pub fn is_management(self, request_id: u16) -> bool {
        request_id == 0
    }
}

/// One decoded record, borrowing its content from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub rtype: RecordType,
    pub request_id: u16,
    pub content: &'a [u8],
}

/// Result of decoding from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole record; `usize` is the number of bytes consumed, padding included.
    Complete(Record<'a>, usize),
    /// Not enough bytes yet for a whole record (header, content or padding).
    Partial,
}

/// Roles (spec 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Responder,
    Authorizer,
    Filter,
    Other(u16),
}

/// The body of FCGI_BEGIN_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: Role,
    /// FCGI_KEEP_CONN: the web server keeps the connection open after the request.
    pub keep_conn: bool,
}

/// protocolStatus of FCGI_END_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
}

/// What this application answers to FCGI_GET_VALUES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerValues {
    pub max_conns: u32,
    pub max_reqs: u32,
    pub mpxs_conns: bool,
}

/// Malformed input. Every variant means: close this connection and log it.
#[derive(Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The header's version byte is not 1. Also what a peer speaking another
    /// protocol (HTTP, TLS) produces: its first byte is taken as the version.
    BadVersion(u8),
    /// A fixed-size body (BEGIN_REQUEST) had the wrong length. `what` names the
    /// body, `len` is the length received; the expected length is 8, the size of
    /// every fixed body in FastCGI 1.0.
    BadLength { what: &'static str, len: usize },
    /// A name-value pair ran past the end of its buffer. `what` says which part
    /// was cut short: "name-value pair length", "name-value pair name" or
    /// "name-value pair value".
    Truncated { what: &'static str },
    /// More name-value pairs than the cap; `limit` is the cap.
    TooManyPairs { limit: usize },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadVersion(v) => {
                write!(f, "unsupported FastCGI version {v} (expected {VERSION_1})")
            }
            CodecError::BadLength { what, len } => {
                let unit = if *len == 1 { "byte" } else { "bytes" };
                write!(f, "{what} has {len} {unit} (expected {FIXED_BODY_LEN})")
            }
            CodecError::Truncated { what } => write!(f, "truncated {what}"),
            CodecError::TooManyPairs { limit } => {
                write!(f, "more than {limit} name-value pairs")
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// Bounds-checked cursor over input bytes. Every read returns `None` instead
/// of running past the end, and a failed read consumes nothing.
struct Reader<'a> {
    buf: &'a [u8],
    used: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, used: 0 }
    }

    /// The next `n` bytes, or `None` if fewer are left.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.used.checked_add(n)?;
        let bytes = self.buf.get(self.used..end)?;
        self.used = end;
        Some(bytes)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// The next byte, left unread.
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.used).copied()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// True while unread bytes remain.
    fn any_left(&self) -> bool {
        self.used < self.buf.len()
    }

    /// Bytes read so far.
    fn used(&self) -> usize {
        self.used
    }
}

/// The seven header bytes after the version: type, request id, content
/// length, padding length, reserved.
struct HeaderRest {
    rtype: RecordType,
    request_id: u16,
    content_len: usize,
    padding_len: usize,
}

fn read_header_rest(r: &mut Reader<'_>) -> Option<HeaderRest> {
    let rtype = RecordType::from_u8(r.u8()?);
    let request_id = r.u16()?;
    let content_len = usize::from(r.u16()?);
    let padding_len = usize::from(r.u8()?);
    let _reserved = r.u8()?;
    Some(HeaderRest {
        rtype,
        request_id,
        content_len,
        padding_len,
    })
}

/// Decode one record from the front of `buf`.
///
/// Returns `Partial` until the header, the content and the padding are all
/// present; `consumed` counts all three. The version byte is checked as soon
/// as it arrives, so a one-byte prefix that is not 1 is already `BadVersion`:
/// a peer speaking HTTP or TLS is refused before the rest of a header.
///
/// DoS note: a record is at most 8 + 65535 + 255 bytes, so a caller never
/// needs to buffer more than that to make progress.
pub fn decode_record(buf: &[u8]) -> Result<Decoded<'_>, CodecError> {
    let mut r = Reader::new(buf);
    let Some(version) = r.u8() else {
        return Ok(Decoded::Partial);
    };
    if version != VERSION_1 {
        return Err(CodecError::BadVersion(version));
    }
    let Some(header) = read_header_rest(&mut r) else {
        return Ok(Decoded::Partial);
    };
    let Some(content) = r.take(header.content_len) else {
        return Ok(Decoded::Partial);
    };
    if r.take(header.padding_len).is_none() {
        return Ok(Decoded::Partial);
    }
    let record = Record {
        rtype: header.rtype,
        request_id: header.request_id,
        content,
    };
    Ok(Decoded::Complete(record, r.used()))
}

/// Decode the 8-byte body of FCGI_BEGIN_REQUEST.
///
/// Bits of `flags` other than FCGI_KEEP_CONN and the five reserved bytes are
/// ignored.
pub fn decode_begin_request(content: &[u8]) -> Result<BeginRequest, CodecError> {
    let bad_length = CodecError::BadLength {
        what: BEGIN_REQUEST_BODY,
        len: content.len(),
    };
    if content.len() != FIXED_BODY_LEN {
        return Err(bad_length);
    }
    let mut r = Reader::new(content);
    let (Some(role), Some(flags)) = (r.u16(), r.u8()) else {
        return Err(bad_length);
    };
    let role = match role {
        1 => Role::Responder,
        2 => Role::Authorizer,
        3 => Role::Filter,
        other => Role::Other(other),
    };
    Ok(BeginRequest {
        role,
        keep_conn: flags & FCGI_KEEP_CONN != 0,
    })
}

/// Read one name-value length: one byte if its high bit is clear, else four
/// bytes big-endian with the high bit masked off (spec 3.4).
fn read_name_value_len(r: &mut Reader<'_>) -> Result<usize, CodecError> {
    let len = match r.peek() {
        Some(first) if first & 0x80 == 0 => r.u8().map(u32::from),
        Some(_) => r.u32().map(|len| len & 0x7fff_ffff),
        None => None,
    };
    let len = len.ok_or(CodecError::Truncated { what: PAIR_LENGTH })?;
    // Where usize is narrower than 32 bits, a length that does not fit cannot
    // be present in the buffer either: usize::MAX makes the take fail.
    Ok(usize::try_from(len).unwrap_or(usize::MAX))
}

/// Decode a complete name-value stream (e.g. all PARAMS content concatenated).
/// Every byte must belong to a pair; at most `max_pairs` pairs.
/// DoS note: the caller caps `buf.len()` before buffering it.
///
/// Pairs borrow from `buf`; the only allocation is the returned `Vec`, which
/// never holds more than `max_pairs` entries (the cap is checked before each
/// pair is read). A declared length larger than what is left is `Truncated`,
/// so a forged huge length costs nothing.
#[allow(
    clippy::type_complexity,
    reason = "the signature is the module's agreed API; a pair is plainly (name, value)"
)]
pub fn decode_name_values(buf: &[u8], max_pairs: usize) -> Result<Vec<(&[u8], &[u8])>, CodecError> {
    let mut r = Reader::new(buf);
    let mut pairs = Vec::new();
    while r.any_left() {
        if pairs.len() >= max_pairs {
            return Err(CodecError::TooManyPairs { limit: max_pairs });
        }
        let name_len = read_name_value_len(&mut r)?;
        let value_len = read_name_value_len(&mut r)?;
        let name = r
            .take(name_len)
            .ok_or(CodecError::Truncated { what: PAIR_NAME })?;
        let value = r
            .take(value_len)
            .ok_or(CodecError::Truncated { what: PAIR_VALUE })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Append one record: header, `content` (at most MAX_CONTENT_LEN bytes), padding to 8.
///
/// Content longer than MAX_CONTENT_LEN is a caller bug (use [`encode_stream`]):
/// debug builds panic on it; release builds write only the first
/// MAX_CONTENT_LEN bytes, so the output is always a well-formed record.
pub fn encode_record(out: &mut Vec<u8>, rtype: RecordType, request_id: u16, content: &[u8]) {
    debug_assert!(
        content.len() <= MAX_CONTENT_LEN,
        "encode_record: {} bytes of content (max {MAX_CONTENT_LEN})",
        content.len()
    );
    let content = content.get(..MAX_CONTENT_LEN).unwrap_or(content);
    let content_len = u16::try_from(content.len()).unwrap_or(u16::MAX);
    // Bytes to the next multiple of 8: always 0..=7.
    let padding_len = content_len.wrapping_neg() % 8;
    out.reserve(HEADER_LEN + content.len() + usize::from(padding_len));
    out.extend_from_slice(&record_header(
        rtype,
        request_id,
        content_len,
        padding_len as u8,
    ));
    out.extend_from_slice(content);
    out.resize(out.len() + usize::from(padding_len), 0);
}

/// A record's header: its content and padding follow it.
pub fn record_header(
    rtype: RecordType,
    request_id: u16,
    content_len: u16,
    padding_len: u8,
) -> [u8; HEADER_LEN] {
    let [id1, id0] = request_id.to_be_bytes();
    let [len1, len0] = content_len.to_be_bytes();
    [
        VERSION_1,
        rtype.as_u8(),
        id1,
        id0,
        len1,
        len0,
        padding_len,
        0, // reserved
    ]
}

/// Append `data` as as many records of `rtype` as needed (each at most MAX_CONTENT_LEN).
/// Empty `data` appends nothing: the stream terminator is an explicit `encode_record(.., &[])`.
pub fn encode_stream(out: &mut Vec<u8>, rtype: RecordType, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        encode_record(out, rtype, request_id, chunk);
    }
}

/// Append FCGI_BEGIN_REQUEST (used by clients and tests).
pub fn encode_begin_request(out: &mut Vec<u8>, request_id: u16, role: Role, keep_conn: bool) {
    let role = match role {
        Role::Responder => 1,
        Role::Authorizer => 2,
        Role::Filter => 3,
        Role::Other(other) => other,
    };
    let [role_b1, role_b0] = role.to_be_bytes();
    let flags = if keep_conn { FCGI_KEEP_CONN } else { 0 };
    let body = [role_b1, role_b0, flags, 0, 0, 0, 0, 0];
    encode_record(out, RecordType::BeginRequest, request_id, &body);
}

/// Append FCGI_END_REQUEST.
pub fn encode_end_request(
    out: &mut Vec<u8>,
    request_id: u16,
    app_status: u32,
    status: ProtocolStatus,
) {
    let status = match status {
        ProtocolStatus::RequestComplete => 0,
        ProtocolStatus::CantMpxConn => 1,
        ProtocolStatus::Overloaded => 2,
        ProtocolStatus::UnknownRole => 3,
    };
    let [s3, s2, s1, s0] = app_status.to_be_bytes();
    let body = [s3, s2, s1, s0, status, 0, 0, 0];
    encode_record(out, RecordType::EndRequest, request_id, &body);
}

/// Append FCGI_UNKNOWN_TYPE for a management record of type `unknown`.
pub fn encode_unknown_type(out: &mut Vec<u8>, unknown: u8) {
    let body = [unknown, 0, 0, 0, 0, 0, 0, 0];
    encode_record(out, RecordType::UnknownType, 0, &body);
}

/// Append one name-value length: one byte below 128, else four with the high bit set.
fn encode_name_value_len(out: &mut Vec<u8>, len: usize) {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let long = u32::try_from(len).unwrap_or(u32::MAX) | 0x8000_0000;
            out.extend_from_slice(&long.to_be_bytes());
        }
    }
}

/// Append one name-value pair, choosing 1- or 4-byte lengths.
///
/// A name or value longer than 2^31 - 1 bytes cannot be encoded (spec 3.4); it
/// is a caller bug: debug builds panic, release builds write only the first
/// 2^31 - 1 bytes.
pub fn encode_name_value(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    debug_assert!(name.len() <= MAX_NAME_VALUE_LEN && value.len() <= MAX_NAME_VALUE_LEN);
    let name = name.get(..MAX_NAME_VALUE_LEN).unwrap_or(name);
    let value = value.get(..MAX_NAME_VALUE_LEN).unwrap_or(value);
    encode_name_value_len(out, name.len());
    encode_name_value_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Answer a GET_VALUES query: append one GET_VALUES_RESULT record holding the
/// known names that were asked for (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS);
/// unknown names are left out. `query` is the GET_VALUES record's content.
///
/// Names are answered in the order asked, each at most once; values in the
/// query (empty per spec 4.1) are ignored. A query of more than 64 pairs is
/// `TooManyPairs`; a malformed one is `Truncated`. On error `out` is unchanged.
pub fn encode_get_values_result(
    out: &mut Vec<u8>,
    query: &[u8],
    values: &ServerValues,
) -> Result<(), CodecError> {
    let names = decode_name_values(query, GET_VALUES_MAX_NAMES)?;
    let mut answered = [false; 3];
    let mut content = Vec::new();
    for (name, _ignored_value) in names {
        let (slot, value) = match name {
            FCGI_MAX_CONNS => (0, values.max_conns.to_string()),
            FCGI_MAX_REQS => (1, values.max_reqs.to_string()),
            FCGI_MPXS_CONNS => (2, u8::from(values.mpxs_conns).to_string()),
            _ => continue,
        };
        let Some(seen) = answered.get_mut(slot) else {
            continue;
        };
        if *seen {
            continue;
        }
        *seen = true;
        let before = content.len();
        encode_name_value(&mut content, name, value.as_bytes());
        // Three short pairs cannot reach this; keep the record well-formed anyway.
        if content.len() > MAX_CONTENT_LEN {
            content.truncate(before);
            break;
        }
    }
    encode_record(out, RecordType::GetValuesResult, 0, &content);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type the spec defines plus a few it does not.
    const ALL_TYPES: [(u8, RecordType); 14] = [
        (1, RecordType::BeginRequest),
        (2, RecordType::AbortRequest),
        (3, RecordType::EndRequest),
        (4, RecordType::Params),
        (5, RecordType::Stdin),
        (6, RecordType::Stdout),
        (7, RecordType::Stderr),
        (8, RecordType::Data),
        (9, RecordType::GetValues),
        (10, RecordType::GetValuesResult),
        (11, RecordType::UnknownType),
        (0, RecordType::Other(0)),
        (12, RecordType::Other(12)),
        (255, RecordType::Other(255)),
    ];

    const VALUES: ServerValues = ServerValues {
        max_conns: 10,
        max_reqs: 50,
        mpxs_conns: false,
    };

    /// Bytes that differ from position to position, so a shifted slice shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>()
    }

    fn record(rtype: RecordType, request_id: u16, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, rtype, request_id, content);
        out
    }

    fn complete(buf: &[u8]) -> (Record<'_>, usize) {
        match decode_record(buf) {
            Ok(Decoded::Complete(record, consumed)) => (record, consumed),
            other => panic!("expected a complete record, got {other:?}"),
        }
    }

    fn name_values(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in pairs {
            encode_name_value(&mut out, name, value);
        }
        out
    }

    #[test]
    fn record_type_codes() {
        for (code, rtype) in ALL_TYPES {
            assert_eq!(RecordType::from_u8(code), rtype, "from_u8({code})");
            assert_eq!(rtype.as_u8(), code, "{rtype:?}.as_u8()");
        }
        for code in 0..=255u8 {
            assert_eq!(RecordType::from_u8(code).as_u8(), code);
        }
        for code in 12..=255u8 {
            assert_eq!(RecordType::from_u8(code), RecordType::Other(code));
        }
    }

    #[test]
    fn management_is_request_id_zero() {
        let cases = [
            (RecordType::GetValues, 0, true),
            (RecordType::UnknownType, 0, true),
            (RecordType::Other(200), 0, true),
            (RecordType::BeginRequest, 0, true),
            (RecordType::GetValues, 1, false),
            (RecordType::Stdin, 1, false),
            (RecordType::Other(200), 65535, false),
        ];
        for (rtype, id, expected) in cases {
            assert_eq!(rtype.is_management(id), expected, "{rtype:?} id {id}");
        }
    }

    #[test]
    fn padding_rounds_record_to_multiple_of_eight() {
        // (content length, padding length)
        let cases = [
            (0, 0),
            (1, 7),
            (7, 1),
            (8, 0),
            (9, 7),
            (16, 0),
            (65534, 2),
            (65535, 1),
        ];
        for (len, padding) in cases {
            let bytes = record(RecordType::Stdout, 1, &pattern(len, 0));
            assert_eq!(bytes.len(), HEADER_LEN + len + padding, "content {len}");
            let len16 = u16::try_from(len).unwrap().to_be_bytes();
            assert_eq!(
                bytes[..HEADER_LEN],
                [1, 6, 0, 1, len16[0], len16[1], padding as u8, 0]
            );
            assert!(bytes[HEADER_LEN + len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn every_type_and_length_round_trips() {
        for (code, rtype) in ALL_TYPES {
            for len in [0, 1, 7, 8, 9, 65535] {
                for request_id in [0, 1, 0x1234, 65535] {
                    let content = pattern(len, code);
                    let bytes = record(rtype, request_id, &content);
                    assert_eq!(bytes.len() % 8, 0);
                    assert_eq!(bytes[1], code);
                    let (record, consumed) = complete(&bytes);
                    assert_eq!(consumed, bytes.len(), "{rtype:?} len {len}");
                    assert_eq!(
                        record,
                        Record {
                            rtype,
                            request_id,
                            content: &content
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn foreign_padding_is_skipped() {
        // Other senders pick other paddings: up to 255 bytes, any values.
        let cases: [(&[u8], u8); 4] = [(b"", 0), (b"", 255), (b"abc", 5), (b"abcdefgh", 1)];
        for (content, padding) in cases {
            let mut bytes = vec![1, 5, 0, 7, 0, content.len() as u8, padding, 0xee];
            bytes.extend_from_slice(content);
            bytes.extend(std::iter::repeat_n(0xaa, usize::from(padding)));
            bytes.extend_from_slice(b"next");
            let (record, consumed) = complete(&bytes);
            assert_eq!(consumed, 8 + content.len() + usize::from(padding));
            assert_eq!(
                record,
                Record {
                    rtype: RecordType::Stdin,
                    request_id: 7,
                    content
                }
            );
            assert_eq!(&bytes[consumed..], b"next");
        }
    }

    #[test]
    fn records_back_to_back() {
        let mut buf = Vec::new();
        encode_begin_request(&mut buf, 1, Role::Responder, true);
        encode_record(&mut buf, RecordType::Params, 1, b"\x0b\x02SERVER_PORT80");
        encode_record(&mut buf, RecordType::Params, 1, b"");
        encode_record(&mut buf, RecordType::Stdin, 1, b"");
        buf.extend_from_slice(&[1, 5, 0]); // the start of a fourth record

        let expected: [(RecordType, &[u8], usize); 4] = [
            (RecordType::BeginRequest, &[0, 1, 1, 0, 0, 0, 0, 0], 16),
            (RecordType::Params, b"\x0b\x02SERVER_PORT80", 24),
            (RecordType::Params, b"", 8),
            (RecordType::Stdin, b"", 8),
        ];
        let mut rest = &buf[..];
        for (rtype, content, len) in expected {
            let (record, consumed) = complete(rest);
            assert_eq!(
                record,
                Record {
                    rtype,
                    request_id: 1,
                    content
                }
            );
            assert_eq!(consumed, len);
            rest = &rest[consumed..];
        }
        assert_eq!(rest, [1, 5, 0]);
        assert_eq!(decode_record(rest), Ok(Decoded::Partial));
    }

    #[test]
    fn every_truncation_point_is_partial() {
        let mut with_padding = vec![1, 6, 0, 3, 0, 5, 11, 0];
        with_padding.extend_from_slice(b"hello");
        with_padding.extend_from_slice(&[0; 11]);
        let only_padding = [&[1, 2, 0, 3, 0, 0, 255, 0][..], &[0x55; 255]].concat();
        let buffers = [
            record(RecordType::Stdout, 1, b""),
            record(RecordType::Stdout, 1, b"x"),
            record(RecordType::Stdin, 2, &pattern(9, 3)),
            record(RecordType::Data, 65535, &pattern(65535, 4)),
            with_padding,
            only_padding,
        ];
        for bytes in &buffers {
            for k in 0..bytes.len() {
                assert_eq!(
                    decode_record(&bytes[..k]),
                    Ok(Decoded::Partial),
                    "prefix of {k} of {} bytes",
                    bytes.len()
                );
            }
            let (_, consumed) = complete(bytes);
            assert_eq!(consumed, bytes.len());
        }
    }

    #[test]
    fn bad_version_is_refused() {
        for version in [0, 2, 255] {
            let mut bytes = record(RecordType::Stdin, 1, b"data");
            bytes[0] = version;
            assert_eq!(decode_record(&bytes), Err(CodecError::BadVersion(version)));
            // Checked as soon as the first byte is in.
            assert_eq!(
                decode_record(&bytes[..1]),
                Err(CodecError::BadVersion(version))
            );
        }
        assert_eq!(decode_record(&[]), Ok(Decoded::Partial));
        assert_eq!(decode_record(&[1]), Ok(Decoded::Partial));
    }

    #[test]
    fn other_protocols_are_bad_version() {
        let cases: [(&[u8], u8); 4] = [
            (b"GET / HTTP/1.1\r\n\r\n", b'G'),
            (b"POST /x HTTP/1.0\r\n", b'P'),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b'P'),
            (&[0x16, 0x03, 0x01, 0x02, 0x00], 0x16), // TLS ClientHello
        ];
        for (bytes, first) in cases {
            assert_eq!(decode_record(bytes), Err(CodecError::BadVersion(first)));
        }
    }

    #[test]
    fn begin_request_bodies() {
        let cases: [([u8; 8], BeginRequest); 7] = [
            (
                [0, 1, 0, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Responder,
                    keep_conn: false,
                },
            ),
            (
                [0, 1, 1, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Responder,
                    keep_conn: true,
                },
            ),
            (
                [0, 2, 0, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Authorizer,
                    keep_conn: false,
                },
            ),
            (
                [0, 3, 1, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Filter,
                    keep_conn: true,
                },
            ),
            (
                [1, 1, 0, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Other(257),
                    keep_conn: false,
                },
            ),
            // Unknown flag bits and reserved bytes are ignored.
            (
                [0, 0, 0xfe, 9, 9, 9, 9, 9],
                BeginRequest {
                    role: Role::Other(0),
                    keep_conn: false,
                },
            ),
            (
                [0xff, 0xff, 0xff, 0, 0, 0, 0, 0],
                BeginRequest {
                    role: Role::Other(65535),
                    keep_conn: true,
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(decode_begin_request(&body), Ok(expected), "{body:?}");
            let mut bytes = Vec::new();
            encode_begin_request(&mut bytes, 3, expected.role, expected.keep_conn);
            let (record, consumed) = complete(&bytes);
            assert_eq!(consumed, 16);
            assert_eq!(record.rtype, RecordType::BeginRequest);
            assert_eq!(record.request_id, 3);
            assert_eq!(decode_begin_request(record.content), Ok(expected));
        }
    }

    #[test]
    fn begin_request_exact_bytes() {
        let mut out = vec![0xee]; // encoders append
        encode_begin_request(&mut out, 0x0102, Role::Filter, true);
        assert_eq!(out, [0xee, 1, 1, 1, 2, 0, 8, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn begin_request_wrong_length() {
        for len in [0, 1, 7, 9, 16] {
            assert_eq!(
                decode_begin_request(&vec![0; len]),
                Err(CodecError::BadLength {
                    what: "FCGI_BEGIN_REQUEST body",
                    len
                })
            );
        }
    }

    #[test]
    fn end_request_exact_bytes() {
        let cases = [
            (1, 0, ProtocolStatus::RequestComplete, [0, 0, 0, 0, 0]),
            (1, 938, ProtocolStatus::RequestComplete, [0, 0, 3, 0xaa, 0]),
            (0x0102, 1, ProtocolStatus::CantMpxConn, [0, 0, 0, 1, 1]),
            (
                7,
                0xdead_beef,
                ProtocolStatus::Overloaded,
                [0xde, 0xad, 0xbe, 0xef, 2],
            ),
            (
                65535,
                u32::MAX,
                ProtocolStatus::UnknownRole,
                [0xff, 0xff, 0xff, 0xff, 3],
            ),
        ];
        for (request_id, app_status, status, body) in cases {
            let mut out = Vec::new();
            encode_end_request(&mut out, request_id, app_status, status);
            let [id1, id0] = u16::to_be_bytes(request_id);
            let [s3, s2, s1, s0, p] = body;
            assert_eq!(
                out,
                [1, 3, id1, id0, 0, 8, 0, 0, s3, s2, s1, s0, p, 0, 0, 0],
                "{status:?}"
            );
        }
    }

    #[test]
    fn unknown_type_exact_bytes() {
        for unknown in [0, 12, 200, 255] {
            let mut out = Vec::new();
            encode_unknown_type(&mut out, unknown);
            assert_eq!(out, [1, 11, 0, 0, 0, 8, 0, 0, unknown, 0, 0, 0, 0, 0, 0, 0]);
        }
    }

    #[test]
    fn stream_is_split_into_records() {
        // (data length, content lengths of the records)
        let cases: [(usize, &[usize]); 6] = [
            (0, &[]),
            (1, &[1]),
            (65535, &[65535]),
            (65536, &[65535, 1]),
            (131070, &[65535, 65535]),
            (200_000, &[65535, 65535, 65535, 3395]),
        ];
        for (len, expected) in cases {
            let data = pattern(len, 9);
            let mut out = Vec::new();
            encode_stream(&mut out, RecordType::Stdout, 4, &data);
            let mut rest = &out[..];
            let mut lens = Vec::new();
            let mut joined = Vec::new();
            while !rest.is_empty() {
                let (record, consumed) = complete(rest);
                assert_eq!(record.rtype, RecordType::Stdout);
                assert_eq!(record.request_id, 4);
                lens.push(record.content.len());
                joined.extend_from_slice(record.content);
                rest = &rest[consumed..];
            }
            assert_eq!(lens, expected, "data of {len}");
            assert_eq!(joined, data);
        }
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "65536 bytes of content")]
    fn oversized_record_is_a_caller_bug() {
        record(RecordType::Stdout, 1, &[0; MAX_CONTENT_LEN + 1]);
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn oversized_record_is_truncated_in_release() {
        let bytes = record(RecordType::Stdout, 1, &pattern(MAX_CONTENT_LEN + 10, 0));
        let (record, consumed) = complete(&bytes);
        assert_eq!(consumed, bytes.len());
        assert_eq!(record.content, &pattern(MAX_CONTENT_LEN, 0)[..]);
    }

    #[test]
    fn name_value_exact_bytes() {
        let cases: [(usize, &[u8]); 6] = [
            (0, &[0]),
            (11, &[11]),
            (127, &[0x7f]),
            (128, &[0x80, 0, 0, 0x80]),
            (300, &[0x80, 0, 0x01, 0x2c]),
            (70000, &[0x80, 0x01, 0x11, 0x70]),
        ];
        for (len, encoded_len) in cases {
            let mut name_first = Vec::new();
            encode_name_value(&mut name_first, &vec![b'n'; len], b"v");
            assert_eq!(
                name_first,
                [encoded_len, &[1], &vec![b'n'; len], b"v"].concat()
            );
            let mut value_second = Vec::new();
            encode_name_value(&mut value_second, b"n", &vec![b'v'; len]);
            assert_eq!(
                value_second,
                [&[1], encoded_len, b"n", &vec![b'v'; len]].concat()
            );
        }
        let mut out = Vec::new();
        encode_name_value(&mut out, b"SERVER_PORT", b"80");
        assert_eq!(out, b"\x0b\x02SERVER_PORT80");
    }

    #[test]
    fn name_values_round_trip_all_length_forms() {
        let lens = [0, 127, 128, 300, 70000];
        let mut all = Vec::new();
        let mut stream = Vec::new();
        for (i, name_len) in lens.into_iter().enumerate() {
            for (j, value_len) in lens.into_iter().enumerate() {
                let name = pattern(name_len, i as u8);
                let value = pattern(value_len, 0x80 | j as u8);
                let mut one = Vec::new();
                encode_name_value(&mut one, &name, &value);
                assert_eq!(
                    decode_name_values(&one, 1),
                    Ok(vec![(&name[..], &value[..])]),
                    "name {name_len} value {value_len}"
                );
                stream.extend_from_slice(&one);
                all.push((name, value));
            }
        }
        let decoded = decode_name_values(&stream, all.len()).unwrap();
        let expected: Vec<(&[u8], &[u8])> = all.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn name_values_empty_and_four_byte_small_lengths() {
        assert_eq!(decode_name_values(&[], 0), Ok(vec![]));
        assert_eq!(decode_name_values(&[], 10), Ok(vec![]));
        assert_eq!(
            decode_name_values(&[0, 0], 1),
            Ok(vec![(&b""[..], &b""[..])])
        );
        // A four-byte length may encode a small value; the high bit is masked off.
        let bytes = [0x80, 0, 0, 1, 0x80, 0, 0, 2, b'a', b'b', b'c'];
        assert_eq!(
            decode_name_values(&bytes, 1),
            Ok(vec![(&b"a"[..], &b"bc"[..])])
        );
    }

    #[test]
    fn every_truncation_point_of_a_pair() {
        // 4-byte name length, 4-byte value length, 128-byte name, 300-byte value.
        let bytes = name_values(&[(&pattern(128, 1), &pattern(300, 2))]);
        assert_eq!(bytes.len(), 8 + 128 + 300);
        for k in 1..bytes.len() {
            let what = match k {
                1..8 => "name-value pair length",
                8..136 => "name-value pair name",
                _ => "name-value pair value",
            };
            assert_eq!(
                decode_name_values(&bytes[..k], 10),
                Err(CodecError::Truncated { what }),
                "prefix of {k}"
            );
        }
        assert_eq!(decode_name_values(&bytes, 10).map(|p| p.len()), Ok(1));
    }

    #[test]
    fn every_truncation_point_of_a_stream() {
        let pairs: [(&[u8], &[u8]); 5] = [
            (b"SERVER_PORT", b"80"),
            (b"", b""),
            (&[b'x'; 128], b"long name"),
            (b"QUERY_STRING", &[b'q'; 300]),
            (b"A", b""),
        ];
        let mut bytes = Vec::new();
        let mut boundaries = vec![0];
        for (name, value) in pairs {
            encode_name_value(&mut bytes, name, value);
            boundaries.push(bytes.len());
        }
        for k in 0..=bytes.len() {
            let result = decode_name_values(&bytes[..k], pairs.len());
            match boundaries.iter().position(|&b| b == k) {
                Some(n) => assert_eq!(result, Ok(pairs[..n].to_vec()), "prefix of {k}"),
                None => assert!(
                    matches!(result, Err(CodecError::Truncated { .. })),
                    "prefix of {k}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn huge_declared_lengths_are_truncated() {
        let cases: [(&[u8], &str); 6] = [
            (&[0xff, 0xff, 0xff, 0xff, 0, b'a'], "name-value pair name"),
            (
                &[0x80, 0, 0, 0x80, 0xff, 0xff, 0xff, 0xff],
                "name-value pair name",
            ),
            (&[1, 0xff, 0xff, 0xff, 0xff, b'a'], "name-value pair value"),
            (
                &[1, 0xff, 0xff, 0xff, 0xff, b'a', b'b'],
                "name-value pair value",
            ),
            (&[0xff, 0xff, 0xff], "name-value pair length"),
            (&[3, 0xff, 0xff], "name-value pair length"),
        ];
        for (bytes, what) in cases {
            assert_eq!(
                decode_name_values(bytes, 10),
                Err(CodecError::Truncated { what }),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn name_value_pair_cap() {
        let three = name_values(&[(b"A", b"1"), (b"B", b"2"), (b"C", b"3")]);
        let cases = [
            (3, Ok(3)),
            (4, Ok(3)),
            (2, Err(CodecError::TooManyPairs { limit: 2 })),
            (0, Err(CodecError::TooManyPairs { limit: 0 })),
        ];
        for (max_pairs, expected) in cases {
            let result = decode_name_values(&three, max_pairs).map(|pairs| pairs.len());
            assert_eq!(result, expected, "max_pairs {max_pairs}");
        }
        // The cap is checked before the next pair is read, even a bad one.
        assert_eq!(
            decode_name_values(&[&three[..], &[0xff]].concat(), 3),
            Err(CodecError::TooManyPairs { limit: 3 })
        );
        // At most `max_pairs` entries are ever held.
        let many = name_values(&[(&b""[..], &b""[..]); 1000]);
        assert_eq!(decode_name_values(&many, 1000).unwrap().len(), 1000);
        assert_eq!(
            decode_name_values(&many, 999),
            Err(CodecError::TooManyPairs { limit: 999 })
        );
    }

    /// Decode a GET_VALUES_RESULT the way a web server would.
    fn get_values_result(query: &[u8], values: &ServerValues) -> Vec<(String, String)> {
        let mut out = Vec::new();
        encode_get_values_result(&mut out, query, values).unwrap();
        let (record, consumed) = complete(&out);
        assert_eq!(consumed, out.len());
        assert_eq!(record.rtype, RecordType::GetValuesResult);
        assert_eq!(record.request_id, 0);
        decode_name_values(record.content, 10)
            .unwrap()
            .into_iter()
            .map(|(n, v)| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (text(n), text(v))
            })
            .collect()
    }

    #[test]
    fn get_values_answers_known_names_in_order() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let query = name_values(&[
            (b"FCGI_MAX_CONNS", b""),
            (b"FCGI_UNKNOWN", b""),
            (b"FCGI_MAX_REQS", b""),
            (b"FCGI_MPXS_CONNS", b""),
        ]);
        assert_eq!(
            get_values_result(&query, &VALUES),
            pairs(&[
                ("FCGI_MAX_CONNS", "10"),
                ("FCGI_MAX_REQS", "50"),
                ("FCGI_MPXS_CONNS", "0"),
            ])
        );

        // Order asked, each once, values in the query ignored.
        let query = name_values(&[
            (b"FCGI_MPXS_CONNS", b""),
            (b"FCGI_MAX_REQS", b"ignored"),
            (b"FCGI_MPXS_CONNS", b""),
            (b"fcgi_max_conns", b""),
        ]);
        let values = ServerValues {
            max_conns: 0,
            max_reqs: u32::MAX,
            mpxs_conns: true,
        };
        assert_eq!(
            get_values_result(&query, &values),
            pairs(&[("FCGI_MPXS_CONNS", "1"), ("FCGI_MAX_REQS", "4294967295")])
        );
    }

    #[test]
    fn get_values_exact_bytes() {
        let query = name_values(&[(b"FCGI_MPXS_CONNS", b"")]);
        let mut out = Vec::new();
        encode_get_values_result(&mut out, &query, &VALUES).unwrap();
        let expected = [
            &[1, 10, 0, 0, 0, 18, 6, 0][..],
            &[15, 1],
            b"FCGI_MPXS_CONNS",
            b"0",
            &[0; 6],
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn get_values_with_nothing_known_is_an_empty_record() {
        let queries = [
            Vec::new(),
            name_values(&[(b"FCGI_UNKNOWN", b"")]),
            name_values(&[(b"X", b""), (b"FCGI_MAX_CONN", b""), (b"", b"")]),
        ];
        for query in queries {
            let mut out = Vec::new();
            encode_get_values_result(&mut out, &query, &VALUES).unwrap();
            assert_eq!(out, [1, 10, 0, 0, 0, 0, 0, 0], "{query:?}");
        }
    }

    #[test]
    fn get_values_malformed_query() {
        let ok_64 = name_values(&[(&b"FCGI_MAX_REQS"[..], &b""[..]); 64]);
        let too_many = name_values(&[(&b"FCGI_MAX_REQS"[..], &b""[..]); 65]);
        let cases = [
            (&ok_64[..], Ok(())),
            (&too_many[..], Err(CodecError::TooManyPairs { limit: 64 })),
            (
                b"\x0d",
                Err(CodecError::Truncated {
                    what: "name-value pair length",
                }),
            ),
            (
                b"\x0d\x00FCGI_MAX_REQ",
                Err(CodecError::Truncated {
                    what: "name-value pair name",
                }),
            ),
        ];
        for (query, expected) in cases {
            let mut out = vec![0xee];
            let result = encode_get_values_result(&mut out, query, &VALUES);
            assert_eq!(result, expected);
            if result.is_err() {
                assert_eq!(out, [0xee], "nothing appended on error");
            } else {
                // One pair of 2 + 13 + 2 bytes, padded to 24.
                assert_eq!(out.len(), 1 + 8 + 24);
            }
        }
    }

    #[test]
    fn error_messages() {
        let cases = [
            (
                CodecError::BadVersion(7),
                "unsupported FastCGI version 7 (expected 1)",
            ),
            (
                CodecError::BadLength {
                    what: "FCGI_BEGIN_REQUEST body",
                    len: 5,
                },
                "FCGI_BEGIN_REQUEST body has 5 bytes (expected 8)",
            ),
            (
                CodecError::BadLength {
                    what: "FCGI_BEGIN_REQUEST body",
                    len: 1,
                },
                "FCGI_BEGIN_REQUEST body has 1 byte (expected 8)",
            ),
            (
                CodecError::Truncated {
                    what: "name-value pair value",
                },
                "truncated name-value pair value",
            ),
            (
                CodecError::TooManyPairs { limit: 1000 },
                "more than 1000 name-value pairs",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        assert_eq!(
            format!(
                "closing connection: {}",
                decode_record(b"GET /").unwrap_err()
            ),
            "closing connection: unsupported FastCGI version 71 (expected 1)"
        );
    }

    /// xorshift64: a deterministic source of junk without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut complete_records = 0;
        let mut decoded_pairs = 0;
        for _ in 0..10_000 {
            let len = rng.below(300);
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the time look like a header with a short record, so the
            // content and padding paths are reached, not only BadVersion.
            if len >= 8 && rng.below(2) == 0 {
                input[0] = VERSION_1;
                input[4] = 0;
                input[6] %= 32;
            }
            // Now and then make the lengths of pairs small.
            if rng.below(4) == 0 {
                for b in input.iter_mut() {
                    *b %= 8;
                }
            }

            match decode_record(&input) {
                Ok(Decoded::Complete(record, consumed)) => {
                    complete_records += 1;
                    assert!(consumed <= input.len());
                    let content_len = usize::from(u16::from_be_bytes([input[4], input[5]]));
                    assert_eq!(consumed, 8 + content_len + usize::from(input[6]));
                    assert_eq!(record.content, &input[8..8 + content_len]);
                    assert_eq!(record.rtype.as_u8(), input[1]);
                    let _ = decode_begin_request(record.content);
                    let _ = decode_name_values(record.content, 16);
                }
                Ok(Decoded::Partial) => assert!(input.is_empty() || input[0] == VERSION_1),
                Err(error) => assert_eq!(error, CodecError::BadVersion(input[0])),
            }
            if let Ok(begin) = decode_begin_request(&input) {
                assert_eq!(input.len(), 8);
                assert_eq!(begin.keep_conn, input[2] & 1 == 1);
            }
            let max_pairs = rng.below(20);
            if let Ok(pairs) = decode_name_values(&input, max_pairs) {
                decoded_pairs += pairs.len();
                assert!(pairs.len() <= max_pairs);
                let reencoded = name_values(&pairs);
                assert_eq!(decode_name_values(&reencoded, max_pairs), Ok(pairs));
            }
        }
        // The generator must reach the interesting paths, or the test proves little.
        assert!(
            complete_records > 500,
            "{complete_records} complete records"
        );
        assert!(decoded_pairs > 500, "{decoded_pairs} pairs");
    }
}
