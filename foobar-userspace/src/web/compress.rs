//! On-the-fly gzip (`[[web.site]] compress = true`): which types compress, and a streaming
//! gzip of proxied response bodies. Static files get a `.gz` variant made once, as they enter
//! the file cache (`files.rs`); proxied responses are compressed as they stream, each chunk
//! flushed at once so nothing waits for the next one.

use super::Body;
use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as HttpBody, Frame},
    header::{self, HeaderMap, HeaderValue},
    Response, StatusCode,
};
use std::{
    io::Write,
    pin::Pin,
    task::{Context, Poll},
};

/// Bodies smaller than this are not worth compressing.
pub const MIN_COMPRESS: u64 = 256;

/// Whether a type (a MIME essence: `text/css`) compresses well: text, JavaScript, JSON, XML,
/// SVG, WebAssembly.
pub fn compressible(essence: &str) -> bool {
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml" | "application/wasm"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
}

/// Whether the request accepts gzip.
pub fn accepts_gzip(request: &HeaderMap) -> bool {
    super::files::accepted_encodings(request).iter().any(|e| e == "gzip")
}

/// Gzips a proxied response as it streams when it is worth it and allowed: a 200 with a
/// compressible type, not already encoded, not a range, not `no-transform`, not known to be
/// tiny. Its length goes (the compressed one is not known ahead), its ETag becomes weak.
pub fn gzip_response(response: Response<Body>) -> Response<Body> {
    let h = response.headers();
    let essence = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let no_transform = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-transform"));
    let worth = response.status() == StatusCode::OK
        && essence.as_deref().is_some_and(compressible)
        && !h.contains_key(header::CONTENT_ENCODING)
        && !h.contains_key(header::CONTENT_RANGE)
        && !no_transform
        && length.is_none_or(|n| n >= MIN_COMPRESS);
    if !worth {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Some(strong) = parts
        .headers
        .get(header::ETAG)
        .filter(|e| !e.as_bytes().starts_with(b"W/"))
        .cloned()
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(strong.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            parts.headers.insert(header::ETAG, weak);
        }
    }
    let gzip = Gzip {
        inner: body,
        encoder: Some(GzEncoder::new(Vec::new(), Compression::default())),
    };
    Response::from_parts(parts, gzip.boxed())
}

/// A body gzipped as it streams.
struct Gzip {
    inner: Body,
    /// None once the gzip trailer is out.
    encoder: Option<GzEncoder<Vec<u8>>>,
}

impl HttpBody for Gzip {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if self.encoder.is_none() {
                return Poll::Ready(None);
            }
            let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match polled {
                Some(Ok(frame)) => {
                    // Trailers cannot follow a gzip stream's end in order: they are dropped.
                    let Ok(data) = frame.into_data() else { continue };
                    // A sync flush per chunk: the client gets what the server sent so far.
                    if let Err(e) = encoder.write_all(&data).and_then(|()| encoder.flush()) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    let out = std::mem::take(encoder.get_mut());
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    let finished = self.encoder.take().map(GzEncoder::finish);
                    return match finished {
                        Some(Ok(tail)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(tail))))),
                        Some(Err(e)) => Poll::Ready(Some(Err(e))),
                        None => Poll::Ready(None),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn response(content_type: &str, body: &'static str, extra: &[(&str, &str)]) -> Response<Body> {
        let mut r = Response::new(super::super::full(body));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        for (k, v) in extra {
            r.headers_mut().insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    const TEXT: &str = "{\"rows\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]}";

    #[tokio::test]
    async fn a_compressible_response_streams_as_gzip_that_decodes_to_it() {
        let r = gzip_response(response("application/json; charset=utf-8", TEXT, &[("etag", "\"v1\"")]));
        let h = r.headers().clone();
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::ETAG], "W/\"v1\"");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        let gz = r.into_body().collect().await.unwrap().to_bytes();
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, TEXT);
    }

    #[test]
    fn what_is_not_worth_it_or_not_allowed_passes_as_it_is() {
        for (content_type, extra) in [
            ("image/png", &[][..]),
            ("text/html", &[("content-encoding", "br")][..]),
            ("text/html", &[("cache-control", "public, no-transform")][..]),
            ("text/html", &[("content-range", "bytes 0-9/100")][..]),
        ] {
            let r = gzip_response(response(content_type, TEXT, extra));
            assert!(
                r.headers().get(header::CONTENT_ENCODING).is_none_or(|e| e == "br"),
                "{content_type} {extra:?}"
            );
            assert!(r.headers().contains_key(header::CONTENT_LENGTH));
        }
        let tiny = gzip_response(response("text/plain", "short", &[]));
        assert!(!tiny.headers().contains_key(header::CONTENT_ENCODING));
    }
}
