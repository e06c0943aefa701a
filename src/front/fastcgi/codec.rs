//! FastCGI 1.0 wire format, sans-I/O: bytes to records and records to bytes.
//!
//! Owns: record framing (header, content, padding), BEGIN_REQUEST / END_REQUEST
//! bodies, name-value pairs (1- and 4-byte lengths), GET_VALUES answers and
//! UNKNOWN_TYPE replies. Must not: read or write sockets, allocate without a cap
//! chosen by the caller, or panic on any input.
#![forbid(unsafe_code)]

use std::fmt;

/// Bytes in a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content a single record can carry.
pub const MAX_CONTENT_LEN: usize = 65535;
/// The only protocol version (FCGI_VERSION_1).
pub const VERSION_1: u8 = 1;

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
    pub fn from_u8(v: u8) -> RecordType {
        todo!()
    }
    pub fn as_u8(self) -> u8 {
        todo!()
    }
    /// Management records use request id 0 (spec 3.3): GET_VALUES, UNKNOWN_TYPE, unknown types.
    pub fn is_management(self, request_id: u16) -> bool {
        todo!()
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
    /// The header's version byte is not 1.
    BadVersion(u8),
    /// A fixed-size body (BEGIN_REQUEST) had the wrong length.
    BadLength { what: &'static str, len: usize },
    /// A name-value pair ran past the end of its buffer.
    Truncated { what: &'static str },
    /// More name-value pairs than the cap.
    TooManyPairs { limit: usize },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl std::error::Error for CodecError {}

/// Decode one record from the front of `buf`.
pub fn decode_record(buf: &[u8]) -> Result<Decoded<'_>, CodecError> {
    todo!()
}

/// Decode the 8-byte body of FCGI_BEGIN_REQUEST.
pub fn decode_begin_request(content: &[u8]) -> Result<BeginRequest, CodecError> {
    todo!()
}

/// Decode a complete name-value stream (e.g. all PARAMS content concatenated).
/// Every byte must belong to a pair; at most `max_pairs` pairs.
/// DoS note: the caller caps `buf.len()` before buffering it.
pub fn decode_name_values(buf: &[u8], max_pairs: usize) -> Result<Vec<(&[u8], &[u8])>, CodecError> {
    todo!()
}

/// Append one record: header, `content` (at most MAX_CONTENT_LEN bytes), padding to 8.
pub fn encode_record(out: &mut Vec<u8>, rtype: RecordType, request_id: u16, content: &[u8]) {
    todo!()
}

/// Append `data` as as many records of `rtype` as needed (each at most MAX_CONTENT_LEN).
/// Empty `data` appends nothing: the stream terminator is an explicit `encode_record(.., &[])`.
pub fn encode_stream(out: &mut Vec<u8>, rtype: RecordType, request_id: u16, data: &[u8]) {
    todo!()
}

/// Append FCGI_BEGIN_REQUEST (used by clients and tests).
pub fn encode_begin_request(out: &mut Vec<u8>, request_id: u16, role: Role, keep_conn: bool) {
    todo!()
}

/// Append FCGI_END_REQUEST.
pub fn encode_end_request(out: &mut Vec<u8>, request_id: u16, app_status: u32, status: ProtocolStatus) {
    todo!()
}

/// Append FCGI_UNKNOWN_TYPE for a management record of type `unknown`.
pub fn encode_unknown_type(out: &mut Vec<u8>, unknown: u8) {
    todo!()
}

/// Append one name-value pair, choosing 1- or 4-byte lengths.
pub fn encode_name_value(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    todo!()
}

/// Answer a GET_VALUES query: append one GET_VALUES_RESULT record holding the
/// known names that were asked for (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS);
/// unknown names are left out. `query` is the GET_VALUES record's content.
pub fn encode_get_values_result(out: &mut Vec<u8>, query: &[u8], values: &ServerValues) -> Result<(), CodecError> {
    todo!()
}
