//! Static files of one site: the request path resolved strictly inside the document root (by
//! the kernel: `openat2` with `RESOLVE_BENEATH`),
//! index files, MIME types, validators (ETag, Last-Modified) with conditional requests, single
//! byte ranges, precompressed `.br` / `.gz` variants by Accept-Encoding, HEAD, and
//! Cache-Control by path prefix.

use super::{compress, empty, full, status_page, Body};
use crate::config::web::Site;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::{
    body::Frame,
    header::{self, HeaderMap, HeaderValue},
    Method, Response, StatusCode,
};
use std::{
    collections::HashMap,
    ffi::CString,
    io::SeekFrom,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

/// Files up to this size are read whole into one buffer; larger ones are streamed.
const SMALL_FILE: u64 = 64 * 1024;
/// Read size when streaming a large file.
const CHUNK: usize = 64 * 1024;
/// How long a cached small file is served before its metadata is checked again (nginx's
/// `open_file_cache_valid` plays this part).
const CACHE_VALID: Duration = Duration::from_secs(1);
/// Cached paths per site; past this the cache starts over.
const CACHE_ENTRIES: usize = 4096;

/// A site's files, ready to serve.
pub struct Files {
    /// The document root, opened as a path handle: every file is opened beneath it with
    /// `openat2(RESOLVE_BENEATH)`, so the kernel refuses `..` and symlinks that lead out.
    root: OwnedFd,
    /// Its configured path, for the log.
    root_path: std::path::PathBuf,
    index: Vec<String>,
    /// (prefix, Cache-Control), longest prefix first.
    cache_rules: Vec<(String, HeaderValue)>,
    /// Small files by normalised path ([`normalise`]), so spellings of one path share an entry.
    cache: Mutex<HashMap<String, Arc<Cached>>>,
    /// Serve names that start with a dot.
    dotfiles: bool,
    /// Gzip compressible small files that have no `.gz` twin, once, as they are cached.
    compress: bool,
}

/// A request path (still percent-encoded, starting with `/`) as a path relative to the root:
/// segments decoded, empty and `.` ones dropped. `..` and a separator or NUL inside a segment
/// are refused (400); so is a name starting with a dot (404, outside `/.well-known/`) unless
/// `dotfiles`.
pub(crate) fn normalise(raw: &str, dotfiles: bool) -> Result<String, StatusCode> {
    if !raw.starts_with('/') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut relative = String::with_capacity(raw.len());
    for segment in raw.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        match decoded.as_ref() {
            "" | "." => {}
            // Never walk up, however it is spelled.
            ".." => return Err(StatusCode::BAD_REQUEST),
            s if s.contains(['/', '\\', '\0']) => return Err(StatusCode::BAD_REQUEST),
            s => {
                let well_known = relative.is_empty() && s == ".well-known";
                if s.starts_with('.') && !dotfiles && !well_known {
                    return Err(StatusCode::NOT_FOUND);
                }
                if !relative.is_empty() {
                    relative.push('/');
                }
                relative.push_str(s);
            }
        }
    }
    Ok(relative)
}

/// A variant of a file: the plain file or a precompressed twin.
struct Variant {
    source: Source,
    /// Path relative to the root (of the plain file, for its MIME type).
    name: Arc<str>,
    encoding: Option<&'static str>,
    len: u64,
    modified: SystemTime,
}

/// Where a variant's bytes are.
enum Source {
    /// An open file (large files, and small ones on a cache miss before they are read).
    File(std::fs::File),
    /// The whole file, from the cache.
    Memory(Bytes),
}

/// A cached small file: every variant in memory, checked against the disk again after
/// [`CACHE_VALID`].
struct Cached {
    checked: Instant,
    /// The plain file first, then its precompressed twins.
    variants: Vec<CachedVariant>,
}

/// One variant of a cached file.
struct CachedVariant {
    name: Arc<str>,
    encoding: Option<&'static str>,
    modified: SystemTime,
    bytes: Bytes,
}

enum Found {
    File(Variant),
    /// A directory asked for without its trailing slash.
    AddSlash,
}

impl Files {
    /// Prepares a site; the root must exist.
    pub fn new(site: &Site) -> anyhow::Result<Self> {
        let configured = &site.root;
        let path = CString::new(configured.as_os_str().as_bytes())?;
        // SAFETY: open(2) on a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            anyhow::bail!(
                "document root {}: {}",
                configured.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a fresh descriptor owned from here on.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut cache_rules: Vec<(String, HeaderValue)> = site
            .cache_rules
            .iter()
            .map(|r| {
                HeaderValue::from_str(&r.cache_control)
                    .map(|v| (r.prefix.clone(), v))
                    .map_err(|_| anyhow::anyhow!("cache_control {:?} is not a valid header value", r.cache_control))
            })
            .collect::<anyhow::Result<_>>()?;
        cache_rules.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let files = Self {
            root,
            root_path: configured.clone(),
            index: site.index.clone(),
            cache_rules,
            cache: Mutex::new(HashMap::new()),
            dotfiles: site.serve_dotfiles,
            compress: site.compress,
        };
        // Every file is opened with openat2: without it nothing could be served.
        if let Err(e) = files.open_beneath("") {
            if e.raw_os_error() == Some(libc::ENOSYS) {
                anyhow::bail!(
                    "document root {}: openat2 is refused here ({e}): the kernel is older than 5.6, or a \
                     seccomp filter blocks it (systemd's RestrictSUIDSGID=yes does)",
                    configured.display()
                );
            }
        }
        Ok(files)
    }

    /// Answers a GET or HEAD for `path` (the URI path, still percent-encoded).
    pub async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = status_page(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let key = match normalise(path, self.dotfiles) {
            Ok(relative) if path.ends_with('/') => format!("{relative}/"),
            Ok(relative) => relative,
            Err(status) => return status_page(status),
        };
        let variants = match self.cached(&key) {
            Some(variants) => variants,
            None => match self.resolve(&key) {
                Ok(Found::File(plain)) => match self.load(&key, plain) {
                    Ok(variants) => variants,
                    Err(status) => return status_page(status),
                },
                Ok(Found::AddSlash) => {
                    let mut response = status_page(StatusCode::MOVED_PERMANENTLY);
                    if let Ok(location) = HeaderValue::from_str(&format!("{path}/")) {
                        response.headers_mut().insert(header::LOCATION, location);
                    }
                    return response;
                }
                Err(status) => return status_page(status),
            },
        };
        let (variant, has_variants) = choose(variants, headers);
        let mut response = respond(method, variant, headers);
        let h = response.headers_mut();
        if has_variants {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if let Some((_, value)) = self
            .cache_rules
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        {
            h.insert(header::CACHE_CONTROL, value.clone());
        }
        response
    }

    /// Opens `relative` (no leading slash) beneath the root; the kernel refuses any path that
    /// would leave it, through `..` or a symlink. Never blocks on a FIFO.
    fn open_beneath(&self, relative: &str) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
        let path = CString::new(if relative.is_empty() { "." } else { relative })?;
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2(2) with a valid directory descriptor, a NUL-terminated path and an
        // open_how of the size given; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned from here on.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let metadata = file.metadata()?;
        Ok((file, metadata))
    }

    /// The status for a file that could not be opened: 404 for what is not there (or leads
    /// out of the root); 403 for what the serving user may not read, logged with the reason,
    /// since the site is then misconfigured.
    fn open_failed(&self, relative: &str, e: &std::io::Error) -> StatusCode {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(
                    root = %self.root_path.display(),
                    path = relative,
                    error = %e,
                    "a file under the document root may not be opened by the user that serves files ([node] user)"
                );
                StatusCode::FORBIDDEN
            }
            _ => {
                tracing::debug!(path = relative, error = %e, "not served");
                StatusCode::NOT_FOUND
            }
        }
    }

    /// Maps a normalised path ([`normalise`], `/`-terminated for a directory request) to an
    /// open file inside the root.
    fn resolve(&self, key: &str) -> Result<Found, StatusCode> {
        let relative = key.trim_end_matches('/').to_string();
        let (file, metadata) = self
            .open_beneath(&relative)
            .map_err(|e| self.open_failed(&relative, &e))?;
        if metadata.is_file() {
            return Ok(Found::File(Variant::open(file, &metadata, relative.into(), None)));
        }
        if !metadata.is_dir() {
            return Err(StatusCode::NOT_FOUND);
        }
        if !key.ends_with('/') {
            return Ok(Found::AddSlash);
        }
        for index in &self.index {
            let name = if relative.is_empty() {
                index.clone()
            } else {
                format!("{relative}/{index}")
            };
            if let Ok((file, metadata)) = self.open_beneath(&name) {
                if metadata.is_file() {
                    return Ok(Found::File(Variant::open(file, &metadata, name.into(), None)));
                }
            }
        }
        Err(StatusCode::FORBIDDEN)
    }

    /// The variants of a normalised path from the cache, if it holds them and they are fresh.
    fn cached(&self, path: &str) -> Option<Vec<Variant>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache.get(path).filter(|c| c.checked.elapsed() < CACHE_VALID)?;
        Some(hit.variants())
    }

    /// Every variant of a resolved file: the file, then its `.br` and `.gz` twins. When all are
    /// small they are read into the cache and served from memory.
    fn load(&self, path: &str, plain: Variant) -> Result<Vec<Variant>, StatusCode> {
        let mut variants = vec![plain];
        for (suffix, encoding) in [("br", "br"), ("gz", "gzip")] {
            let name = &variants[0].name;
            if let Ok((file, metadata)) = self.open_beneath(&format!("{name}.{suffix}")) {
                if metadata.is_file() {
                    let name = name.clone();
                    variants.push(Variant::open(file, &metadata, name, Some(encoding)));
                }
            }
        }
        if variants.iter().any(|v| v.len > SMALL_FILE) {
            return Ok(variants);
        }
        let mut cached = Vec::with_capacity(variants.len());
        for v in variants {
            let Source::File(file) = v.source else {
                continue;
            };
            let mut buf = Vec::with_capacity(v.len as usize);
            use std::io::Read;
            if file.take(v.len).read_to_end(&mut buf).is_err() {
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            cached.push(CachedVariant {
                name: v.name,
                encoding: v.encoding,
                modified: v.modified,
                bytes: Bytes::from(buf),
            });
        }
        if self.compress && !cached.iter().any(|v| v.encoding == Some("gzip")) {
            if let Some(gzipped) = cached.first().and_then(gzipped) {
                cached.push(gzipped);
            }
        }
        let entry = Arc::new(Cached {
            checked: Instant::now(),
            variants: cached,
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(path.to_string(), entry.clone());
        drop(cache);
        Ok(entry.variants())
    }
}

/// A gzip variant of a cached plain file, made once, when its type compresses (text, scripts,
/// JSON, XML, SVG, WebAssembly) and the result saves at least a tenth.
fn gzipped(plain: &CachedVariant) -> Option<CachedVariant> {
    let mime = mime_guess::from_path(&*plain.name).first()?;
    if !compress::compressible(mime.essence_str()) || (plain.bytes.len() as u64) < compress::MIN_COMPRESS {
        return None;
    }
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain.bytes).ok()?;
    let bytes = gz.finish().ok()?;
    (bytes.len() * 10 <= plain.bytes.len() * 9).then(|| CachedVariant {
        name: plain.name.clone(),
        encoding: Some("gzip"),
        modified: plain.modified,
        bytes: Bytes::from(bytes),
    })
}

impl Cached {
    /// The cached variants, ready to serve.
    fn variants(&self) -> Vec<Variant> {
        self.variants
            .iter()
            .map(|v| Variant {
                source: Source::Memory(v.bytes.clone()),
                name: v.name.clone(),
                encoding: v.encoding,
                len: v.bytes.len() as u64,
                modified: v.modified,
            })
            .collect()
    }
}

impl Variant {
    fn open(file: std::fs::File, metadata: &std::fs::Metadata, name: Arc<str>, encoding: Option<&'static str>) -> Self {
        Self {
            source: Source::File(file),
            name,
            encoding,
            len: metadata.len(),
            modified: metadata.modified().unwrap_or(UNIX_EPOCH),
        }
    }
}

/// The best variant the client accepts: `.br`, then `.gz`, then the file itself (the first);
/// and whether precompressed variants exist (the response then varies by encoding).
fn choose(mut variants: Vec<Variant>, headers: &HeaderMap) -> (Variant, bool) {
    let has_variants = variants.len() > 1;
    let accepted = accepted_encodings(headers);
    let pick = variants
        .iter()
        .position(|v| v.encoding.is_some_and(|e| accepted.iter().any(|a| a == e)))
        .unwrap_or(0);
    (variants.swap_remove(pick), has_variants)
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn respond(method: &Method, variant: Variant, headers: &HeaderMap) -> Response<Body> {
    let len = variant.len;
    let modified_s = variant.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let etag = match variant.encoding {
        Some(enc) => format!("\"{modified_s:x}-{len:x}-{enc}\""),
        None => format!("\"{modified_s:x}-{len:x}\""),
    };
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(modified_s));

    let mut response = Response::new(empty());
    let h = response.headers_mut();
    set(h, header::ETAG, &etag);
    set(h, header::LAST_MODIFIED, &last_modified);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set(h, header::CONTENT_TYPE, &content_type(Path::new(&*variant.name)));
    if let Some(enc) = variant.encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }

    if not_modified(headers, &etag, modified_s) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().remove(header::CONTENT_TYPE);
        return response;
    }
    let range = match requested_range(headers, &etag, &last_modified, len) {
        Ok(range) => range,
        Err(()) => {
            let mut r = status_page(StatusCode::RANGE_NOT_SATISFIABLE);
            set(r.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{len}"));
            return r;
        }
    };
    let (start, count) = match range {
        Some((start, end)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                response.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{len}"),
            );
            (start, end - start + 1)
        }
        None => (0, len),
    };
    set(response.headers_mut(), header::CONTENT_LENGTH, &count.to_string());
    if method == Method::HEAD {
        return response;
    }
    match body(variant.source, start, count) {
        Ok(body) => {
            *response.body_mut() = body;
            response
        }
        Err(_) => status_page(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// MIME type from the extension; text types are UTF-8.
fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml" | "svg");
    if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// Encodings the client accepts (q > 0), lowercase.
pub(super) fn accepted_encodings(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!refused && !name.is_empty()).then_some(name)
        })
        .collect()
}

/// RFC 9110 §13.1: If-None-Match wins over If-Modified-Since.
fn not_modified(headers: &HeaderMap, etag: &str, modified_s: u64) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|since| modified_s <= since.as_secs())
}

/// The single byte range to serve (inclusive), None for the whole file, Err when
/// unsatisfiable. Multiple ranges and ranges with a stale If-Range get the whole file.
pub(crate) fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    last_modified: &str,
    len: u64,
) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range != etag && if_range != last_modified {
            return Ok(None);
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ok(None);
    };
    let range = match (first.trim(), last.trim()) {
        ("", "") => return Ok(None),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ())?;
            let end: u64 = if end.is_empty() {
                len.saturating_sub(1)
            } else {
                end.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
            };
            if start >= len || end < start {
                return Err(());
            }
            (start, end)
        }
    };
    Ok(Some(range))
}

/// `count` bytes of the variant from `start`: from memory, read at once when small (the page
/// cache answers without blocking for long), streamed in chunks otherwise.
fn body(source: Source, start: u64, count: u64) -> std::io::Result<Body> {
    use std::io::{Read, Seek};
    let mut file = match source {
        Source::Memory(bytes) => return Ok(full(bytes.slice(start as usize..(start + count) as usize))),
        Source::File(file) => file,
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    if count <= SMALL_FILE {
        let mut buf = Vec::with_capacity(count as usize);
        file.take(count).read_to_end(&mut buf)?;
        return Ok(full(Bytes::from(buf)));
    }
    let file = tokio::fs::File::from_std(file);
    let stream = ReaderStream::with_capacity(file.take(count), CHUNK).map_ok(Frame::data);
    Ok(StreamBody::new(stream).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_a_path_normalise_alike_and_dotfiles_stay_hidden() {
        for spelling in ["/a/b.css", "/a//b.css", "/a/./b.css", "/%61/b%2ecss", "/a/%2E/b.css"] {
            assert_eq!(normalise(spelling, false), Ok("a/b.css".to_string()), "{spelling}");
        }
        for hidden in ["/.git/config", "/%2egit/config", "/sub/.env", "/.env"] {
            assert_eq!(normalise(hidden, false), Err(StatusCode::NOT_FOUND), "{hidden}");
            assert!(normalise(hidden, true).is_ok(), "{hidden} with dotfiles served");
        }
        assert_eq!(
            normalise("/.well-known/acme-challenge/t", false),
            Ok(".well-known/acme-challenge/t".to_string())
        );
        assert_eq!(normalise("/sub/.well-known/x", false), Err(StatusCode::NOT_FOUND));
        for bad in ["/a/../b", "/%2e%2e/etc/passwd", "/a%2fb", "relative"] {
            assert_eq!(normalise(bad, true), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let r = |spec: &str| requested_range(&headers(&[("range", spec)]), "\"e\"", "d", 1000);
        assert_eq!(r("bytes=0-99"), Ok(Some((0, 99))));
        assert_eq!(r("bytes=900-"), Ok(Some((900, 999))));
        assert_eq!(r("bytes=-100"), Ok(Some((900, 999))));
        assert_eq!(r("bytes=990-2000"), Ok(Some((990, 999))));
        assert_eq!(r("bytes=1000-"), Err(()));
        assert_eq!(r("bytes=5-1"), Err(()));
        assert_eq!(r("bytes=0-1,5-9"), Ok(None), "multiple ranges: the whole file");
        assert_eq!(r("items=0-1"), Ok(None));
        let stale = headers(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]);
        assert_eq!(requested_range(&stale, "\"e\"", "d", 1000), Ok(None));
    }

    #[test]
    fn validators_and_encodings() {
        assert!(not_modified(
            &headers(&[("if-none-match", "\"a\", W/\"e\"")]),
            "\"e\"",
            5
        ));
        assert!(!not_modified(&headers(&[("if-none-match", "\"a\"")]), "\"e\"", 5));
        let date = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(100));
        assert!(not_modified(&headers(&[("if-modified-since", &date)]), "\"e\"", 100));
        assert!(!not_modified(&headers(&[("if-modified-since", &date)]), "\"e\"", 101));
        assert_eq!(
            accepted_encodings(&headers(&[("accept-encoding", "gzip, br;q=0, deflate")])),
            vec!["gzip", "deflate"]
        );
        assert_eq!(content_type(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("a.png")), "image/png");
    }
}
