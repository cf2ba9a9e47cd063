//! The Connect protocol (https://connectrpc.com/docs/protocol) as the E2B SDKs speak it: JSON codec
//! only, unary calls as `application/json`, streams as `application/connect+json` with 5-byte
//! envelopes (`flags:u8 | len:u32be | payload`) and a final end-stream envelope (flag 0x02) that
//! carries stream errors while the HTTP status stays 200.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::httputil::{BoxBody, ChannelBody, full};

/// Envelope flag: the payload is compressed with the stream's `connect-content-encoding`.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// Largest single message accepted (stdin chunks, requests).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Connect error codes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// HTTP status of a unary error with this code (Connect protocol mapping).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC error: a Connect code and a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_argument(m: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(Code::NotFound, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(Code::Internal, m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, m)
    }

    /// The JSON error object `{"code": "...", "message": "..."}`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "code": self.code.as_str(), "message": self.message })
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RpcError {}

/// Encodes one envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[flags]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// The end-stream envelope: `{}` on success or `{"error": {...}}`.
pub fn end_stream(error: Option<&RpcError>) -> Bytes {
    let payload = match error {
        None => b"{}".to_vec(),
        Some(e) => serde_json::to_vec(&json!({ "error": e.to_json() })).unwrap_or_default(),
    };
    envelope(FLAG_END_STREAM, &payload)
}

/// Incremental decoder of envelopes from a byte stream.
#[derive(Default, Debug)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl EnvelopeDecoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, RpcError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }

    /// Bytes left over that do not form a whole envelope.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// Kind of a Connect request, from its `Content-Type`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    Unary,
    Stream,
}

/// Checks the content type of an RPC request; only the JSON codec is served.
pub fn request_framing(headers: &HeaderMap) -> Result<Framing, (StatusCode, String)> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Framing::Unary),
        "application/connect+json" => Ok(Framing::Stream),
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {other:?}: this server speaks the Connect protocol with the JSON codec \
                 (application/json, application/connect+json)"
            ),
        )),
    }
}

/// Parses `Connect-Timeout-Ms` (at most 10 digits, per the protocol).
pub fn parse_timeout(headers: &HeaderMap) -> Result<Option<Duration>, RpcError> {
    let Some(v) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RpcError::invalid_argument(format!(
            "protocol error: invalid connect-timeout-ms {s:?}"
        )));
    }
    let ms: u64 = s
        .parse()
        .map_err(|_| RpcError::invalid_argument("invalid connect-timeout-ms"))?;
    Ok(if ms == 0 {
        None
    } else {
        Some(Duration::from_millis(ms))
    })
}

/// Parses `Keepalive-Ping-Interval` (seconds); default 90 s like envd.
pub fn keepalive_interval(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(90))
}

/// The content encoding of a request (`content-encoding` for unary, `connect-content-encoding`
/// for streams): identity or gzip.
pub fn request_encoding(headers: &HeaderMap, framing: Framing) -> Result<bool, RpcError> {
    let name = match framing {
        Framing::Unary => "content-encoding",
        Framing::Stream => "connect-content-encoding",
    };
    match headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => Ok(false),
        Some(s) if s.is_empty() || s == "identity" => Ok(false),
        Some(s) if s == "gzip" => Ok(true),
        Some(s) => Err(RpcError::new(
            Code::Unimplemented,
            format!("unknown compression {s:?}: supported encodings are gzip, identity"),
        )),
    }
}

/// Inflates a gzip-compressed message, bounded by [`MAX_MESSAGE_BYTES`].
pub fn gunzip(data: &[u8]) -> Result<Bytes, RpcError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RpcError::invalid_argument(format!("invalid gzip message: {e}")))?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            "decompressed message too large",
        ));
    }
    Ok(Bytes::from(out))
}

/// Parses a JSON request message. A message is a JSON object: an array, `null`, a scalar or an
/// empty body is `invalid_argument`, never an empty message (serde's derive would take `[]` for a
/// struct with every field absent, and an absent field can mean "the default directory").
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RpcError> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| RpcError::invalid_argument(format!("invalid request message: {e}")))?;
    decode_value(value)
}

/// [`decode`] of an already parsed JSON value.
pub fn decode_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, RpcError> {
    if !value.is_object() {
        return Err(RpcError::invalid_argument(format!(
            "invalid request message: expected a JSON object, got {}",
            json_kind(&value)
        )));
    }
    T::deserialize(value)
        .map_err(|e| RpcError::invalid_argument(format!("invalid request message: {e}")))
}

/// The JSON type name of a value, for error messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The payload of one client message envelope. Flags are 0x00 (plain) or 0x01 (compressed with
/// the stream's `connect-content-encoding`); anything else, including an end-stream flag, which
/// only servers send, is a protocol error rather than data.
pub fn message_payload(env: Envelope, gzip: bool) -> Result<Bytes, RpcError> {
    match env.flags {
        0 => Ok(env.payload),
        FLAG_COMPRESSED if gzip => gunzip(&env.payload),
        FLAG_COMPRESSED => Err(RpcError::invalid_argument(
            "protocol error: compressed message without connect-content-encoding",
        )),
        other => Err(RpcError::invalid_argument(format!(
            "protocol error: invalid envelope flags 0x{other:02x} on a client message"
        ))),
    }
}

/// The single request message of a server-stream call: exactly one envelope, decoded with the
/// request's `connect-content-encoding` (unknown encodings are `unimplemented`).
pub fn single_message(headers: &HeaderMap, body: &[u8]) -> Result<Bytes, RpcError> {
    let gzip = request_encoding(headers, Framing::Stream)?;
    let mut dec = EnvelopeDecoder::default();
    dec.push(body);
    let env = dec.next_envelope()?.ok_or_else(|| {
        RpcError::invalid_argument("protocol error: request body holds no message")
    })?;
    if dec.remaining() > 0 {
        return Err(RpcError::invalid_argument(
            "protocol error: a server-stream request holds exactly one message",
        ));
    }
    message_payload(env, gzip)
}

/// The error of a call that ran past its `connect-timeout-ms`.
pub fn deadline_exceeded() -> RpcError {
    RpcError::new(
        Code::DeadlineExceeded,
        "the operation timed out (connect-timeout-ms)",
    )
}

/// Runs a call under its deadline (`None`: unbounded); past it, `deadline_exceeded`.
pub async fn with_deadline<T>(
    deadline: Option<tokio::time::Instant>,
    call: impl std::future::Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, call)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded())),
        None => call.await,
    }
}

/// How long a whole request body (a unary message, a server-stream request, `/init`) may take
/// to arrive when the call sets no earlier deadline. Client streams are not bounded by it.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a whole request body with a size limit and a time limit: `deadline` (the call's
/// `connect-timeout-ms`) or [`BODY_READ_TIMEOUT`], whichever comes first. A stalled body never
/// holds a call open for longer.
pub async fn read_body(
    body: hyper::body::Incoming,
    deadline: Option<tokio::time::Instant>,
) -> Result<Bytes, RpcError> {
    let body_limit = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let until = deadline.map_or(body_limit, |d| d.min(body_limit));
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES);
    match tokio::time::timeout_at(until, limited.collect()).await {
        Ok(r) => r.map(|c| c.to_bytes()).map_err(|e| {
            let code = if e.is::<http_body_util::LengthLimitError>() {
                Code::ResourceExhausted
            } else {
                Code::InvalidArgument
            };
            RpcError::new(code, format!("error reading request body: {e}"))
        }),
        Err(_) if deadline == Some(until) => Err(deadline_exceeded()),
        Err(_) => Err(RpcError::new(
            Code::DeadlineExceeded,
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Base response for RPCs, with the CORS exposure envd also sends.
fn response_builder(status: StatusCode, content_type: &'static str) -> http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
}

/// A successful unary response.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response<BoxBody> {
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    response_builder(StatusCode::OK, "application/json")
        .body(full(body))
        .expect("static response parts")
}

/// A unary error response.
pub fn unary_error(err: &RpcError) -> Response<BoxBody> {
    let body = serde_json::to_vec(&err.to_json()).unwrap_or_default();
    response_builder(err.code.http_status(), "application/json")
        .body(full(body))
        .expect("static response parts")
}

/// A stream response that consists of the end-stream envelope only (an error before any message).
pub fn stream_error(err: &RpcError) -> Response<BoxBody> {
    response_builder(StatusCode::OK, "application/connect+json")
        .body(full(end_stream(Some(err))))
        .expect("static response parts")
}

/// A stream response made of one message and the end-stream envelope (client-stream replies).
pub fn stream_single<T: Serialize>(msg: &T) -> Response<BoxBody> {
    let payload = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut b = BytesMut::new();
    b.extend_from_slice(&envelope(0, &payload));
    b.extend_from_slice(&end_stream(None));
    response_builder(StatusCode::OK, "application/connect+json")
        .body(full(b.freeze()))
        .expect("static response parts")
}

/// The sending half of a server stream: each message is one envelope, flushed as it is sent.
#[derive(Debug)]
pub struct StreamSender {
    tx: mpsc::Sender<Result<Bytes, crate::httputil::BoxError>>,
}

/// The client went away (the response body was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

impl StreamSender {
    /// Creates a stream response and its sender.
    pub fn new() -> (StreamSender, Response<BoxBody>) {
        let (tx, rx) = mpsc::channel(16);
        let resp = response_builder(StatusCode::OK, "application/connect+json")
            .body(ChannelBody::new(rx).boxed_unsync())
            .expect("static response parts");
        (StreamSender { tx }, resp)
    }

    /// Sends one message envelope.
    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), ClientGone> {
        let payload = serde_json::to_vec(msg).map_err(|_| ClientGone)?;
        self.tx
            .send(Ok(envelope(0, &payload)))
            .await
            .map_err(|_| ClientGone)
    }

    /// Sends the end-stream envelope, which ends the response.
    pub async fn finish(self, error: Option<&RpcError>) {
        let _ = self.tx.send(Ok(end_stream(error))).await;
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrip_in_pieces() {
        let a = envelope(0, br#"{"a":1}"#);
        let b = end_stream(None);
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut d = EnvelopeDecoder::default();
        for chunk in all.chunks(3) {
            d.push(chunk);
        }
        assert_eq!(
            d.next_envelope().unwrap().unwrap(),
            Envelope {
                flags: 0,
                payload: Bytes::from_static(br#"{"a":1}"#)
            }
        );
        let end = d.next_envelope().unwrap().unwrap();
        assert_eq!(end.flags, FLAG_END_STREAM);
        assert_eq!(&end.payload[..], b"{}");
        assert!(d.next_envelope().unwrap().is_none());
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn oversized_envelope_is_rejected() {
        let mut d = EnvelopeDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_envelope().unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn end_stream_error_shape() {
        let e = end_stream(Some(&RpcError::invalid_argument("cwd '/x' does not exist")));
        let v: serde_json::Value = serde_json::from_slice(&e[5..]).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "invalid_argument", "message": "cwd '/x' does not exist"}})
        );
        assert_eq!(e[0], 2);
    }

    #[test]
    fn timeout_header() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_timeout(&h).unwrap(), None);
        h.insert("connect-timeout-ms", "60000".parse().unwrap());
        assert_eq!(parse_timeout(&h).unwrap(), Some(Duration::from_secs(60)));
        h.insert("connect-timeout-ms", "12345678901".parse().unwrap());
        assert!(parse_timeout(&h).is_err());
        h.insert("connect-timeout-ms", "-1".parse().unwrap());
        assert!(parse_timeout(&h).is_err());
    }

    #[test]
    fn status_mapping() {
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Unauthenticated.http_status(), 401);
        assert_eq!(Code::AlreadyExists.http_status(), 409);
        assert_eq!(Code::InvalidArgument.http_status(), 400);
        assert_eq!(Code::Canceled.http_status(), 499);
    }

    #[test]
    fn framing_from_content_type() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(request_framing(&h).unwrap(), Framing::Unary);
        h.insert(
            header::CONTENT_TYPE,
            "application/connect+json".parse().unwrap(),
        );
        assert_eq!(request_framing(&h).unwrap(), Framing::Stream);
        h.insert(header::CONTENT_TYPE, "application/proto".parse().unwrap());
        assert_eq!(
            request_framing(&h).unwrap_err().0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn gzip_message() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"path\":\"/x\"}").unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(&gunzip(&z).unwrap()[..], b"{\"path\":\"/x\"}");
        assert!(gunzip(b"nope").is_err());
    }
}
