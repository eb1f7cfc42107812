//! The push exporter: metrics, the access log and the event log sent to an HTTP collector in
//! the shape of a Sumo Logic HTTP Logs and Metrics source. Metrics go as
//! `application/vnd.sumologic.prometheus` (one `name{labels} value timestamp` line each), logs
//! as JSON lines, each kind in its own requests, gzip-compressed, at most [`MAX_REQUEST_BYTES`]
//! per request, with `X-Sumo-Category`, `-Name` and `-Host`. Records wait in a bounded buffer
//! (the oldest are dropped and counted when it is full); a request answered 429 or 5xx, or
//! timing out, is retried with exponential backoff. Serving never waits for any of it: logs are
//! handed over with a short lock, and sending runs on its own task.

use crate::{
    config::monitoring::{CollectorUrl, Push},
    metrics::exposition::{Family, Kind},
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::{
    collections::VecDeque,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{io::AsyncRead, io::AsyncWrite, net::TcpStream};
use tracing::{field::Visit, warn, Subscriber};
use tracing_subscriber::{layer::Context as LayerContext, Layer};

/// Uncompressed payload of one request at most (Sumo Logic's documented limit is 1 MB).
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Metrics,
    Access,
    Events,
}

impl Stream {
    const ALL: [Stream; 3] = [Stream::Metrics, Stream::Access, Stream::Events];

    fn name(self) -> &'static str {
        match self {
            Stream::Metrics => "metrics",
            Stream::Access => "access",
            Stream::Events => "events",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Stream::Metrics => "application/vnd.sumologic.prometheus",
            Stream::Access | Stream::Events => "application/x-ndjson",
        }
    }
}

/// Records waiting to be sent, bounded in bytes.
struct Buffer {
    queues: [VecDeque<String>; 3],
    bytes: usize,
    limit: usize,
}

/// The exporter's counters.
#[derive(Default)]
struct Counters {
    requests: [AtomicU64; 3],
    records: [AtomicU64; 3],
    bytes: AtomicU64,
    dropped: [AtomicU64; 3],
    failures: AtomicU64,
    retries: AtomicU64,
}

/// The running exporter's shared state.
pub struct Exporter {
    buffer: Mutex<Buffer>,
    counters: Counters,
}

/// The exporter logs are handed to, once `foobar run` has started one.
static LOG_SINK: OnceLock<Arc<Exporter>> = OnceLock::new();

impl Exporter {
    fn add(&self, stream: Stream, record: String) {
        let Ok(mut b) = self.buffer.lock() else { return };
        let size = record.len() + 1;
        while b.bytes + size > b.limit {
            // Oldest first, logs before metrics (a later scrape carries the same counters).
            let Some(victim) = [Stream::Events, Stream::Access, Stream::Metrics]
                .into_iter()
                .find(|s| !b.queues[*s as usize].is_empty())
            else {
                break;
            };
            if let Some(old) = b.queues[victim as usize].pop_front() {
                b.bytes -= old.len() + 1;
                self.counters.dropped[victim as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        if b.bytes + size > b.limit {
            self.counters.dropped[stream as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        b.bytes += size;
        b.queues[stream as usize].push_back(record);
    }

    /// Up to [`MAX_REQUEST_BYTES`] of the oldest records of `stream`, left in the buffer.
    fn peek_batch(&self, stream: Stream) -> (usize, String) {
        let Ok(b) = self.buffer.lock() else {
            return (0, String::new());
        };
        let mut payload = String::new();
        let mut n = 0;
        for record in &b.queues[stream as usize] {
            if !payload.is_empty() && payload.len() + record.len() + 1 > MAX_REQUEST_BYTES {
                break;
            }
            payload.push_str(record);
            payload.push('\n');
            n += 1;
        }
        (n, payload)
    }

    /// Removes the `n` oldest records of `stream` (they were sent, or refused for good).
    fn remove(&self, stream: Stream, n: usize) {
        let Ok(mut b) = self.buffer.lock() else { return };
        for _ in 0..n {
            if let Some(old) = b.queues[stream as usize].pop_front() {
                b.bytes -= old.len() + 1;
            }
        }
    }

    /// The exporter's own metrics.
    pub fn families(&self) -> Vec<Family> {
        let c = &self.counters;
        let per_stream = |name: &str, help: &'static str, values: &[AtomicU64; 3]| {
            let mut f = Family::new(format!("foobar_push_{name}"), Kind::Counter, help);
            for s in Stream::ALL {
                f.sample(&[("kind", s.name())], values[s as usize].load(Ordering::Relaxed) as f64);
            }
            f
        };
        vec![
            per_stream("requests", "Requests the collector accepted, by kind.", &c.requests),
            per_stream(
                "records",
                "Records (metric samples, log lines) delivered, by kind.",
                &c.records,
            ),
            per_stream(
                "dropped_records",
                "Records dropped because the buffer was full, by kind.",
                &c.dropped,
            ),
            Family::single(
                "foobar_push_buffered_bytes",
                Kind::Gauge,
                "Bytes waiting to be sent (uncompressed), at most max_buffer_bytes.",
                self.buffer.lock().map_or(0, |b| b.bytes) as f64,
            ),
            Family::single(
                "foobar_push_sent_bytes",
                Kind::Counter,
                "Compressed bytes the collector accepted.",
                c.bytes.load(Ordering::Relaxed) as f64,
            ),
            Family::single(
                "foobar_push_failures",
                Kind::Counter,
                "Requests that failed (refused, timed out, or an error status).",
                c.failures.load(Ordering::Relaxed) as f64,
            ),
            Family::single(
                "foobar_push_retries",
                Kind::Counter,
                "Requests retried after a 429, a 5xx or a timeout.",
                c.retries.load(Ordering::Relaxed) as f64,
            ),
        ]
    }
}

/// Starts the exporter: `metrics` is called every interval for the samples to send.
pub fn start(
    config: &Push,
    node: &str,
    metrics: impl Fn() -> Vec<Family> + Send + Sync + 'static,
) -> Result<(Arc<Exporter>, tokio::task::JoinHandle<()>)> {
    let target = Target::new(config, node)?;
    let exporter = Arc::new(Exporter {
        buffer: Mutex::new(Buffer {
            queues: Default::default(),
            bytes: 0,
            limit: config.max_buffer_bytes,
        }),
        counters: Counters::default(),
    });
    if config.logs && LOG_SINK.set(exporter.clone()).is_err() {
        warn!("a push exporter already takes the logs");
    }
    let interval = config.interval;
    let task = tokio::spawn(run(exporter.clone(), target, interval, Arc::new(metrics)));
    Ok((exporter, task))
}

async fn run(
    exporter: Arc<Exporter>,
    target: Target,
    interval: Duration,
    metrics: Arc<impl Fn() -> Vec<Family> + Send + Sync + 'static>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::ZERO;
    loop {
        ticker.tick().await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Gathering reads maps and /proc: off the runtime's threads, as a scrape does.
        let gather = metrics.clone();
        let families = tokio::task::spawn_blocking(move || gather()).await.unwrap_or_default();
        for line in sumo_lines(&families, now_ms) {
            exporter.add(Stream::Metrics, line);
        }
        for stream in Stream::ALL {
            loop {
                let (n, payload) = exporter.peek_batch(stream);
                if n == 0 {
                    break;
                }
                match target.send(stream, payload.into_bytes()).await {
                    Ok(sent) => {
                        backoff = Duration::ZERO;
                        let c = &exporter.counters;
                        c.requests[stream as usize].fetch_add(1, Ordering::Relaxed);
                        c.records[stream as usize].fetch_add(n as u64, Ordering::Relaxed);
                        c.bytes.fetch_add(sent as u64, Ordering::Relaxed);
                        exporter.remove(stream, n);
                    }
                    Err(Failure::Retry(why)) => {
                        exporter.counters.failures.fetch_add(1, Ordering::Relaxed);
                        exporter.counters.retries.fetch_add(1, Ordering::Relaxed);
                        backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                        warn!(target: "foobar::push", kind = stream.name(), why, retry_in_ms = backoff.as_millis() as u64, "push failed");
                        tokio::time::sleep(backoff).await;
                    }
                    Err(Failure::Refused(why)) => {
                        exporter.counters.failures.fetch_add(1, Ordering::Relaxed);
                        exporter.counters.dropped[stream as usize].fetch_add(n as u64, Ordering::Relaxed);
                        warn!(target: "foobar::push", kind = stream.name(), why, records = n, "the collector refused a batch: dropped");
                        exporter.remove(stream, n);
                    }
                }
            }
        }
    }
}

/// Sumo Logic's Prometheus lines: `name{labels} value timestamp_ms`, without comments.
fn sumo_lines(families: &[Family], now_ms: u128) -> Vec<String> {
    let text = crate::metrics::exposition::encode(families, crate::metrics::exposition::Format::Prometheus);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| format!("{l} {now_ms}"))
        .collect()
}

/// Why a request did not succeed.
enum Failure {
    /// 429, 5xx, a timeout or a connection failure: try the same batch again later.
    Retry(String),
    /// Any other status: the collector will not take this batch.
    Refused(String),
}

/// Where and how requests go.
struct Target {
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    host: String,
    port: u16,
    path: String,
    category: Option<String>,
    source_name: String,
    source_host: String,
    timeout: Duration,
}

impl Target {
    fn new(c: &Push, node: &str) -> Result<Self> {
        let CollectorUrl {
            https,
            host,
            port,
            path,
        } = c.url.clone();
        let tls = if https {
            let pem = std::fs::read(&c.ca_file).with_context(|| format!("reading {}", c.ca_file.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile_certs(&pem)? {
                roots.add(cert).context("a CA certificate of the push ca_file")?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone()).context("push url host name")?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            tls,
            host,
            port,
            path,
            category: c.category.clone(),
            source_name: c.source_name.clone().unwrap_or_else(|| "foobar".into()),
            source_host: c.host.clone().unwrap_or_else(|| node.to_owned()),
            timeout: c.timeout,
        })
    }

    /// Sends one gzip-compressed batch; its compressed size when accepted.
    async fn send(&self, stream: Stream, payload: Vec<u8>) -> Result<usize, Failure> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let body = gz
            .write_all(&payload)
            .and_then(|()| gz.finish())
            .map_err(|e| Failure::Refused(format!("compressing: {e}")))?;
        let size = body.len();
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    self.post(tls, stream, body).await
                }
                None => self.post(tcp, stream, body).await,
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(Failure::Retry(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Err(why)) => Err(Failure::Retry(why)),
            Ok(Ok(status)) if status.is_success() => Ok(size),
            Ok(Ok(status)) if status.as_u16() == 429 || status.is_server_error() => {
                Err(Failure::Retry(format!("status {status}")))
            }
            Ok(Ok(status)) => Err(Failure::Refused(format!("status {status}"))),
        }
    }

    async fn post<S>(&self, io: S, stream: Stream, body: Vec<u8>) -> Result<hyper::StatusCode, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let host = if (self.tls.is_some() && self.port == 443) || (self.tls.is_none() && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, stream.content_type())
            .header(hyper::header::CONTENT_ENCODING, "gzip")
            .header("X-Sumo-Name", &self.source_name)
            .header("X-Sumo-Host", &self.source_host);
        if let Some(category) = &self.category {
            request = request.header("X-Sumo-Category", format!("{category}/{}", stream.name()));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        // Read the (short) answer so the exchange completes cleanly.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the push ca_file")
}

/// A tracing layer that hands the access log and events (info and above) to the push
/// exporter, as JSON lines, once one runs with `logs = true`.
pub struct LogLayer;

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        let Some(exporter) = LOG_SINK.get() else {
            return;
        };
        let meta = event.metadata();
        let stream = if meta.target() == "foobar::access" {
            Stream::Access
        } else if *meta.level() <= tracing::Level::INFO && meta.target() != "foobar::push" {
            Stream::Events
        } else {
            return;
        };
        let mut fields = serde_json::Map::new();
        event.record(&mut JsonFields(&mut fields));
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        fields.insert("time".into(), serde_json::json!(time));
        fields.insert("level".into(), serde_json::json!(meta.level().as_str()));
        fields.insert("target".into(), serde_json::json!(meta.target()));
        exporter.add(stream, serde_json::Value::Object(fields).to_string());
    }
}

/// Collects an event's fields into a JSON object.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), serde_json::json!(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), serde_json::json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(limit: usize) -> Exporter {
        Exporter {
            buffer: Mutex::new(Buffer {
                queues: Default::default(),
                bytes: 0,
                limit,
            }),
            counters: Counters::default(),
        }
    }

    #[test]
    fn the_buffer_drops_the_oldest_logs_first_and_counts_them() {
        let e = exporter(100);
        e.add(Stream::Metrics, "m".repeat(39));
        e.add(Stream::Events, "e".repeat(39));
        e.add(Stream::Access, "a".repeat(39));
        assert_eq!(e.counters.dropped[Stream::Events as usize].load(Ordering::Relaxed), 1);
        assert_eq!(e.peek_batch(Stream::Metrics).0, 1);
        assert_eq!(e.peek_batch(Stream::Access).0, 1);
        e.add(Stream::Access, "b".repeat(500));
        assert_eq!(e.counters.dropped[Stream::Access as usize].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn batches_stay_under_the_request_limit() {
        let e = exporter(4 * MAX_REQUEST_BYTES);
        for _ in 0..3000 {
            e.add(Stream::Access, "x".repeat(999));
        }
        let (n, payload) = e.peek_batch(Stream::Access);
        assert!(payload.len() <= MAX_REQUEST_BYTES && n == 1000, "{n} {}", payload.len());
        e.remove(Stream::Access, n);
        assert_eq!(e.peek_batch(Stream::Access).0, 1000);
    }

    #[test]
    fn metric_lines_carry_a_timestamp_and_no_comments() {
        let f = vec![Family::single("foobar_forwarding", Kind::Gauge, "x", 1.0)];
        assert_eq!(sumo_lines(&f, 1700000000000), vec!["foobar_forwarding 1 1700000000000"]);
    }
}
