//! The web tier's configuration (`[web]`): listeners, certificates, sites, upstream pools and
//! protection limits.

use super::{file, ms, HealthCheck, Range};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The `[web]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Web {
    /// Where to listen (at least one).
    pub listeners: Vec<Listener>,
    /// Certificates for TLS listeners, chosen by SNI.
    pub certificates: Vec<Certificate>,
    /// Virtual hosts, chosen by the Host header (or :authority); at least one.
    pub sites: Vec<Site>,
    /// Application server pools that sites proxy to.
    pub upstreams: Vec<Upstream>,
    /// Worker threads serving connections; 0 means one per CPU.
    pub workers: usize,
    /// Connection and request limits.
    pub limits: Limits,
    /// Peers that are proxies themselves: their forwarding headers are kept and appended to.
    pub trusted_proxies: Vec<Prefix>,
    /// File of session ticket keys shared by every edge; none: each process makes its own.
    pub ticket_keys: Option<PathBuf>,
}

/// One `[[web.listener]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Address and port; the address need not be local yet (a VIP: `IP_FREEBIND`).
    pub address: SocketAddr,
    /// What it serves.
    pub kind: ListenerKind,
}

/// What a listener does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain HTTP, served.
    Plain,
    /// TLS terminated here, then HTTP/1.1 or HTTP/2 served.
    Tls,
    /// Plain HTTP, every request answered with a redirect to the same URL over HTTPS.
    RedirectToHttps,
}

/// One `[[web.certificate]]`: a PEM chain and its key; the names it serves come from the
/// certificate's subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// PEM certificate chain, leaf first.
    pub chain: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Served to clients whose SNI matches no certificate (or who send none).
    pub default: bool,
}

/// One `[[web.site]]`: a virtual host serving static files from a document root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Host names (exact, or `*.example.com`).
    pub names: Vec<String>,
    /// Serves requests whose host matches no site.
    pub default: bool,
    /// Document root, absolute.
    pub root: PathBuf,
    /// Index files tried, in order, for a directory.
    pub index: Vec<String>,
    /// Strict-Transport-Security max-age on HTTPS responses, whole seconds (0: no header).
    pub hsts_max_age_s: u64,
    /// Serve files and directories whose name starts with a dot.
    pub serve_dotfiles: bool,
    /// Compress compressible files without a `.gz` twin on the fly (gzip).
    pub compress: bool,
    /// Cache-Control by path prefix; the longest matching prefix wins.
    pub cache_rules: Vec<CacheRule>,
    /// Path prefixes passed to upstream pools instead of served from the root.
    pub proxy_rules: Vec<ProxyRule>,
}

/// One `[[web.site.cache]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRule {
    /// Path prefix, starting with `/`.
    pub prefix: String,
    /// The Cache-Control value.
    pub cache_control: String,
}

/// One `[[web.site.proxy]]`: requests under a path prefix (and with a header, when it says
/// so) go to an upstream pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRule {
    /// Path prefix, starting with `/`; the longest matching rule wins, and of rules with the
    /// same prefix one whose header matches.
    pub prefix: String,
    /// Upstream name (one that is configured).
    pub upstream: String,
    /// The header a request must carry for this rule.
    pub header: Option<HeaderMatch>,
}

/// A header condition of a proxy rule: the header is present, or has exactly this value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header.
    pub name: hyper::header::HeaderName,
    /// The value it must have (any, when none).
    pub value: Option<hyper::header::HeaderValue>,
}

impl HeaderMatch {
    /// Parses `NAME` or `NAME: VALUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, value) = match text.split_once(':') {
            Some((name, value)) => (name, Some(value.trim())),
            None => (text, None),
        };
        let name = hyper::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header {text:?}: {name:?} is not a header name"))?;
        let value = value
            .map(hyper::header::HeaderValue::from_str)
            .transpose()
            .map_err(|_| format!("header {text:?}: not a header value"))?;
        Ok(Self { name, value })
    }

    /// Whether a request with `headers` matches.
    pub fn matches(&self, headers: &hyper::HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            None => values.next().is_some(),
            Some(wanted) => values.any(|v| v == wanted),
        }
    }

    /// `NAME` or `NAME: VALUE`, as configured (for route labels).
    pub fn label(&self) -> String {
        match &self.value {
            None => self.name.to_string(),
            Some(v) => format!("{}: {}", self.name, String::from_utf8_lossy(v.as_bytes())),
        }
    }
}

/// One `[[web.upstream]]`: a pool of application servers.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// Name, unique.
    pub name: String,
    /// The servers (at least one).
    pub servers: Vec<SocketAddr>,
    /// How a server is chosen for a request.
    pub balance: Balancing,
    /// Cookie naming the server a client keeps to (HAProxy's `cookie NAME insert`): set on
    /// responses, followed while that server is in rotation; none: no cookie.
    pub sticky_cookie: Option<String>,
    /// Connection attempt limit.
    pub connect_timeout: Duration,
    /// Limit on waiting for the response headers (then 504).
    pub read_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per server.
    pub pool_max_idle: usize,
    /// Passive health: after a failed connection a server sits out this long.
    pub fail_timeout: Duration,
    /// Active health check (HTTP GET); none means passive health only.
    pub health: Option<HealthCheck>,
}

/// Load-balancing method of an upstream pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Balancing {
    /// Each server in turn.
    RoundRobin,
    /// The server with the fewest requests in flight.
    LeastRequests,
    /// The server a consistent (rendezvous) hash of the key picks among those in rotation:
    /// the same key keeps its server, and losing a server moves only the keys it had.
    Hash(HashKey),
}

/// What [`Balancing::Hash`] hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address.
    Client,
    /// A request header's value (the client's address when it is missing).
    Header(hyper::header::HeaderName),
    /// A cookie's value (the client's address when it is missing).
    Cookie(String),
}

impl HashKey {
    /// Parses `client`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = || format!("hash_key {text:?} must be \"client\", \"header:NAME\" or \"cookie:NAME\"");
        match text.split_once(':') {
            None if text == "client" => Ok(Self::Client),
            Some(("header", name)) => hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| shape()),
            Some(("cookie", name)) if is_cookie_name(name) => Ok(Self::Cookie(name.to_owned())),
            _ => Err(shape()),
        }
    }
}

/// Whether `name` can name a cookie (an RFC 6265 token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// `[web.limits]`: protection against slow, large and too many requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers (also the TLS handshake).
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Open connections, all clients together.
    pub max_connections: usize,
    /// Open connections from one client (an IPv4 address, an IPv6 prefix).
    pub max_connections_per_client: usize,
    /// IPv6 clients are counted per prefix of this length.
    pub client_ipv6_prefix_len: u8,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
    /// Largest request body passed to an upstream, bytes (then 413).
    pub max_request_body_bytes: u64,
    /// An upgraded connection with no byte moving either way for this long is closed.
    pub upgrade_idle_timeout: Duration,
    /// Requests one client may make; none: no limit.
    pub client_request_rate: Option<RequestRate>,
}

/// A per-client request rate limit (nginx's `limit_req ... burst=N nodelay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRate {
    /// Requests per second on average (at least 1).
    pub per_second: u32,
    /// Requests allowed at once beyond the rate.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        lower_limits(&file::web::Limits::default())
    }
}

/// An address prefix, `ADDRESS/LENGTH` (a bare address is the whole address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The network's address.
    pub addr: std::net::IpAddr,
    /// Its length in bits.
    pub len: u8,
}

impl Prefix {
    /// Parses `ADDRESS` or `ADDRESS/LENGTH`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or ADDRESS/LENGTH prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, len })
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.addr.is_ipv4() == ip.is_ipv4() && truncate(self.addr, self.len) == truncate(ip, self.len)
    }
}

/// `ip` with every bit past the first `len` cleared (`len` counts within its family).
pub fn truncate(ip: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    let keep = |bits: u32| {
        if len == 0 {
            0
        } else {
            u128::MAX << (bits - u32::from(len).min(bits))
        }
    };
    match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4) & keep(32) as u32).into()),
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6((u128::from(v6) & keep(128)).into()),
    }
}

/// The section's domain values; a trusted proxy that is no prefix is reported at its place.
pub(super) fn lower(w: &file::web::Web, report: &mut dyn FnMut(&Range<usize>, String)) -> Web {
    let trusted_proxies = w
        .trusted_proxies
        .iter()
        .filter_map(|p| Prefix::parse(p.get_ref()).map_err(|why| report(&p.span(), why)).ok())
        .collect();
    Web {
        listeners: w
            .listeners
            .iter()
            .map(|l| Listener {
                address: *l.address.get_ref(),
                kind: match (l.tls, l.redirect_to_https) {
                    (true, _) => ListenerKind::Tls,
                    (false, true) => ListenerKind::RedirectToHttps,
                    (false, false) => ListenerKind::Plain,
                },
            })
            .collect(),
        certificates: w
            .certificates
            .iter()
            .map(|c| Certificate {
                chain: c.chain.get_ref().clone(),
                key: c.key.get_ref().clone(),
                default: c.default,
            })
            .collect(),
        sites: w
            .sites
            .get_ref()
            .iter()
            .map(|s| Site {
                names: s.names.get_ref().clone(),
                default: s.default,
                root: s.root.get_ref().clone(),
                index: s.index.clone(),
                hsts_max_age_s: s.hsts_max_age_s,
                serve_dotfiles: s.serve_dotfiles,
                compress: s.compress,
                cache_rules: s
                    .cache_rules
                    .iter()
                    .map(|r| CacheRule {
                        prefix: r.prefix.get_ref().clone(),
                        cache_control: r.cache_control.clone(),
                    })
                    .collect(),
                proxy_rules: s
                    .proxy_rules
                    .iter()
                    .map(|r| ProxyRule {
                        prefix: r.prefix.get_ref().clone(),
                        upstream: r.upstream.get_ref().clone(),
                        header: r.header.as_ref().and_then(|h| {
                            HeaderMatch::parse(h.get_ref())
                                .map_err(|why| report(&h.span(), why))
                                .ok()
                        }),
                    })
                    .collect(),
            })
            .collect(),
        upstreams: w
            .upstreams
            .iter()
            .map(|u| Upstream {
                name: u.name.get_ref().clone(),
                servers: u.servers.get_ref().clone(),
                balance: match u.balance {
                    file::web::Balance::RoundRobin => Balancing::RoundRobin,
                    file::web::Balance::LeastRequests => Balancing::LeastRequests,
                    file::web::Balance::Hash => {
                        let key = u.hash_key.as_ref().map_or("client", |k| k.get_ref().as_str());
                        match HashKey::parse(key) {
                            Ok(key) => Balancing::Hash(key),
                            Err(why) => {
                                let span = u.hash_key.as_ref().map_or_else(|| u.name.span(), |k| k.span());
                                report(&span, why);
                                Balancing::RoundRobin
                            }
                        }
                    }
                },
                sticky_cookie: u.sticky_cookie.as_ref().map(|c| c.get_ref().clone()),
                connect_timeout: ms(u.connect_timeout_ms),
                read_timeout: ms(u.read_timeout_ms),
                pool_idle_timeout: ms(u.pool_idle_timeout_ms),
                pool_max_idle: u.pool_max_idle,
                fail_timeout: ms(u.fail_timeout_ms),
                health: u.health.as_ref().map(file::HealthCheck::lower),
            })
            .collect(),
        workers: w.workers,
        limits: lower_limits(w.limits.get_ref()),
        trusted_proxies,
        ticket_keys: w.ticket_keys.as_ref().map(|k| k.get_ref().clone()),
    }
}

fn lower_limits(l: &file::web::Limits) -> Limits {
    Limits {
        header_read_timeout: ms(l.header_read_timeout_ms),
        idle_timeout: ms(l.idle_timeout_ms),
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
        max_connections: l.max_connections,
        max_connections_per_client: l.max_connections_per_client,
        client_ipv6_prefix_len: l.client_ipv6_prefix_len,
        h2_max_concurrent_streams: l.h2_max_concurrent_streams,
        drain_timeout: ms(l.drain_timeout_ms),
        max_request_body_bytes: l.max_request_body_bytes,
        upgrade_idle_timeout: ms(l.upgrade_idle_timeout_ms),
        client_request_rate: (l.client_request_rate > 0).then_some(RequestRate {
            per_second: l.client_request_rate,
            burst: l.client_request_burst,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderMatch, Prefix};

    #[test]
    fn header_conditions_match_presence_or_an_exact_value() {
        let mut headers = hyper::HeaderMap::new();
        headers.append("x-canary", hyper::header::HeaderValue::from_static("1"));
        let present = HeaderMatch::parse("X-Canary").expect("a name");
        let one = HeaderMatch::parse("X-Canary: 1").expect("a condition");
        let two = HeaderMatch::parse("x-canary:2").expect("a condition");
        assert!(present.matches(&headers) && one.matches(&headers) && !two.matches(&headers));
        assert!(!present.matches(&hyper::HeaderMap::new()));
        assert_eq!(one.label(), "x-canary: 1");
        assert!(HeaderMatch::parse("bad name: 1").is_err());
        assert!(HeaderMatch::parse("x: a\u{1}b").is_err());
    }

    #[test]
    fn prefixes_match_their_family_and_bits() {
        let net = Prefix::parse("10.1.0.0/16").expect("prefix");
        assert!(net.contains("10.1.255.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(
            !net.contains("::ffff:10.1.0.1".parse().expect("ip")),
            "families do not mix"
        );
        let host = Prefix::parse("2001:db8::7").expect("prefix");
        assert!(host.contains("2001:db8::7".parse().expect("ip")));
        assert!(!host.contains("2001:db8::8".parse().expect("ip")));
        assert!(Prefix::parse("2001:db8::/32")
            .expect("prefix")
            .contains("2001:db8:1::1".parse().expect("ip")));
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("proxy.example").is_err());
    }
}
