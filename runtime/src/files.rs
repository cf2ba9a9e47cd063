//! `GET /files` (download, with gzip and Range) and `POST /files` (multipart or octet-stream
//! upload, gzip request bodies, `X-Metadata-*`), both authorised by the access token or a signed
//! URL, as envd does.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::httputil::{BoxBody, BoxError, json_error};
use crate::signing::{self, SigningError};
use crate::state::AppState;
use crate::users::{self, User};

/// Size of the chunks files are written and read in.
const IO_CHUNK: usize = 1 << 20;

/// Content encodings the daemon can produce for downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// Chooses the response encoding from `Accept-Encoding` like envd: the highest-quality supported
/// encoding, identity unless it is explicitly refused; `Err` when nothing acceptable is left.
pub fn negotiate_encoding(header: Option<&str>) -> Result<Encoding, String> {
    let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(Encoding::Identity);
    };
    let mut items: Vec<(String, f64)> = h
        .split(',')
        .map(|part| {
            let mut it = part.split(';');
            let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .filter_map(|q| q.trim().parse::<f64>().ok())
                .next()
                .unwrap_or(1.0);
            (name, q)
        })
        .collect();
    items.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let identity_refused = items.iter().any(|(n, q)| n == "identity" && *q == 0.0);
    for (name, q) in &items {
        if *q == 0.0 {
            continue;
        }
        match name.as_str() {
            "identity" => return Ok(Encoding::Identity),
            "gzip" => return Ok(Encoding::Gzip),
            "*" => {
                return Ok(if identity_refused {
                    Encoding::Gzip
                } else {
                    Encoding::Identity
                });
            }
            _ => {}
        }
    }
    if identity_refused {
        Err("no acceptable encoding found, supported: [gzip]".into())
    } else {
        Ok(Encoding::Identity)
    }
}

/// A parsed `Range` header against a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable single range: serve the whole file.
    Full,
    /// Inclusive byte range.
    Partial(u64, u64),
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Parses a single `bytes=` range (several ranges are answered with the full content, which
/// RFC 9110 allows).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeSpec {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Full;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Partial(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    let end = if b.is_empty() {
        size - 1
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size - 1),
            _ => return RangeSpec::Full,
        }
    };
    RangeSpec::Partial(start, end)
}

struct Params {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    expiration: Option<i64>,
}

fn params(query: &HashMap<String, String>) -> Result<Params, String> {
    let expiration = match query.get("signature_expiration") {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| format!("invalid signature_expiration {s:?}"))?,
        ),
    };
    Ok(Params {
        path: query.get("path").cloned(),
        username: query.get("username").cloned(),
        signature: query.get("signature").cloned(),
        expiration,
    })
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

type Reply = Response<BoxBody>;

/// Authorisation and user resolution shared by both directions.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    p: &Params,
    op: &str,
) -> Result<User, Box<Reply>> {
    let token = state.token();
    signing::validate(
        token.as_deref(),
        signing::TokenHeader::of(headers),
        p.signature.as_deref(),
        p.expiration,
        p.username.as_deref(),
        p.path.as_deref().unwrap_or(""),
        op,
        now_unix(),
    )
    .map_err(|e: SigningError| Box::new(json_error(StatusCode::UNAUTHORIZED, e.to_string())))?;
    let name = p.username.clone().unwrap_or_else(|| state.defaults().user);
    users::lookup(&name).ok_or_else(|| {
        Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            format!("error looking up user '{name}': unknown user {name}"),
        ))
    })
}

fn content_type_for(path: &str) -> String {
    mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// `GET /files`.
pub async fn download(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    query: HashMap<String, String>,
) -> Reply {
    let p = match params(&query) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let user = match authorize(state, req.headers(), &p, "read") {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let raw_path = p.path.clone().unwrap_or_default();
    let path = match crate::paths::expand_and_resolve(
        &raw_path,
        &user.home,
        state.defaults().workdir.as_deref(),
    ) {
        Ok(p) => p,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("error expanding and resolving path '{raw_path}': {e}"),
            );
        }
    };
    let md = match tokio::fs::metadata(&path).await {
        Ok(m) => m,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("path '{}' does not exist", path.display()),
            );
        }
        Err(e) => {
            return json_error(
                crate::oserror::http_status_of(&e),
                format!("error checking if path exists '{}': {e}", path.display()),
            );
        }
    };
    if md.is_dir() {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("path '{}' is a directory", path.display()),
        );
    }
    let headers = req.headers();
    let hv = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mut encoding = match negotiate_encoding(hv(header::ACCEPT_ENCODING)) {
        Ok(e) => e,
        Err(e) => {
            return json_error(
                StatusCode::NOT_ACCEPTABLE,
                format!("error parsing Accept-Encoding: {e}"),
            );
        }
    };
    let range_header = hv(header::RANGE);
    if range_header.is_some()
        || headers.contains_key(header::IF_MODIFIED_SINCE)
        || headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_RANGE)
    {
        encoding = Encoding::Identity;
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return json_error(
                crate::oserror::http_status_of(&e),
                format!("error opening file '{}': {e}", path.display()),
            );
        }
    };
    let size = md.len();
    let last_modified = crate::timefmt::http_date(md.mtime());
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type_for(&raw_path))
        .header(header::VARY, "Accept-Encoding")
        .header(header::LAST_MODIFIED, last_modified)
        .header("cache-control", "no-store");
    let metrics = state.metrics.download_bytes.clone();
    if encoding == Encoding::Gzip {
        metrics.inc_by(size);
        let body = match gzip_body(file).await {
            Ok(b) => b,
            Err(e) => {
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("error reading file '{}': {e}", path.display()),
                );
            }
        };
        return builder
            .status(StatusCode::OK)
            .header(header::CONTENT_ENCODING, "gzip")
            .body(body)
            .unwrap_or_else(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    let (status, start, len, content_range) = match parse_range(range_header, size) {
        RangeSpec::Full => (StatusCode::OK, 0, size, None),
        RangeSpec::Partial(a, b) => (
            StatusCode::PARTIAL_CONTENT,
            a,
            b - a + 1,
            Some(format!("bytes {a}-{b}/{size}")),
        ),
        RangeSpec::Unsatisfiable => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(crate::httputil::full(
                    serde_json::to_vec(&json!({"code": 416, "message": format!("invalid range: file size is {size}")})).unwrap_or_default(),
                ))
                .unwrap_or_else(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    };
    let mut file = file;
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        if let Err(e) = file.seek(io::SeekFrom::Start(start)).await {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error seeking: {e}"),
            );
        }
    }
    use tokio::io::AsyncReadExt;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10);
    metrics.inc_by(len);
    let mut b = builder
        .status(status)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len);
    if let Some(cr) = content_range {
        b = b.header(header::CONTENT_RANGE, cr);
    }
    b.body(stream_body(stream))
        .unwrap_or_else(|e| json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Bytes sampled from the start of a file to decide whether compressing it is worth the CPU.
const SAMPLE: usize = 64 << 10;

/// Whether deflate shrinks `sample` by at least 10 %.
pub fn worth_compressing(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return true;
    }
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(sample.len()),
        flate2::Compression::fast(),
    );
    if enc.write_all(sample).is_err() {
        return true;
    }
    enc.finish()
        .map(|c| (c.len() as f64) < sample.len() as f64 * 0.9)
        .unwrap_or(true)
}

/// A gzip body for a download. Files whose first 64 KiB do not compress (archives, images,
/// random data) are sent as gzip "stored" blocks, valid gzip at memory speed; the rest are
/// compressed at the fastest level.
async fn gzip_body(mut file: tokio::fs::File) -> io::Result<BoxBody> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut sample = vec![0u8; SAMPLE];
    let mut n = 0;
    while n < SAMPLE {
        let r = file.read(&mut sample[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    sample.truncate(n);
    file.seek(io::SeekFrom::Start(0)).await?;
    if worth_compressing(&sample) {
        use async_compression::tokio::bufread::GzipEncoder;
        let reader = tokio::io::BufReader::with_capacity(IO_CHUNK, file);
        let gz = GzipEncoder::with_quality(reader, async_compression::Level::Fastest);
        return Ok(stream_body(tokio_util::io::ReaderStream::with_capacity(
            gz,
            256 << 10,
        )));
    }
    Ok(stream_body(stored_gzip(
        tokio_util::io::ReaderStream::with_capacity(file, 256 << 10),
    )))
}

/// The gzip header: no name, no mtime, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// Wraps raw chunks into one gzip member made of deflate stored blocks.
pub fn stored_gzip<S>(chunks: S) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    enum Phase<S> {
        Header(S),
        Body(S, flate2::Crc),
        Done,
    }
    futures::stream::unfold(Phase::Header(chunks), |phase| async move {
        match phase {
            Phase::Header(s) => Some((
                Ok(Bytes::from_static(&GZIP_HEADER)),
                Phase::Body(s, flate2::Crc::new()),
            )),
            Phase::Body(mut s, mut crc) => match s.next().await {
                Some(Ok(chunk)) => {
                    crc.update(&chunk);
                    let mut out =
                        BytesMut::with_capacity(chunk.len() + chunk.len() / 65535 * 5 + 5);
                    for block in chunk.chunks(65535) {
                        let len = block.len() as u16;
                        out.extend_from_slice(&[0]);
                        out.extend_from_slice(&len.to_le_bytes());
                        out.extend_from_slice(&(!len).to_le_bytes());
                        out.extend_from_slice(block);
                    }
                    Some((Ok(out.freeze()), Phase::Body(s, crc)))
                }
                Some(Err(e)) => Some((Err(e), Phase::Done)),
                None => {
                    let mut out = BytesMut::with_capacity(13);
                    out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
                    out.extend_from_slice(&crc.sum().to_le_bytes());
                    out.extend_from_slice(&crc.amount().to_le_bytes());
                    Some((Ok(out.freeze()), Phase::Done))
                }
            },
            Phase::Done => None,
        }
    })
}

fn stream_body<S>(s: S) -> BoxBody
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let frames = s
        .map_ok(hyper::body::Frame::data)
        .map_err(|e| Box::new(e) as BoxError);
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// A failed upload: HTTP status and message.
#[derive(Debug)]
struct UploadError(StatusCode, String);

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.1, self.0)
    }
}

impl std::error::Error for UploadError {}

impl UploadError {
    fn bad(m: impl Into<String>) -> Self {
        UploadError(StatusCode::BAD_REQUEST, m.into())
    }
    fn internal(m: impl Into<String>) -> Self {
        UploadError(StatusCode::INTERNAL_SERVER_ERROR, m.into())
    }
    fn from_io(e: &io::Error, what: &str) -> Self {
        let status = crate::oserror::http_status_of(e);
        if status == StatusCode::INSUFFICIENT_STORAGE {
            return UploadError(status, format!("{what}: not enough disk space available"));
        }
        UploadError(status, format!("{what}: {e}"))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UploadError> + Send + 'static,
) -> Result<T, UploadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::internal(format!("file task failed: {e}")))?
}

/// Writes one uploaded file: parent directories, ownership, content, metadata. The order of the
/// system calls (create, chown, write) is what watchers observe as CREATE, CHMOD, WRITE.
async fn write_file<S>(
    path: PathBuf,
    user: &User,
    metadata: &BTreeMap<String, String>,
    mut data: S,
    state: &AppState,
) -> Result<(), UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let (uid, gid) = (user.uid, user.gid);
    if let Some(parent) = path.parent().map(Path::to_path_buf) {
        let created = blocking(move || {
            let existed = parent.is_dir();
            crate::filesystem::ensure_dirs(&parent, uid, gid).map_err(|f| {
                UploadError::from_io(
                    &f.source,
                    &format!("error ensuring directories: {}", f.context),
                )
            })?;
            Ok(!existed)
        })
        .await?;
        if created {
            // Let recursive watches pick up the new directories before the file appears.
            state.watchers.sync_all();
        }
    }
    let p = path.clone();
    let mut file = blocking(move || {
        let existed = match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                return Err(UploadError::bad(format!(
                    "path is a directory: {}",
                    p.display()
                )));
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(UploadError::from_io(&e, "error getting file info")),
        };
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| UploadError::from_io(&e, "error changing file ownership"))
        };
        if existed {
            chown(&p)?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .map_err(|e| UploadError::from_io(&e, "error opening file"))?;
        if !existed {
            chown(&p)?;
        }
        Ok(f)
    })
    .await?;
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    loop {
        let next = data.next().await;
        let done = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk?;
            total += chunk.len() as u64;
            buf.extend_from_slice(&chunk);
        }
        if (done && !buf.is_empty()) || buf.len() >= IO_CHUNK {
            let out = buf.split().freeze();
            file = blocking(move || {
                let mut f = file;
                f.write_all(&out)
                    .map_err(|e| UploadError::from_io(&e, "error writing file"))?;
                Ok(f)
            })
            .await?;
        }
        if done {
            break;
        }
    }
    state.metrics.upload_bytes.inc_by(total);
    let md = metadata.clone();
    blocking(move || {
        drop(file);
        crate::xattr::replace(&path, &md)
            .map_err(|e| UploadError::from_io(&e, "error storing file metadata"))
    })
    .await
}

fn gunzip_stream<S>(s: S) -> impl Stream<Item = Result<Bytes, UploadError>> + Send + Unpin
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
{
    use async_compression::tokio::bufread::GzipDecoder;
    let reader = tokio_util::io::StreamReader::new(s);
    let mut dec = GzipDecoder::new(reader);
    dec.multiple_members(true);
    tokio_util::io::ReaderStream::with_capacity(dec, 256 << 10)
        .map_err(|e| UploadError::bad(format!("error decompressing request body: {e}")))
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, UploadError>> + Send>>;

fn body_stream(body: Incoming, gzip: bool) -> ByteStream {
    let raw = body
        .into_data_stream()
        .map_err(|e| io::Error::other(format!("error reading request body: {e}")));
    if gzip {
        Box::pin(gunzip_stream(raw))
    } else {
        Box::pin(raw.map_err(|e| UploadError::bad(e.to_string())))
    }
}

/// A stream that yields at most one item per poll: after an item it answers `Pending` once (and
/// wakes itself), so a consumer that reads "while ready" takes one chunk, not the whole source.
struct OneChunkPerPoll<S> {
    inner: S,
    yielded: bool,
}

impl<S> OneChunkPerPoll<S> {
    fn new(inner: S) -> Self {
        OneChunkPerPoll {
            inner,
            yielded: false,
        }
    }
}

impl<S: Stream + Unpin> Stream for OneChunkPerPoll<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if std::mem::take(&mut self.yielded) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let item = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        self.yielded = matches!(item, std::task::Poll::Ready(Some(_)));
        item
    }
}

/// `POST /files`.
pub async fn upload(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    query: HashMap<String, String>,
) -> Reply {
    let p = match params(&query) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let user = match authorize(state, req.headers(), &p, "write") {
        Ok(u) => u,
        Err(r) => return *r,
    };
    match upload_inner(state, req, &p, &user).await {
        Ok(entries) => crate::httputil::json_ok(&serde_json::Value::Array(entries)),
        Err(UploadError(status, msg)) => {
            tracing::warn!(status = status.as_u16(), error = %msg, "upload failed");
            json_error(status, msg)
        }
    }
}

async fn upload_inner(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    p: &Params,
    user: &User,
) -> Result<Vec<serde_json::Value>, UploadError> {
    let headers = req.headers().clone();
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => false,
        Some(e) if e.is_empty() || e == "identity" => false,
        Some(e) if e == "gzip" => true,
        Some(e) => {
            return Err(UploadError::bad(format!(
                "error decompressing request body: unsupported Content-Encoding: {e}, supported: [gzip]"
            )));
        }
    };
    let metadata = crate::xattr::from_headers(&headers)
        .map_err(|e| UploadError::bad(format!("invalid metadata: {e}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let workdir = state.defaults().workdir;
    let resolve = |raw: &str| {
        crate::paths::expand_and_resolve(raw, &user.home, workdir.as_deref())
            .map_err(|e| UploadError::bad(format!("error resolving path: {e}")))
    };
    let entry = |path: &Path| {
        let mut v = json!({
            "path": path.display().to_string(),
            "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            "type": "file",
        });
        if !metadata.is_empty() {
            v["metadata"] = json!(metadata);
        }
        v
    };
    let body = req.into_body();
    if media == "application/octet-stream" {
        let Some(raw) = p.path.as_deref() else {
            return Err(UploadError::bad(
                "path query parameter is required for raw body upload",
            ));
        };
        let path = resolve(raw)?;
        write_file(
            path.clone(),
            user,
            &metadata,
            body_stream(body, gzip),
            state,
        )
        .await?;
        return Ok(vec![entry(&path)]);
    }
    if !media.starts_with("multipart/") {
        return Err(UploadError::bad(format!(
            "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
        )));
    }
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| UploadError::bad(format!("error parsing multipart form: {e}")))?;
    // multer drains its source for as long as it is ready; a gzip decoder is always ready, so
    // without pacing a small compressed request would be inflated into memory whole.
    let mut multipart =
        multer::Multipart::new(OneChunkPerPoll::new(body_stream(body, gzip)), boundary);
    let mut written: Vec<PathBuf> = Vec::new();
    let mut entries = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(UploadError::bad(format!("error reading form: {e}"))),
        };
        if field.name() != Some("file") {
            continue;
        }
        let raw = match (&p.path, field.file_name()) {
            (Some(path), _) => path.clone(),
            (None, Some(name)) => name.to_string(),
            (None, None) => {
                return Err(UploadError::bad(
                    "error getting multipart file name: the part has no filename",
                ));
            }
        };
        let path = resolve(&raw)?;
        if written.contains(&path) {
            return Err(UploadError::bad(format!(
                "you cannot upload multiple files to the same path '{}' in one upload request, only the first specified file was uploaded",
                path.display()
            )));
        }
        let data = field.map_err(|e| UploadError::bad(format!("error reading form: {e}")));
        write_file(path.clone(), user, &metadata, data, state).await?;
        entries.push(entry(&path));
        written.push(path);
    }
    if entries.is_empty() {
        return Err(UploadError::bad("the upload holds no part named 'file'"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_like_envd() {
        assert_eq!(negotiate_encoding(None), Ok(Encoding::Identity));
        assert_eq!(
            negotiate_encoding(Some("gzip, deflate")),
            Ok(Encoding::Gzip)
        );
        assert_eq!(negotiate_encoding(Some("zstd,gzip,br")), Ok(Encoding::Gzip));
        assert_eq!(negotiate_encoding(Some("identity")), Ok(Encoding::Identity));
        assert_eq!(
            negotiate_encoding(Some("gzip;q=0.5, identity")),
            Ok(Encoding::Identity)
        );
        assert_eq!(negotiate_encoding(Some("br")), Ok(Encoding::Identity));
        assert_eq!(
            negotiate_encoding(Some("*;q=1, identity;q=0")),
            Ok(Encoding::Gzip)
        );
        assert!(negotiate_encoding(Some("br, identity;q=0")).is_err());
        assert_eq!(negotiate_encoding(Some("gzip;q=0")), Ok(Encoding::Identity));
    }

    #[test]
    fn compressibility_probe() {
        assert!(worth_compressing(&b"abc".repeat(10_000)));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(!worth_compressing(&random));
    }

    #[tokio::test]
    async fn stored_gzip_is_valid_gzip() {
        use std::io::Read;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let out: Vec<Bytes> = stored_gzip(futures::stream::iter(chunks))
            .map(|r| r.unwrap())
            .collect()
            .await;
        let gz: Vec<u8> = out.concat();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let empty: Vec<Bytes> = stored_gzip(futures::stream::empty())
            .map(|r| r.unwrap())
            .collect()
            .await;
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty.concat()[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeSpec::Partial(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeSpec::Partial(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeSpec::Partial(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeSpec::Partial(0, 9));
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            RangeSpec::Partial(8, 9)
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeSpec::Full);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), RangeSpec::Unsatisfiable);
    }
}
