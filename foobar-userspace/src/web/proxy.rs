//! Reverse proxy to upstream pools (the application servers): keep-alive connections pooled per
//! worker thread,
//! round-robin or least-requests, passive health (a failed connection takes a server out for
//! `fail_timeout_ms`) and optional active HTTP checks, connect and read timeouts, retries only
//! for idempotent requests without a body after a connect failure, X-Forwarded-* and RFC 7239
//! Forwarded, hop-by-hop headers stripped, Upgrade (WebSocket) passed through, bodies streamed
//! both ways with a size limit. Upstream trouble is answered with 502, 503 or 504, never a hang.

use super::{stats::UpstreamError, status_page, Body};
use crate::{
    config::web::{Balancing, HashKey, Upstream},
    health, relay,
};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Limited};
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::uri::{Parts as UriParts, PathAndQuery},
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::rt::TokioIo;
use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

/// Buffer size of each direction of an upgraded connection's relay.
const UPGRADE_BUFFER: usize = 16 * 1024;

/// Body of a request sent upstream.
type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1); `Upgrade` passes only
/// while protocols are being switched.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One server of a pool.
struct Server {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Passive health: out of rotation until this instant (ms since the pool's start).
    down_until_ms: AtomicU64,
    /// Active health (true without active checks).
    up: AtomicBool,
    /// Drained by an operator (`foobar upstream drain`): no new requests.
    drained: AtomicBool,
}

/// An upstream pool as status shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamStatus {
    /// The `[[web.upstream]]` name.
    pub name: String,
    /// Its servers, in configuration order.
    pub servers: Vec<UpstreamServerStatus>,
}

/// One server of an upstream pool as status shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamServerStatus {
    /// Its address.
    pub address: SocketAddr,
    /// Passing its active checks (always, without them).
    pub up: bool,
    /// Out of rotation for `fail_timeout_ms` after a failed connection (passive health).
    pub failed_recently: bool,
    /// Drained by an operator (`foobar upstream drain`).
    #[serde(default)]
    pub drained_by_operator: bool,
    /// Requests it is answering now.
    pub in_flight: u64,
}

impl UpstreamServerStatus {
    /// Whether new requests may go to it.
    pub fn in_rotation(&self) -> bool {
        self.up && !self.failed_recently && !self.drained_by_operator
    }
}

/// An upstream pool.
pub struct Pool {
    /// Its name.
    pub name: String,
    /// The section it was built from (a reload keeps the pool while this is unchanged).
    pub config: Upstream,
    servers: Vec<Arc<Server>>,
    balance: Balancing,
    /// Each server's place in the rendezvous hash, and its value of the sticky cookie.
    server_keys: Vec<u64>,
    /// The sticky cookie's name and each server's value for it.
    sticky: Option<(String, Vec<String>)>,
    next: AtomicUsize,
    /// Identifies the pool in each worker thread's table of idle connections.
    id: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    read_timeout: Duration,
    fail_timeout: Duration,
    epoch: Instant,
    checks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for check in &self.checks {
            check.abort();
        }
        // Workers drop their clients of this pool when they next build one.
        if let Ok(mut live) = LIVE_POOLS.lock() {
            live.retain(|id| *id != self.id);
        }
    }
}

/// Who asked, for the forwarding headers and the access log.
pub struct Origin<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The client is a trusted proxy: its forwarding headers are kept and appended to.
    pub trusted: bool,
    /// Whether the request came over TLS.
    pub https: bool,
    /// The Host the client asked for.
    pub host: Option<&'a str>,
}

/// How a proxied request ended, for the access log.
pub struct Outcome {
    /// The response.
    pub response: Response<Body>,
    /// The server that answered (or was last tried).
    pub upstream: Option<SocketAddr>,
    /// Why the request failed upstream, if it did.
    pub error: Option<UpstreamError>,
}

/// Keeps a server's in-flight count up while a response is being streamed.
struct InFlight(Arc<Server>);

impl InFlight {
    fn start(server: &Arc<Server>) -> Self {
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(server.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body that holds its server's in-flight slot until it ends, and then
/// returns the connection to the idle list.
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
    checkin: Option<Checkin>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some(checkin) = self.checkin.take() {
                checkin.put_back();
            }
        }
        polled.map_err(std::io::Error::other)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/1.1 connection to an upstream server.
type Sender = hyper::client::conn::http1::SendRequest<UpstreamBody>;

/// Idle connections by (pool id, server index), with when each went idle.
type IdleConnections = std::collections::HashMap<(usize, usize), Vec<(Sender, Instant)>>;

thread_local! {
    /// Each worker thread's idle upstream connections by (pool id, server index), the most
    /// recently used last: a connection serves the thread (and runtime) that opened it, so a
    /// request never wakes another thread.
    static IDLE: std::cell::RefCell<IdleConnections> = std::cell::RefCell::new(IdleConnections::new());
}

/// Pool ids.
static POOL_IDS: AtomicUsize = AtomicUsize::new(0);
/// Ids of the pools that exist: a thread drops idle connections of other pools when it opens
/// a new one.
static LIVE_POOLS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// A connection on its way back to the idle list once its response has been read.
struct Checkin {
    key: (usize, usize),
    sender: Sender,
    max_idle: usize,
}

impl Checkin {
    fn put_back(self) {
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < self.max_idle {
                list.push((self.sender, Instant::now()));
            }
        });
    }
}

/// Why an exchange with a server failed.
enum SendFailure {
    /// No connection could be made.
    Connect(String),
    /// A reused idle connection failed before any response: the server had closed it.
    Stale(hyper::Error),
    /// The exchange failed.
    Exchange(hyper::Error),
}

impl Pool {
    /// Sends `req` to server `i` on an idle connection of this thread, or a new one.
    async fn send(
        &self,
        i: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Checkin), SendFailure> {
        let key = (self.id, i);
        let checkin = |sender| Checkin {
            key,
            sender,
            max_idle: self.max_idle,
        };
        while let Some((mut sender, since)) = IDLE.with(|idle| idle.borrow_mut().get_mut(&key).and_then(Vec::pop)) {
            if since.elapsed() > self.idle_timeout || sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, checkin(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendFailure::Stale(e.into_error())),
                },
            }
        }
        let live = LIVE_POOLS.lock().map(|l| l.clone()).unwrap_or_default();
        IDLE.with(|idle| idle.borrow_mut().retain(|(pool, _), _| live.contains(pool)));
        let addr = self.servers[i].addr;
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendFailure::Connect(e.to_string())),
            Err(_) => return Err(SendFailure::Connect("connect timed out".into())),
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendFailure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let response = sender.send_request(req).await.map_err(SendFailure::Exchange)?;
        Ok((response, checkin(sender)))
    }

    /// Builds a pool and starts its active checks, if any.
    pub fn new(u: &Upstream) -> Arc<Self> {
        let id = POOL_IDS.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = LIVE_POOLS.lock() {
            live.push(id);
        }

        let servers: Vec<Arc<Server>> = u
            .servers
            .iter()
            .map(|addr| {
                Arc::new(Server {
                    addr: *addr,
                    in_flight: AtomicUsize::new(0),
                    down_until_ms: AtomicU64::new(0),
                    up: AtomicBool::new(true),
                    drained: AtomicBool::new(false),
                })
            })
            .collect();
        let checks = match &u.health {
            Some(check) => servers
                .iter()
                .map(|s| tokio::spawn(active_check(u.name.clone(), s.clone(), check.clone())))
                .collect(),
            None => Vec::new(),
        };
        // A server's key and cookie value depend only on the pool's name and its address, so
        // every edge agrees on them.
        let digests: Vec<[u8; 32]> = u
            .servers
            .iter()
            .map(|addr| {
                let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                d.update(u.name.as_bytes());
                d.update(addr.to_string().as_bytes());
                let mut out = [0; 32];
                out.copy_from_slice(d.finish().as_ref());
                out
            })
            .collect();
        let server_keys = digests
            .iter()
            .map(|d| u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]))
            .collect();
        let sticky = u.sticky_cookie.as_ref().map(|name| {
            let values = digests
                .iter()
                .map(|d| d[8..16].iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            (name.clone(), values)
        });
        Arc::new(Self {
            name: u.name.clone(),
            config: u.clone(),
            servers,
            balance: u.balance.clone(),
            server_keys,
            sticky,
            next: AtomicUsize::new(0),
            id,
            connect_timeout: u.connect_timeout,
            idle_timeout: u.pool_idle_timeout,
            max_idle: u.pool_max_idle,
            read_timeout: u.read_timeout,
            fail_timeout: u.fail_timeout,
            epoch: Instant::now(),
            checks,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Drains (no new requests; those in flight finish) or enables `server`; Some(whether
    /// that changed anything), None when the pool has no such server.
    pub fn set_drained(&self, server: SocketAddr, drained: bool) -> Option<bool> {
        let s = self.servers.iter().find(|s| s.addr == server)?;
        Some(s.drained.swap(drained, Ordering::Relaxed) != drained)
    }

    /// Carries the operator's drains of `running` (the pool this one replaces) over.
    pub fn keep_drains_of(&self, running: &Pool) {
        for s in running.servers.iter().filter(|s| s.drained.load(Ordering::Relaxed)) {
            let _ = self.set_drained(s.addr, true);
        }
    }

    /// The servers' addresses.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// Where each server stands now, for status and the metrics.
    pub fn status(&self) -> UpstreamStatus {
        let now = self.now_ms();
        UpstreamStatus {
            name: self.name.clone(),
            servers: self
                .servers
                .iter()
                .map(|s| UpstreamServerStatus {
                    address: s.addr,
                    up: s.up.load(Ordering::Relaxed),
                    failed_recently: s.down_until_ms.load(Ordering::Relaxed) > now,
                    drained_by_operator: s.drained.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed) as u64,
                })
                .collect(),
        }
    }

    /// What a request brings to the choice of its server: the server its sticky cookie names,
    /// and its hash key (with `balance = "hash"`: the header, cookie or client address).
    fn affinity(&self, headers: &HeaderMap, client: IpAddr) -> Affinity {
        let sticky = self.sticky.as_ref().and_then(|(name, values)| {
            let value = cookie(headers, name)?;
            values.iter().position(|v| v == value)
        });
        let key = match &self.balance {
            Balancing::Hash(key) => {
                let client_bytes = match client {
                    IpAddr::V4(a) => a.octets().to_vec(),
                    IpAddr::V6(a) => a.octets().to_vec(),
                };
                let chosen = match key {
                    HashKey::Client => None,
                    HashKey::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
                    HashKey::Cookie(name) => cookie(headers, name).map(str::as_bytes),
                };
                Some(key_hash(chosen.unwrap_or(&client_bytes)))
            }
            _ => None,
        };
        Affinity { sticky, key }
    }

    /// A healthy server not in `tried`: the one the request's sticky cookie names if it is in
    /// rotation, else as `balance` says.
    fn pick(&self, tried: &[usize], affinity: &Affinity) -> Option<usize> {
        let now = self.now_ms();
        let usable = |i: &usize| {
            let s = &self.servers[*i];
            !tried.contains(i)
                && s.up.load(Ordering::Relaxed)
                && !s.drained.load(Ordering::Relaxed)
                && s.down_until_ms.load(Ordering::Relaxed) <= now
        };
        if let Some(i) = affinity.sticky.filter(usable) {
            return Some(i);
        }
        let n = self.servers.len();
        if let (Balancing::Hash(_), Some(key)) = (&self.balance, affinity.key) {
            // Rendezvous: the highest score wins, so a server leaving moves only its own keys.
            return (0..n).filter(usable).max_by_key(|i| mix64(key ^ self.server_keys[*i]));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotation = (0..n).map(|k| (start + k) % n).filter(usable);
        match self.balance {
            Balancing::LeastRequests => rotation.min_by_key(|i| self.servers[*i].in_flight.load(Ordering::Relaxed)),
            _ => rotation.into_iter().next(),
        }
    }

    /// The sticky cookie for a response from server `i`, unless the request carried it.
    fn sticky_cookie(&self, i: usize, affinity: &Affinity, https: bool) -> Option<HeaderValue> {
        let (name, values) = self.sticky.as_ref()?;
        if affinity.sticky == Some(i) {
            return None;
        }
        let secure = if https { "; Secure" } else { "" };
        HeaderValue::from_str(&format!("{name}={}; Path=/; HttpOnly; SameSite=Lax{secure}", values[i])).ok()
    }

    fn mark_failed(&self, i: usize) {
        let until = self.now_ms() + self.fail_timeout.as_millis() as u64;
        self.servers[i].down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Forwards a request and returns the upstream's response, or 502/503/504/413.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        origin: &Origin<'_>,
        max_body: u64,
        upgrade_idle: Duration,
    ) -> Outcome {
        let fail = |status, error| Outcome {
            response: status_page(status),
            upstream: None,
            error,
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return fail(StatusCode::PAYLOAD_TOO_LARGE, None);
        }
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        // Whatever the framing (a length, chunks, or HTTP/2 DATA frames without a length), a
        // request has a body unless its stream has already ended.
        let has_body = !body.is_end_stream();
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        );
        // Without a body the request can be sent again; with one it is streamed once.
        let mut body = Some(body);
        let retryable = idempotent && !has_body && !upgrade;
        // Origin form upstream: the path and query only.
        let mut origin_form = UriParts::default();
        origin_form.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let Ok(uri) = Uri::from_parts(origin_form) else {
            return fail(StatusCode::BAD_REQUEST, Some(UpstreamError::Failed));
        };

        let affinity = self.affinity(&parts.headers, origin.client);
        let mut tried = Vec::new();
        loop {
            let Some(i) = self.pick(&tried, &affinity) else {
                return if tried.is_empty() {
                    fail(StatusCode::SERVICE_UNAVAILABLE, Some(UpstreamError::NoServer))
                } else {
                    fail(StatusCode::BAD_GATEWAY, Some(UpstreamError::Failed))
                };
            };
            tried.push(i);
            let server = self.servers[i].clone();
            let upstream_body: UpstreamBody = match (retryable, body.take()) {
                (false, Some(b)) => Limited::new(b, max_body as usize).boxed(),
                _ => Empty::new().map_err(|never| match never {}).boxed(),
            };
            let mut upstream_req = Request::new(upstream_body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = uri.clone();
            *upstream_req.version_mut() = Version::HTTP_11;
            // Built for each attempt (a retry is rare) rather than cloned for every request.
            *upstream_req.headers_mut() = forward_headers(&parts.headers, origin, upgrade);
            if parts.method == Method::OPTIONS {
                count_hop(upstream_req.headers_mut());
            }
            let in_flight = InFlight::start(&server);
            let sent = tokio::time::timeout(self.read_timeout, self.send(i, upstream_req)).await;
            let (response, checkin) = match sent {
                Ok(Ok(done)) => done,
                Ok(Err(SendFailure::Connect(why))) => {
                    self.mark_failed(i);
                    warn!(upstream = self.name, server = %server.addr, why, "connecting upstream failed");
                    if retryable {
                        continue;
                    }
                    return Outcome {
                        response: status_page(StatusCode::BAD_GATEWAY),
                        upstream: Some(server.addr),
                        error: Some(UpstreamError::Failed),
                    };
                }
                Ok(Err(SendFailure::Stale(e))) if retryable => {
                    // The server closed an idle connection as we reused it: try again afresh.
                    warn!(upstream = self.name, server = %server.addr, error = %error_chain(&e), "reused upstream connection was closed");
                    tried.pop();
                    continue;
                }
                Ok(Err(SendFailure::Stale(e) | SendFailure::Exchange(e))) if e.is_user() => {
                    // The client's own body failed (over the limit, a bad chunk, gone): its
                    // fault, not the server's, which stays in rotation.
                    let large = too_large(&e);
                    return Outcome {
                        response: status_page(if large {
                            StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        }),
                        upstream: Some(server.addr),
                        error: None,
                    };
                }
                Ok(Err(SendFailure::Stale(e) | SendFailure::Exchange(e))) => {
                    self.mark_failed(i);
                    warn!(upstream = self.name, server = %server.addr, error = %error_chain(&e), "upstream request failed");
                    return Outcome {
                        response: status_page(StatusCode::BAD_GATEWAY),
                        upstream: Some(server.addr),
                        error: Some(UpstreamError::Failed),
                    };
                }
                Err(_) => {
                    warn!(upstream = self.name, server = %server.addr, "upstream did not answer in time");
                    return Outcome {
                        response: status_page(StatusCode::GATEWAY_TIMEOUT),
                        upstream: Some(server.addr),
                        error: Some(UpstreamError::Timeout),
                    };
                }
            };
            let mut response = self.relay(response, client_upgrade, in_flight, checkin, upgrade_idle);
            if let Some(cookie) = self.sticky_cookie(i, &affinity, origin.https) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            return Outcome {
                response,
                upstream: Some(server.addr),
                error: None,
            };
        }
    }

    /// Turns the upstream's response into ours; a 101 joins the two upgraded connections.
    fn relay(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        in_flight: InFlight,
        checkin: Checkin,
        upgrade_idle: Duration,
    ) -> Response<Body> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            if let Some(client_side) = client_upgrade {
                let upstream_side = hyper::upgrade::on(&mut response);
                let name = self.name.clone();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    match tokio::try_join!(client_side, upstream_side) {
                        Ok((client, upstream)) => {
                            let deadlines = relay::Deadlines {
                                handshake: None,
                                idle: Some(upgrade_idle),
                            };
                            let relayed =
                                relay::relay(TokioIo::new(client), TokioIo::new(upstream), UPGRADE_BUFFER, deadlines)
                                    .await;
                            if let Ok(Some(expired)) = relayed {
                                debug!(upstream = name, ?expired, "upgraded connection closed: idle");
                            }
                        }
                        Err(e) => warn!(upstream = name, "upgrade failed: {e}"),
                    }
                });
                let (mut parts, _) = response.into_parts();
                parts.headers = end_to_end(&parts.headers, true, 0);
                return Response::from_parts(parts, super::empty());
            }
        }
        let (mut parts, body) = response.into_parts();
        parts.headers = end_to_end(&parts.headers, false, 0);
        let body = Tracked {
            inner: body,
            _in_flight: in_flight,
            checkin: Some(checkin),
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// What a request brings to the choice of its server ([`Pool::affinity`]).
struct Affinity {
    /// The server its sticky cookie names.
    sticky: Option<usize>,
    /// Its hash key, hashed (with `balance = "hash"`).
    key: Option<u64>,
}

/// The value of cookie `name` in the request's Cookie headers, if it has one.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// FNV-1a of a hash key: the same on every edge and every build.
fn key_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads a key and server pair over the whole range.
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether a request asks to switch protocols (WebSocket).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The end-to-end part of `headers`, for the next hop: without hop-by-hop headers and those
/// the Connection header names; an upgrade keeps `Upgrade` and gets `Connection: upgrade`.
/// Room is left for `extra` more headers.
fn end_to_end(headers: &HeaderMap, upgrade: bool, extra: usize) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len() + extra);
    for (name, value) in headers {
        let hop = HOP_BY_HOP.contains(name) || named.contains(name);
        if !hop || (upgrade && name == header::UPGRADE) {
            kept.append(name, value.clone());
        }
    }
    if upgrade {
        kept.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    kept
}

/// Takes this hop off an OPTIONS request's Max-Forwards before it goes on (RFC 9110 §7.6.2;
/// the web tier answers one that arrives at 0 and refuses an invalid one).
fn count_hop(headers: &mut HeaderMap) {
    let left = headers
        .get(header::MAX_FORWARDS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if let Some(left) = left {
        headers.insert(header::MAX_FORWARDS, HeaderValue::from(left.saturating_sub(1)));
    }
}

/// Headers that say who the client is and how it came: set by the first proxy from the
/// connection, never taken from a client that is not a trusted proxy.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The request headers sent upstream: the client's end-to-end ones, the Host kept, and the
/// forwarding headers set from the connection (appended to a trusted proxy's).
fn forward_headers(incoming: &HeaderMap, origin: &Origin<'_>, upgrade: bool) -> HeaderMap {
    let mut headers = end_to_end(incoming, upgrade, 6);
    let before = |name: &str| {
        origin
            .trusted
            .then(|| incoming.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
    };
    let client = origin.client.to_string();
    let proto = if origin.https { "https" } else { "http" };
    let xff = match before("x-forwarded-for") {
        Some(before) => format!("{before}, {client}"),
        None => client.clone(),
    };
    let real_ip = before("x-real-ip").map_or_else(|| client.clone(), str::to_owned);
    for name in FORWARDING {
        headers.remove(name);
    }
    let node = if origin.client.is_ipv6() {
        format!("\"[{client}]\"")
    } else {
        client
    };
    let mut forwarded = format!("for={node};proto={proto}");
    if let Some(host) = origin.host {
        if !host.contains(['"', ';', ',']) {
            forwarded += &format!(";host=\"{host}\"");
        }
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert("x-forwarded-host", v.clone());
            headers.insert(header::HOST, v);
        }
    }
    if let Some(before) = before("forwarded") {
        forwarded = format!("{before}, {forwarded}");
    }
    for (name, value) in [
        ("x-forwarded-for", xff),
        ("forwarded", forwarded),
        ("x-real-ip", real_ip),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    headers
}

/// Whether a client error came from the request body exceeding the limit.
fn too_large(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Active HTTP check of one server.
async fn active_check(pool: String, server: Arc<Server>, check: crate::config::HealthCheck) {
    let mut state = health::RiseFall::new(
        check.timing.rise,
        check.timing.fall,
        Some(server.up.load(Ordering::Relaxed)),
    );
    let limit = check.timing.timeout;
    loop {
        let result = health::probe_within(limit, server.addr, &check, None).await;
        if let Some(up) = state.observe(result.is_ok()) {
            server.up.store(up, Ordering::Relaxed);
            match result {
                Ok(()) => info!(upstream = pool, server = %server.addr, "upstream server up"),
                Err(why) => warn!(upstream = pool, server = %server.addr, %why, "upstream server down"),
            }
        }
        tokio::time::sleep(check.timing.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `n` servers (10.0.1.1.. port 8080) balanced as `balance`.
    fn pool(n: u8, balance: Balancing, sticky: Option<&str>) -> Arc<Pool> {
        let mut u = crate::config::parse(
            "[node]\nname = \"a\"\ninterfaces = [\"eth0\"]\n[[web.listener]]\naddress = \"127.0.0.1:80\"\n[[web.site]]\nnames = [\"a\"]\nroot = \"/srv\"\nproxy = [{ prefix = \"/\", upstream = \"u\" }]\n[[web.upstream]]\nname = \"u\"\nservers = [\"10.0.1.1:8080\"]\n",
        )
        .expect("valid")
        .web
        .expect("web")
        .upstreams
        .remove(0);
        u.servers = (1..=n).map(|i| SocketAddr::from(([10, 0, 1, i], 8080))).collect();
        u.balance = balance;
        u.sticky_cookie = sticky.map(str::to_owned);
        Pool::new(&u)
    }

    fn keyed(pool: &Pool, key: &str) -> Option<usize> {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_str(key).expect("value"));
        let affinity = pool.affinity(&h, "198.51.100.9".parse().expect("ip"));
        pool.pick(&[], &affinity)
    }

    #[test]
    fn a_hash_keeps_each_key_on_its_server_and_a_lost_server_moves_only_its_keys() {
        let pool = pool(
            5,
            Balancing::Hash(HashKey::Header(HeaderName::from_static("x-user"))),
            None,
        );
        let keys: Vec<String> = (0..2000).map(|i| format!("user{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| keyed(&pool, k).expect("a server")).collect();
        let mut per_server = [0usize; 5];
        before.iter().for_each(|s| per_server[*s] += 1);
        assert!(per_server.iter().all(|n| (250..=550).contains(n)), "{per_server:?}");
        assert_eq!(
            keys.iter().map(|k| keyed(&pool, k)).collect::<Vec<_>>(),
            before.iter().map(|s| Some(*s)).collect::<Vec<_>>()
        );
        pool.servers[2].up.store(false, Ordering::Relaxed);
        for (k, was) in keys.iter().zip(&before) {
            let now = keyed(&pool, k).expect("a server");
            if *was == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, *was, "{k} moved though its server stayed");
            }
        }
        // Another pool with the same name and servers (the other edge) agrees.
        let twin = super::tests::pool(
            5,
            Balancing::Hash(HashKey::Header(HeaderName::from_static("x-user"))),
            None,
        );
        assert_eq!(keyed(&twin, "user7"), Some(before[7]));
    }

    #[test]
    fn the_sticky_cookie_names_a_server_and_is_followed_while_it_is_in_rotation() {
        let pool = pool(3, Balancing::RoundRobin, Some("srv"));
        let client: IpAddr = "198.51.100.9".parse().expect("ip");
        let fresh = pool.affinity(&HeaderMap::new(), client);
        let first = pool.pick(&[], &fresh).expect("a server");
        let set = pool.sticky_cookie(first, &fresh, true).expect("a cookie is set");
        let set = set.to_str().expect("text");
        assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"), "{set}");
        let pair = set.split(';').next().expect("pair");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {pair}")).expect("value"),
        );
        let back = pool.affinity(&h, client);
        for _ in 0..5 {
            assert_eq!(pool.pick(&[], &back), Some(first), "round-robin overrode the cookie");
        }
        assert!(
            pool.sticky_cookie(first, &back, true).is_none(),
            "set again though carried"
        );
        pool.servers[first].drained.store(true, Ordering::Relaxed);
        let other = pool.pick(&[], &back).expect("another server");
        assert_ne!(other, first);
        assert!(
            pool.sticky_cookie(other, &back, false).is_some(),
            "the new server's cookie"
        );
        assert_eq!(cookie(&h, "srv"), Some(pair.trim_start_matches("srv=")));
        assert_eq!(cookie(&h, "sr"), None);
    }

    #[test]
    fn a_clients_own_forwarding_headers_are_replaced_unless_it_is_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let mut origin = Origin {
            client: "198.51.100.9".parse().expect("ip"),
            trusted: false,
            https: false,
            host: None,
        };
        let out = forward_headers(&h, &origin, false);
        assert_eq!(out["x-forwarded-for"], "198.51.100.9");
        assert_eq!(out["x-real-ip"], "198.51.100.9");
        assert_eq!(out["forwarded"], "for=198.51.100.9;proto=http");
        assert!(!out.contains_key("x-forwarded-host"));
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        origin.trusted = true;
        let out = forward_headers(&h, &origin, false);
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 198.51.100.9");
        assert_eq!(out["x-real-ip"], "6.6.6.6");
        assert_eq!(out["forwarded"], "for=6.6.6.6, for=198.51.100.9;proto=http");
    }

    #[test]
    fn forwarding_headers_append_and_hop_by_hop_go() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        let origin = Origin {
            client: "2001:db8::7".parse().expect("ip"),
            trusted: true,
            https: true,
            host: Some("www.foobar.com"),
        };
        let out = forward_headers(&h, &origin, false);
        assert_eq!(out["x-forwarded-for"], "198.51.100.1, 2001:db8::7");
        assert_eq!(
            out["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"www.foobar.com\""
        );
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[header::HOST], "www.foobar.com");
        assert_eq!(out["x-app"], "kept");
        for gone in ["connection", "x-secret", "te"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&ws));
        let out = forward_headers(&ws, &origin, true);
        assert_eq!(out[header::UPGRADE], "websocket");
        assert_eq!(out[header::CONNECTION], "upgrade");
    }
}
