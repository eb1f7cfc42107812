//! The web tier: HTTPS and HTTP listeners (on the VIP or any address), TLS termination,
//! HTTP/1.1 and HTTP/2 with hyper, virtual hosts serving static files, HTTP-to-HTTPS
//! redirects and HSTS, connection limits, and graceful shutdown with a drain deadline.

pub mod compress;
pub mod files;
pub mod names;
pub mod proxy;
pub mod rate;
pub mod stats;
pub mod tickets;
pub mod tls;

use crate::{
    admission::{Admission, Admitted, Caps},
    config::web::{Certificate, HeaderMatch, Limits, Listener, ListenerKind, Prefix, Web},
    workers::Workers,
};
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use files::Files;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    http::uri::Authority,
    service::service_fn,
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use tracing::{error, info, warn};

/// Response body of the web tier.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A short plain-text page for an error or redirect status.
pub fn status_page(status: StatusCode) -> Response<Body> {
    let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The sites, routed by host name, the upstream pools they proxy to, and the peers trusted to
/// be proxies.
struct Sites {
    names: names::NameTable<Arc<SiteHandle>>,
    default: Arc<SiteHandle>,
    pools: HashMap<String, Arc<proxy::Pool>>,
    trusted_proxies: Vec<Prefix>,
}

struct SiteHandle {
    /// First name, for the access log.
    name: String,
    files: Files,
    hsts: Option<HeaderValue>,
    /// Gzip compressible proxied responses for clients that accept it (`compress`).
    compress: bool,
    /// Proxy rules, longest prefix first.
    proxies: Vec<ProxyRoute>,
    /// Requests served from files, redirected to HTTPS, and refused, by status class.
    served: Arc<stats::ClassCounters>,
    redirected: Arc<stats::ClassCounters>,
    refused: Arc<stats::ClassCounters>,
    rate_limited: Arc<stats::ClassCounters>,
}

/// A path prefix (and maybe a header) proxied to an upstream pool, with its request counters.
struct ProxyRoute {
    prefix: String,
    header: Option<HeaderMatch>,
    pool: Arc<proxy::Pool>,
    requests: Arc<stats::ClassCounters>,
}

impl SiteHandle {
    /// The route of a request: the longest matching prefix, and of equal prefixes one whose
    /// header the request carries before one without a header condition.
    fn proxy_for(&self, path: &str, headers: &header::HeaderMap) -> Option<&ProxyRoute> {
        self.proxies
            .iter()
            .find(|r| path.starts_with(r.prefix.as_str()) && r.header.as_ref().is_none_or(|h| h.matches(headers)))
    }
}

/// The upstream pools of the section: a pool whose `[[web.upstream]]` is unchanged is the
/// running one (its idle connections and its servers' health go on), the others are new.
fn pools(web: &Web, running: Option<&Sites>) -> HashMap<String, Arc<proxy::Pool>> {
    web.upstreams
        .iter()
        .map(|u| {
            let previous = running.and_then(|s| s.pools.get(&u.name));
            let pool = match previous {
                Some(p) if p.config == *u => p.clone(),
                _ => {
                    let pool = proxy::Pool::new(u);
                    // A changed pool keeps what operators drained in it.
                    if let Some(previous) = previous {
                        pool.keep_drains_of(previous);
                    }
                    pool
                }
            };
            (u.name.clone(), pool)
        })
        .collect()
}

impl Sites {
    fn new(web: &Web, pools: HashMap<String, Arc<proxy::Pool>>, counters: &stats::RouteCounters) -> Result<Self> {
        let sites = &web.sites;
        let mut names = names::NameTable::default();
        let mut default = None;
        let default_index = sites.iter().position(|s| s.default).unwrap_or(0);
        for (i, site) in sites.iter().enumerate() {
            let name = site.names.first().cloned().unwrap_or_default();
            let mut proxies: Vec<ProxyRoute> = site
                .proxy_rules
                .iter()
                .map(|r| {
                    let prefix = r.prefix.clone();
                    let label = match &r.header {
                        Some(h) => format!("{prefix} [{}]", h.label()),
                        None => prefix.clone(),
                    };
                    pools
                        .get(&r.upstream)
                        .map(|p| ProxyRoute {
                            requests: counters.get(&name, &label),
                            prefix,
                            header: r.header.clone(),
                            pool: p.clone(),
                        })
                        .with_context(|| format!("upstream {:?} is not configured", r.upstream))
                })
                .collect::<Result<_>>()?;
            proxies.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.header.is_none()));
            let handle = Arc::new(SiteHandle {
                served: counters.get(&name, "static"),
                redirected: counters.get(&name, "redirect"),
                refused: counters.get(&name, "refused"),
                rate_limited: counters.get(&name, "rate_limited"),
                name,
                proxies,
                files: Files::new(site)?,
                compress: site.compress,
                hsts: (site.hsts_max_age_s > 0)
                    .then(|| HeaderValue::from_str(&format!("max-age={}", site.hsts_max_age_s)))
                    .transpose()?,
            });
            for name in &site.names {
                names.insert(name, handle.clone());
            }
            if i == default_index {
                default = Some(handle);
            }
        }
        let trusted_proxies = web.trusted_proxies.clone();
        Ok(Self {
            names,
            default: default.context("no site configured")?,
            pools,
            trusted_proxies,
        })
    }

    fn route(&self, host: Option<&str>) -> &SiteHandle {
        host.and_then(|h| self.names.get(strip_port(h)))
            .unwrap_or(&self.default)
    }
}

/// The host part of a Host header value (`name`, `name:port`, `[v6]:port`).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// How often certificate files are checked for changes.
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

/// What every connection shares.
struct Shared {
    stats: stats::WebStats,
    tls: tls::Tls,
    /// The certificate files in use, watched for changes.
    certificates: ArcSwap<Vec<Certificate>>,
    sites: ArcSwap<Sites>,
    limits: Limits,
    connections: Arc<Admission>,
    /// The per-client request rate limit, when configured.
    rate: Option<rate::RateLimit>,
}

/// A `[web]` section ready to be made live ([`WebTier::prepare`], [`WebTier::commit`]).
pub struct Prepared {
    sites: Sites,
    tls: Arc<rustls::ServerConfig>,
    /// The shared ticket keys, read again.
    ticket_keys: Option<Vec<tickets::TicketKey>>,
    certificates: Vec<Certificate>,
}

/// The running web tier: every worker thread accepts from every listener and serves what it
/// accepts ([`Workers`]). Plus the certificate watcher.
pub struct WebTier {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    pool: Workers,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl WebTier {
    /// Loads certificates and sites, binds every listener and starts serving.
    pub async fn start(web: &Web) -> Result<Self> {
        let limits = web.limits.clone();
        let stats = stats::WebStats::default();
        let sites = Sites::new(web, pools(web, None), &stats.routes)?;
        let shared = Arc::new(Shared {
            stats,
            tls: tls::Tls::new(&web.certificates, ticket_keys(web)?)?,
            certificates: ArcSwap::from_pointee(web.certificates.clone()),
            sites: ArcSwap::from_pointee(sites),
            connections: Admission::new(Caps {
                total: limits.max_connections,
                per_client: limits.max_connections_per_client,
                ipv6_prefix_len: limits.client_ipv6_prefix_len,
            }),
            rate: limits
                .client_request_rate
                .map(|r| rate::RateLimit::new(r, limits.client_ipv6_prefix_len)),
            limits,
        });
        let (shutdown, _) = watch::channel(false);
        let drain = shared.limits.drain_timeout;
        let pool = Workers::start("web", web.workers, drain)?;
        let workers = pool.len();
        // Bind everything first, so a taken port fails the start with its address.
        let listeners: Vec<(std::net::TcpListener, Listener)> = web
            .listeners
            .iter()
            .map(|l| Ok((crate::listen::bind(l.address)?, l.clone())))
            .collect::<Result<_>>()?;
        for (listener, config) in listeners {
            let (shared, stopping) = (shared.clone(), shutdown.subscribe());
            info!(address = %config.address, kind = ?config.kind, workers, "web listener up");
            pool.accept(&listener, move |stream, peer: SocketAddr| {
                let (config, shared, stopping) = (config.clone(), shared.clone(), stopping.clone());
                async move {
                    // Over a connection limit: closed at once.
                    if let Some(admitted) = shared.connections.admit(peer.ip()) {
                        connection(stream, peer, config, shared, stopping, admitted).await;
                    }
                }
            })?;
        }
        let watcher = (!web.certificates.is_empty())
            .then(|| tokio::spawn(watch_certificates(shared.clone(), shutdown.subscribe())));
        Ok(Self {
            shared,
            shutdown,
            pool,
            watcher,
        })
    }

    /// Builds what a new `[web]` section needs (certificates, sites, pools) without touching
    /// the running tier; listeners, workers and limits are restart-only (`reload::RESTART_ONLY`).
    pub fn prepare(&self, web: &Web) -> Result<Prepared> {
        let running = self.shared.sites.load();
        let sites = Sites::new(web, pools(web, Some(&running)), &self.shared.stats.routes)?;
        let tls = self.shared.tls.prepare(&web.certificates)?;
        Ok(Prepared {
            sites,
            tls,
            ticket_keys: ticket_keys(web)?,
            certificates: web.certificates.clone(),
        })
    }

    /// Makes a prepared section live: new handshakes use its certificates and new requests its
    /// sites at once; requests in flight finish on what they started with.
    pub fn commit(&self, prepared: Prepared) {
        self.shared.tls.commit(prepared.tls);
        if let Some(keys) = prepared.ticket_keys {
            self.shared.tls.set_ticket_keys(keys);
        }
        self.shared.certificates.store(Arc::new(prepared.certificates));
        self.shared.sites.store(Arc::new(prepared.sites));
    }

    /// Drains (`true`) or enables server `server` of upstream `upstream`: Ok(whether that
    /// changed anything), or why not.
    pub fn set_drained(&self, upstream: &str, server: SocketAddr, drained: bool) -> Result<bool, String> {
        let sites = self.shared.sites.load();
        let pool = sites.pools.get(upstream).ok_or_else(|| {
            let mut names: Vec<&str> = sites.pools.keys().map(String::as_str).collect();
            names.sort_unstable();
            format!("no upstream {upstream:?} (upstreams: {})", names.join(", "))
        })?;
        pool.set_drained(server, drained).ok_or_else(|| {
            let servers: Vec<String> = pool.addresses().iter().map(ToString::to_string).collect();
            format!(
                "upstream {upstream} has no server {server} (servers: {})",
                servers.join(", ")
            )
        })
    }

    /// Reads the counters, for status and metrics (lives as long as the caller keeps it).
    pub fn summary_source(&self) -> Arc<dyn Fn() -> stats::WebSummary + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || {
            let open = shared.connections.open();
            let mut summary = shared.stats.summary(open as u64);
            let sites = shared.sites.load();
            let mut upstreams: Vec<_> = sites.pools.values().map(|p| p.status()).collect();
            upstreams.sort_by(|a, b| a.name.cmp(&b.name));
            summary.upstreams = upstreams;
            summary
        })
    }

    /// Stops accepting, asks open connections to finish (HTTP/2 GOAWAY, HTTP/1.1 closes after
    /// the current response) and waits for them up to the drain deadline.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
        // Workers stop accepting, drain their own connections up to the deadline, then close
        // the rest.
        self.pool.stop().await;
    }
}

/// The shared session ticket keys of `[web] ticket_keys`, when configured.
fn ticket_keys(web: &Web) -> Result<Option<Vec<tickets::TicketKey>>> {
    web.ticket_keys.as_deref().map(tickets::read_keys).transpose()
}

/// Modification times of every certificate and key file (None: unreadable).
fn stamps(certificates: &[Certificate]) -> Vec<Option<std::time::SystemTime>> {
    certificates
        .iter()
        .flat_map(|c| [&c.chain, &c.key])
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads the certificates when their files change (a renewal writing chain and key one
/// after the other is refused once, then accepted on the next look).
async fn watch_certificates(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut seen = stamps(&shared.certificates.load());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let certificates = shared.certificates.load_full();
        let now = stamps(&certificates);
        if now == seen {
            continue;
        }
        seen = now;
        match shared.tls.prepare(&certificates) {
            // A reload that changed the certificate list meanwhile has loaded the files itself.
            Ok(config) if Arc::ptr_eq(&certificates, &shared.certificates.load_full()) => {
                shared.tls.commit(config);
                info!("certificates reloaded after a file change");
            }
            Ok(_) => {}
            Err(e) => error!("changed certificate files refused, the previous certificates keep serving: {e:#}"),
        }
    }
}

/// Serves one connection: TLS handshake (bounded by the header timeout), then HTTP/2 when ALPN
/// chose it and HTTP/1.1 otherwise.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Listener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _admitted: Admitted,
) {
    let header_timeout = shared.limits.header_read_timeout;
    if config.kind != ListenerKind::Tls {
        let conn = Conn {
            peer,
            tls: None,
            redirect: config.kind == ListenerKind::RedirectToHttps,
        };
        serve_http(stream, false, conn, shared, shutdown).await;
        return;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.config());
    let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) | Err(_) => {
            shared.stats.handshake(None);
            return;
        }
    };
    let session = tls.get_ref().1;
    let h2 = session.alpn_protocol() == Some(b"h2");
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    shared.stats.handshake(Some(version));
    let conn = Conn {
        peer,
        tls: Some(version),
        redirect: false,
    };
    serve_http(tls, h2, conn, shared, shutdown).await;
}

/// What a request handler knows of its connection.
#[derive(Clone, Copy)]
struct Conn {
    peer: SocketAddr,
    /// The TLS version, on HTTPS connections.
    tls: Option<&'static str>,
    /// A plain listener that redirects everything to HTTPS.
    redirect: bool,
}

async fn serve_http<S>(io: S, h2: bool, conn: Conn, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits.clone();
    let draining = shutdown.clone();
    // HTTP/2 only: told of the first request (HTTP/1.1 has hyper's header read timeout).
    let first_request = h2.then(|| Arc::new(tokio::sync::Notify::new()));
    let seen = first_request.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (shared, draining) = (shared.clone(), draining.clone());
        if let Some(seen) = &seen {
            seen.notify_one();
        }
        async move {
            let mut response = handle(req, &shared, conn).await;
            // While draining, an HTTP/1.1 response says it is the connection's last: the
            // client opens a new connection for its next request (to the process that took
            // over the listener) instead of finding this one closed under it.
            if !h2 && *draining.borrow() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256))
            .keep_alive_interval(Some(limits.idle_timeout))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = builder.serve_connection(io, service);
        // The head of the first request within header_read_timeout_ms, as on HTTP/1.1: a
        // client that sends no preface, or a preface and nothing more, is closed.
        let deadline = limits.header_read_timeout;
        tokio::select! {
            _ = until_done_or_drained(conn, &mut shutdown, Duration::ZERO, |c| c.graceful_shutdown()) => {}
            _ = async {
                // Returns only when no request came in time; else waits for ever.
                if let Some(first) = &first_request {
                    if tokio::time::timeout(deadline, first.notified()).await.is_err() {
                        return;
                    }
                }
                std::future::pending::<()>().await
            } => tracing::debug!("an HTTP/2 connection sent no request within the header read timeout: closed"),
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service).with_upgrades();
        let grace = CLOSE_ON_RESPONSE_GRACE.min(limits.drain_timeout);
        until_done_or_drained(conn, &mut shutdown, grace, |c| c.graceful_shutdown()).await;
    }
}

/// How long a draining HTTP/1.1 connection may go on before it is closed where it stands: a
/// busy keep-alive client's next request gets a `Connection: close` response in this time,
/// which it follows cleanly (closing under it could lose a request already on the wire).
const CLOSE_ON_RESPONSE_GRACE: Duration = Duration::from_secs(1);

/// Runs a connection to its end; on shutdown gives it `grace` to end by itself, then starts
/// its graceful end (`drain`: GOAWAY, or close after the current response) and waits for it.
async fn until_done_or_drained<C: std::future::Future>(
    conn: C,
    shutdown: &mut watch::Receiver<bool>,
    grace: Duration,
    drain: impl FnOnce(std::pin::Pin<&mut C>),
) {
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.changed() => {}
    }
    if tokio::time::timeout(grace, conn.as_mut()).await.is_ok() {
        return;
    }
    drain(conn.as_mut());
    let _ = conn.await;
}

/// Answers one request and writes its access-log line.
async fn handle(req: Request<Incoming>, shared: &Shared, conn: Conn) -> Response<Body> {
    let started = std::time::Instant::now();
    // Cheap clones (shared buffers): the request itself moves on to its handler.
    let uri = req.uri().clone();
    let host_header = req.headers().get(header::HOST).cloned();
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_header.as_ref().and_then(|h| h.to_str().ok()));
    let method = req.method().clone();
    let path = uri.path();
    let sites = shared.sites.load();
    let site = sites.route(host);
    let mut upstream = None;
    let mut route = &site.served;
    let hops = max_forwards(&method, req.headers());
    let refusal = smuggling_shape(req.version(), req.headers())
        .or_else(|| host_problem(req.version(), uri.authority(), req.headers()))
        .or_else(|| hops.err());
    let mut response = if let Some(why) = refusal {
        warn!(client = %conn.peer.ip(), why, "request refused");
        route = &site.refused;
        let mut r = status_page(StatusCode::BAD_REQUEST);
        // The framing is in doubt: never read another request from this connection.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else if let Some(wait) = shared.rate.as_ref().and_then(|r| r.admit(conn.peer.ip()).err()) {
        route = &site.rate_limited;
        too_many_requests(wait)
    } else if conn.redirect {
        route = &site.redirected;
        redirect_to_https(host, &req)
    } else if let Some(answer) = answered_here(&method, hops.ok().flatten()) {
        answer
    } else if let Some(proxied) = site.proxy_for(path, req.headers()) {
        route = &proxied.requests;
        let client = conn.peer.ip();
        let origin = proxy::Origin {
            client,
            trusted: sites.trusted_proxies.iter().any(|p| p.contains(client)),
            https: conn.tls.is_some(),
            host,
        };
        let gzip = site.compress && method != Method::HEAD && compress::accepts_gzip(req.headers());
        let outcome = proxied
            .pool
            .forward(
                req,
                &origin,
                shared.limits.max_request_body_bytes,
                shared.limits.upgrade_idle_timeout,
            )
            .await;
        if let Some(kind) = outcome.error {
            shared.stats.upstream_error(kind);
        }
        upstream = outcome.upstream;
        if gzip {
            compress::gzip_response(outcome.response)
        } else {
            outcome.response
        }
    } else {
        site.files.serve(&method, path, req.headers()).await
    };
    let h = response.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("foobar"));
    if conn.tls.is_some() {
        if let Some(hsts) = &site.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
    let bytes = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let took = started.elapsed();
    shared.stats.request(route, response.status().as_u16(), took);
    info!(
        target: "foobar::access",
        client = %conn.peer.ip(),
        vhost = site.name,
        method = %method,
        path,
        status = response.status().as_u16(),
        bytes,
        duration_us = took.as_micros() as u64,
        upstream = upstream.map(|u| u.to_string()),
        tls = conn.tls,
    );
    response
}

/// Why a request's framing headers could be read two ways (request smuggling), if they can:
/// both Content-Length and Transfer-Encoding, several Content-Lengths, a Transfer-Encoding
/// other than exactly `chunked`, or any in an HTTP/1.0 request (RFC 9112 §6.1: its framing is
/// faulty). (hyper already refuses obs-fold and malformed lengths.)
fn smuggling_shape(version: Version, headers: &header::HeaderMap) -> Option<&'static str> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let encodings: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if version == Version::HTTP_10 && !encodings.is_empty() {
        return Some("Transfer-Encoding in an HTTP/1.0 request");
    }
    if lengths > 0 && !encodings.is_empty() {
        return Some("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return Some("more than one Content-Length");
    }
    match encodings.as_slice() {
        [] => None,
        [one] if one.as_bytes().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some("a Transfer-Encoding other than chunked"),
    }
}

/// What RFC 9112 §3.2 says a server must answer 400 to about the target host, if anything: an
/// HTTP/1.1 request without a Host header, one with several, or one whose Host is not a host
/// and optional port (userinfo included). With an absolute-form target the target's
/// authority counts and Host is ignored, as the RFC says.
fn host_problem(version: Version, authority: Option<&Authority>, headers: &header::HeaderMap) -> Option<&'static str> {
    let hosts: Vec<&HeaderValue> = headers.get_all(header::HOST).iter().collect();
    match hosts.as_slice() {
        [] if version == Version::HTTP_11 && authority.is_none() => Some("an HTTP/1.1 request without Host"),
        [] => None,
        [_, _, ..] => Some("more than one Host"),
        // HTTP/2: a Host naming another entity than :authority (RFC 9113 §8.3.1).
        [one]
            if version == Version::HTTP_2
                && authority.is_some_and(|a| !one.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())) =>
        {
            Some("a Host that differs from :authority")
        }
        [_] if authority.is_some() => None,
        [one] => {
            // `http` parses the port leniently: after the host (an IPv6 literal is bracketed)
            // only digits may follow the colon (RFC 3986: port = *DIGIT).
            let text = String::from_utf8_lossy(one.as_bytes());
            let port = match text.rfind(']') {
                Some(end) => text[end + 1..].strip_prefix(':'),
                None => text.rsplit_once(':').map(|(_, port)| port),
            };
            let valid = !one.is_empty()
                && !one.as_bytes().contains(&b'@')
                && Authority::try_from(one.as_bytes()).is_ok()
                && port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()));
            (!valid).then_some("a Host that is not a host and port")
        }
    }
}

/// The methods the edge lets through, for `Allow`: never TRACE (it would echo the client's
/// credentials back to a script) or CONNECT (a reverse proxy opens no tunnels).
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// An OPTIONS request's Max-Forwards (RFC 9110 §7.6.2; other methods ignore it): none, or
/// the hops left; an invalid value is refused.
fn max_forwards(method: &Method, headers: &header::HeaderMap) -> Result<Option<u32>, &'static str> {
    if method != Method::OPTIONS {
        return Ok(None);
    }
    let mut values = headers.get_all(header::MAX_FORWARDS).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(one), None) => std::str::from_utf8(one.as_bytes())
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(|v| Some(v.parse::<u32>().unwrap_or(u32::MAX)))
            .ok_or("an invalid Max-Forwards"),
        (Some(_), Some(_)) => Err("more than one Max-Forwards"),
    }
}

/// What the edge answers itself instead of serving or proxying: TRACE and CONNECT (405), and
/// an OPTIONS whose Max-Forwards (`hops`, from [`max_forwards`]) is 0: the edge is its final
/// recipient (RFC 9110 §7.6.2).
fn answered_here(method: &Method, hops: Option<u32>) -> Option<Response<Body>> {
    let status = if method == Method::TRACE || method == Method::CONNECT {
        StatusCode::METHOD_NOT_ALLOWED
    } else if hops == Some(0) {
        StatusCode::OK
    } else {
        return None;
    };
    let mut response = if status == StatusCode::OK {
        Response::new(full(Vec::new()))
    } else {
        status_page(status)
    };
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    Some(response)
}

/// 429 for a client over its request rate, with the whole seconds until it may ask again.
fn too_many_requests(wait: Duration) -> Response<Body> {
    let mut response = status_page(StatusCode::TOO_MANY_REQUESTS);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

fn redirect_to_https(host: Option<&str>, req: &Request<Incoming>) -> Response<Body> {
    let Some(host) = host else {
        return status_page(StatusCode::BAD_REQUEST);
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut response = status_page(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::from_str(&format!("https://{}{path}", strip_port(host))) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => status_page(StatusCode::BAD_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smuggling_shapes_are_named() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = header::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            m
        };
        assert_eq!(
            smuggling_shape(Version::HTTP_11, &h(&[("transfer-encoding", "Chunked")])),
            None
        );
        assert_eq!(smuggling_shape(Version::HTTP_11, &h(&[("content-length", "3")])), None);
        assert!(smuggling_shape(
            Version::HTTP_11,
            &h(&[("content-length", "3"), ("transfer-encoding", "chunked")])
        )
        .is_some());
        assert!(smuggling_shape(
            Version::HTTP_11,
            &h(&[("content-length", "3"), ("content-length", "3")])
        )
        .is_some());
        assert!(smuggling_shape(Version::HTTP_11, &h(&[("transfer-encoding", "gzip, chunked")])).is_some());
        assert!(smuggling_shape(
            Version::HTTP_11,
            &h(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")])
        )
        .is_some());
    }

    #[test]
    fn http_1_0_framing_and_options_hops_are_checked() {
        let mut te = header::HeaderMap::new();
        te.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(smuggling_shape(Version::HTTP_11, &te), None);
        assert!(smuggling_shape(Version::HTTP_10, &te).is_some());
        let hops = |values: &[&str]| {
            let mut m = header::HeaderMap::new();
            for v in values {
                m.append(header::MAX_FORWARDS, HeaderValue::from_str(v).expect("value"));
            }
            m
        };
        assert_eq!(max_forwards(&Method::OPTIONS, &hops(&[])), Ok(None));
        assert_eq!(max_forwards(&Method::OPTIONS, &hops(&["0"])), Ok(Some(0)));
        assert_eq!(
            max_forwards(&Method::OPTIONS, &hops(&["99999999999"])),
            Ok(Some(u32::MAX))
        );
        assert_eq!(
            max_forwards(&Method::GET, &hops(&["x"])),
            Ok(None),
            "only OPTIONS counts hops"
        );
        for bad in [&["-1"][..], &["1 "], &[""], &["1", "2"]] {
            assert!(max_forwards(&Method::OPTIONS, &hops(bad)).is_err(), "{bad:?}");
        }
        let answered = |method: Method, values: &[&str]| {
            let left = max_forwards(&method, &hops(values)).ok().flatten();
            answered_here(&method, left).map(|r| r.status())
        };
        assert_eq!(answered(Method::OPTIONS, &["0"]), Some(StatusCode::OK));
        assert_eq!(answered(Method::OPTIONS, &["1"]), None);
        assert_eq!(answered(Method::TRACE, &[]), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(answered(Method::CONNECT, &[]), Some(StatusCode::METHOD_NOT_ALLOWED));
        assert_eq!(answered(Method::GET, &[]), None);
    }

    #[test]
    fn requests_without_one_valid_host_are_named() {
        let hosts = |values: &[&str]| {
            let mut m = header::HeaderMap::new();
            for v in values {
                m.append(header::HOST, HeaderValue::from_str(v).expect("value"));
            }
            m
        };
        let v11 = Version::HTTP_11;
        assert_eq!(host_problem(v11, None, &hosts(&["www.foobar.com:443"])), None);
        assert_eq!(host_problem(v11, None, &hosts(&["[2001:db8::1]"])), None);
        assert_eq!(host_problem(v11, None, &hosts(&["[2001:db8::1]:8443"])), None);
        assert_eq!(host_problem(Version::HTTP_10, None, &hosts(&[])), None);
        assert!(host_problem(v11, None, &hosts(&[])).is_some());
        assert!(host_problem(v11, None, &hosts(&["a", "a"])).is_some());
        for bad in ["", "a b", "user@www.foobar.com", "www.foobar.com:port", "/path"] {
            assert!(host_problem(v11, None, &hosts(&[bad])).is_some(), "{bad:?}");
        }
        let target = Authority::from_static("www.foobar.com");
        assert_eq!(host_problem(v11, Some(&target), &hosts(&[])), None, "absolute form");
        assert_eq!(host_problem(v11, Some(&target), &hosts(&["whatever else"])), None);
        let h2 = Version::HTTP_2;
        assert_eq!(host_problem(h2, Some(&target), &hosts(&[])), None);
        assert_eq!(host_problem(h2, Some(&target), &hosts(&["WWW.foobar.com"])), None);
        assert!(host_problem(h2, Some(&target), &hosts(&["evil.example"])).is_some());
    }

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("www.foobar.com:443"), "www.foobar.com");
        assert_eq!(strip_port("www.foobar.com"), "www.foobar.com");
        assert_eq!(strip_port("[2001:db8::1]:8443"), "2001:db8::1");
    }
}
