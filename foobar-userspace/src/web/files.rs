//! Static files of one site: the request path resolved strictly inside the document root,
//! index files, MIME types, validators (ETag, Last-Modified) with conditional requests, single
//! byte ranges, precompressed `.br` / `.gz` variants by Accept-Encoding, HEAD, and
//! Cache-Control by path prefix.

use super::{empty, full, status_page, Body};
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
    io::SeekFrom,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Files up to this size are read whole into one buffer; larger ones are streamed.
const SMALL_FILE: u64 = 64 * 1024;
/// Read size when streaming a large file.
const CHUNK: usize = 64 * 1024;

/// A site's files, ready to serve.
#[derive(Debug)]
pub struct Files {
    /// The document root, canonical (symlinks resolved).
    root: PathBuf,
    index: Vec<String>,
    /// (prefix, Cache-Control), longest prefix first.
    cache_rules: Vec<(String, HeaderValue)>,
}

/// A variant of a file: the plain file or a precompressed twin.
struct Variant {
    path: PathBuf,
    encoding: Option<&'static str>,
    metadata: std::fs::Metadata,
}

impl Files {
    /// Prepares a site; the root must exist.
    pub fn new(site: &Site) -> anyhow::Result<Self> {
        let configured = site.root.get_ref();
        let root = std::fs::canonicalize(configured)
            .map_err(|e| anyhow::anyhow!("document root {}: {e}", configured.display()))?;
        let mut cache_rules: Vec<(String, HeaderValue)> = site
            .cache_rules
            .iter()
            .map(|r| {
                HeaderValue::from_str(&r.cache_control)
                    .map(|v| (r.prefix.get_ref().clone(), v))
                    .map_err(|_| anyhow::anyhow!("cache_control {:?} is not a valid header value", r.cache_control))
            })
            .collect::<anyhow::Result<_>>()?;
        cache_rules.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(Self {
            root,
            index: site.index.clone(),
            cache_rules,
        })
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
        let (file, metadata) = match self.resolve(path).await {
            Ok(Found::File(file, metadata)) => (file, metadata),
            Ok(Found::AddSlash) => {
                let mut response = status_page(StatusCode::MOVED_PERMANENTLY);
                if let Ok(location) = HeaderValue::from_str(&format!("{path}/")) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                return response;
            }
            Err(status) => return status_page(status),
        };
        let plain = Variant {
            path: file,
            encoding: None,
            metadata,
        };
        let (variant, has_variants) = self.choose_variant(plain, headers).await;
        let mut response = self.respond(method, &variant, headers).await;
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

    /// Maps a request path to a file inside the root.
    async fn resolve(&self, raw: &str) -> Result<Found, StatusCode> {
        if !raw.starts_with('/') {
            return Err(StatusCode::BAD_REQUEST);
        }
        let mut path = self.root.clone();
        for segment in raw.split('/') {
            let decoded = percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| StatusCode::BAD_REQUEST)?;
            match decoded.as_ref() {
                "" | "." => {}
                // Never walk up, however it is spelled.
                ".." => return Err(StatusCode::BAD_REQUEST),
                s if s.contains(['/', '\\', '\0']) => return Err(StatusCode::BAD_REQUEST),
                s => path.push(s),
            }
        }
        let target = self.inside_root(&path).await.ok_or(StatusCode::NOT_FOUND)?;
        let metadata = tokio::fs::metadata(&target).await.map_err(|_| StatusCode::NOT_FOUND)?;
        if metadata.is_file() {
            return Ok(Found::File(target, metadata));
        }
        if !metadata.is_dir() {
            return Err(StatusCode::NOT_FOUND);
        }
        if !raw.ends_with('/') {
            return Ok(Found::AddSlash);
        }
        for index in &self.index {
            if let Some(file) = self.inside_root(&target.join(index)).await {
                if let Ok(metadata) = tokio::fs::metadata(&file).await {
                    if metadata.is_file() {
                        return Ok(Found::File(file, metadata));
                    }
                }
            }
        }
        Err(StatusCode::FORBIDDEN)
    }

    /// The canonical form of `path` if it exists and lies inside the root (a symlink that leads
    /// out of the root does not count).
    async fn inside_root(&self, path: &Path) -> Option<PathBuf> {
        let canonical = tokio::fs::canonicalize(path).await.ok()?;
        canonical.starts_with(&self.root).then_some(canonical)
    }

    /// The best variant the client accepts: `.br`, then `.gz`, then the file itself; and
    /// whether any precompressed variant exists (the response then varies by encoding).
    async fn choose_variant(&self, plain: Variant, headers: &HeaderMap) -> (Variant, bool) {
        let accepted = accepted_encodings(headers);
        let mut has_variants = false;
        let mut chosen = None;
        for (suffix, encoding) in [("br", "br"), ("gz", "gzip")] {
            let mut name = plain.path.as_os_str().to_owned();
            name.push(".");
            name.push(suffix);
            let Some(path) = self.inside_root(Path::new(&name)).await else {
                continue;
            };
            let Ok(metadata) = tokio::fs::metadata(&path).await else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            has_variants = true;
            if chosen.is_none() && accepted.iter().any(|a| a == encoding) {
                chosen = Some(Variant {
                    path,
                    encoding: Some(encoding),
                    metadata,
                });
            }
        }
        (chosen.unwrap_or(plain), has_variants)
    }

    async fn respond(&self, method: &Method, variant: &Variant, headers: &HeaderMap) -> Response<Body> {
        let len = variant.metadata.len();
        let modified = variant.metadata.modified().unwrap_or(UNIX_EPOCH);
        let modified_s = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
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
        let plain = variant.path.with_extension("");
        let named = if variant.encoding.is_some() {
            &plain
        } else {
            &variant.path
        };
        set(h, header::CONTENT_TYPE, &content_type(named));
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
        match body(&variant.path, start, count).await {
            Ok(body) => {
                *response.body_mut() = body;
                response
            }
            Err(_) => status_page(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

enum Found {
    File(PathBuf, std::fs::Metadata),
    /// A directory asked for without its trailing slash.
    AddSlash,
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
fn accepted_encodings(headers: &HeaderMap) -> Vec<String> {
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
fn requested_range(headers: &HeaderMap, etag: &str, last_modified: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
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

/// `count` bytes of the file from `start`: one buffer for small reads, a stream otherwise.
async fn body(path: &Path, start: u64, count: u64) -> std::io::Result<Body> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    if count <= SMALL_FILE {
        let mut buf = Vec::with_capacity(count as usize);
        file.take(count).read_to_end(&mut buf).await?;
        return Ok(full(Bytes::from(buf)));
    }
    let stream = ReaderStream::with_capacity(file.take(count), CHUNK).map_ok(Frame::data);
    Ok(StreamBody::new(stream).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

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
