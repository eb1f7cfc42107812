//! The `[web]` section as the file has it.

use super::Range;
use serde::Deserialize;
use std::{collections::HashSet, net::SocketAddr, path::PathBuf};
use toml::Spanned;

/// The `[web]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Web {
    /// Where to listen.
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    /// Certificates for TLS listeners, chosen by SNI.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<Certificate>,
    /// Virtual hosts, chosen by the Host header (or :authority).
    #[serde(rename = "site")]
    pub sites: Spanned<Vec<Site>>,
    /// Application server pools that sites proxy to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// Worker threads serving connections (each with its own socket per listener); 0 means
    /// one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// Connection and request limits.
    #[serde(default = "default_limits")]
    pub limits: Spanned<Limits>,
    /// Peers (addresses or prefixes, `10.0.0.0/8`) that are proxies themselves: their
    /// X-Forwarded-For, X-Real-IP and Forwarded are kept and appended to. From anyone else
    /// those headers are replaced by the connection's own address.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// File of session ticket keys shared by every edge; none: each process makes its own.
    pub ticket_keys: Option<Spanned<PathBuf>>,
}

/// One `[[web.upstream]]`: a pool of application servers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Name, unique; sites' proxy rules refer to it.
    pub name: Spanned<String>,
    /// The servers, `address:port`.
    pub servers: Spanned<Vec<SocketAddr>>,
    /// How a server is chosen for a request.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "hash"`: `client` (the default), `header:NAME` or `cookie:NAME`.
    pub hash_key: Option<Spanned<String>>,
    /// A cookie naming the server a client keeps to, set on responses.
    pub sticky_cookie: Option<Spanned<String>>,
    /// Connection attempt limit, ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit on waiting for the response headers, ms (then 504).
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Idle pooled connections are closed after this, ms; keep it below the servers' own
    /// keep-alive timeout.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Idle pooled connections kept per server.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Passive health: after a failed connection a server sits out this long, ms.
    #[serde(default = "default_fail_timeout_ms")]
    pub fail_timeout_ms: u64,
    /// Active health check (HTTP GET); none means passive health only.
    pub health: Option<super::HealthCheck>,
}

/// `balance` as the file spells it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each server in turn.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight.
    LeastRequests,
    /// A consistent hash of `hash_key`.
    Hash,
}

/// One `[[web.site.proxy]]`: requests under a path prefix go to an upstream pool.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyRule {
    /// Path prefix, starting with `/`; the longest matching rule wins.
    pub prefix: Spanned<String>,
    /// Upstream name.
    pub upstream: Spanned<String>,
    /// Only requests with this header (`NAME`) or this header value (`NAME: VALUE`).
    pub header: Option<Spanned<String>>,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_read_timeout_ms() -> u64 {
    30_000
}

fn default_pool_idle_ms() -> u64 {
    30_000
}

fn default_pool_max_idle() -> usize {
    64
}

fn default_fail_timeout_ms() -> u64 {
    10_000
}

fn default_limits() -> Spanned<Limits> {
    Spanned::new(0..0, Limits::default())
}

/// One `[[web.listener]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address and port; the address need not be local yet (a VIP: `IP_FREEBIND`).
    pub address: Spanned<SocketAddr>,
    /// Terminate TLS here.
    #[serde(default)]
    pub tls: bool,
    /// Plain listeners only: answer every request with a redirect to the same URL over HTTPS.
    #[serde(default)]
    pub redirect_to_https: bool,
}

/// One `[[web.certificate]]`: a chain and its key, PEM files. The names it serves come from
/// the certificate's subject alternative names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain, leaf first.
    pub chain: Spanned<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1; ECDSA, RSA or Ed25519).
    pub key: Spanned<PathBuf>,
    /// Served to clients whose SNI matches no certificate (or who send none); the first
    /// certificate when none says so.
    #[serde(default)]
    pub default: bool,
}

/// One `[[web.site]]`: a virtual host serving static files from a document root.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Host names (exact, or `*.example.com`); requests for other hosts go to the default
    /// site.
    pub names: Spanned<Vec<String>>,
    /// Serves requests whose host matches no site; the first site when none says so.
    #[serde(default)]
    pub default: bool,
    /// Document root.
    pub root: Spanned<PathBuf>,
    /// Index files tried, in order, for a directory.
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// Strict-Transport-Security max-age on HTTPS responses, seconds (0: no header).
    #[serde(default)]
    pub hsts_max_age_s: u64,
    /// Serve files and directories whose name starts with a dot (`.git/`, `.env`); refused
    /// with 404 by default, except under `/.well-known/`.
    #[serde(default)]
    pub serve_dotfiles: bool,
    /// Compress compressible files that have no `.gz` twin, for clients that accept gzip.
    #[serde(default)]
    pub compress: bool,
    /// Cache-Control by path prefix; the longest matching prefix wins.
    #[serde(default, rename = "cache")]
    pub cache_rules: Vec<CacheRule>,
    /// Path prefixes passed to upstream pools instead of served from the root.
    #[serde(default, rename = "proxy")]
    pub proxy_rules: Vec<ProxyRule>,
}

/// One `[[web.site.cache]]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Path prefix, starting with `/`.
    pub prefix: Spanned<String>,
    /// The Cache-Control value.
    pub cache_control: String,
}

/// `[web.limits]`: protection against slow, large and too many requests.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time a client has to send a request's headers (also the TLS handshake), ms.
    pub header_read_timeout_ms: u64,
    /// An HTTP/2 connection with no stream for this long is closed, ms; HTTP/1.1 idle
    /// connections are bounded by `header_read_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Open connections, all clients together.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_client: usize,
    /// IPv6 clients are counted per prefix of this length (one host usually holds a whole
    /// /64); IPv4 clients per address.
    pub client_ipv6_prefix_len: u8,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, how long open connections get to finish, ms.
    pub drain_timeout_ms: u64,
    /// Largest request body passed to an upstream, bytes (then 413).
    pub max_request_body_bytes: u64,
    /// An upgraded connection (WebSocket) with no byte moving either way for this long is
    /// closed, ms.
    pub upgrade_idle_timeout_ms: u64,
    /// Requests per second one client (an IPv4 address, an IPv6 prefix) may make on average
    /// (0: no limit); a request over it gets 429 with Retry-After.
    pub client_request_rate: u32,
    /// Requests a client may make at once beyond that rate (nginx's `burst`).
    pub client_request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_connections_per_client: 256,
            client_ipv6_prefix_len: 64,
            h2_max_concurrent_streams: 128,
            drain_timeout_ms: 10_000,
            max_request_body_bytes: 16 * 1024 * 1024,
            upgrade_idle_timeout_ms: 300_000,
            client_request_rate: 0,
            client_request_burst: 0,
        }
    }
}

fn default_index() -> Vec<String> {
    vec!["index.html".into()]
}

/// Reports every problem of the `[web]` section.
pub(super) fn validate(w: &Web, report: &mut dyn FnMut(&Range<usize>, String)) {
    if let Some(keys) = w.ticket_keys.as_ref().filter(|k| !k.get_ref().is_absolute()) {
        report(&keys.span(), "ticket_keys must be an absolute path".into());
    }
    let mut addresses = HashSet::new();
    for l in &w.listeners {
        let addr = *l.address.get_ref();
        if !addresses.insert(addr) {
            report(&l.address.span(), format!("{addr} is listed twice"));
        }
        if l.tls && l.redirect_to_https {
            report(
                &l.address.span(),
                "redirect_to_https applies to plain listeners, not to tls = true".into(),
            );
        }
        if l.tls && w.certificates.is_empty() {
            report(
                &l.address.span(),
                "a TLS listener needs at least one [[web.certificate]]".into(),
            );
        }
    }
    if w.listeners.is_empty() {
        report(&w.sites.span(), "[web] needs at least one [[web.listener]]".into());
    }
    let defaults = w.certificates.iter().filter(|c| c.default).count();
    if defaults > 1 {
        if let Some(c) = w.certificates.iter().filter(|c| c.default).nth(1) {
            report(&c.chain.span(), "only one certificate can be the default".into());
        }
    }
    let sites = w.sites.get_ref();
    if sites.is_empty() {
        report(&w.sites.span(), "[web] needs at least one [[web.site]]".into());
    }
    if sites.iter().filter(|s| s.default).count() > 1 {
        report(&w.sites.span(), "only one site can be the default".into());
    }
    let mut names = HashSet::new();
    for site in sites {
        for name in site.names.get_ref() {
            let lower = name.to_ascii_lowercase();
            if !names.insert(lower.clone()) {
                report(&site.names.span(), format!("host name {name:?} belongs to two sites"));
            }
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(':') {
                report(
                    &site.names.span(),
                    format!("{name:?} is not a host name (a wildcard may only be a leading \"*.\")"),
                );
            }
        }
        if !site.root.get_ref().is_absolute() {
            report(&site.root.span(), "root must be an absolute path".into());
        }
        for index in &site.index {
            if index.is_empty() || index.contains('/') || index == ".." {
                report(&site.root.span(), format!("index {index:?} must be a plain file name"));
            }
        }
        for rule in &site.cache_rules {
            if !rule.prefix.get_ref().starts_with('/') {
                report(&rule.prefix.span(), "a cache prefix starts with /".into());
            }
        }
        for rule in &site.proxy_rules {
            if !rule.prefix.get_ref().starts_with('/') {
                report(&rule.prefix.span(), "a proxy prefix starts with /".into());
            }
            if !w.upstreams.iter().any(|u| u.name.get_ref() == rule.upstream.get_ref()) {
                report(
                    &rule.upstream.span(),
                    format!("upstream {:?} is not configured", rule.upstream.get_ref()),
                );
            }
        }
    }
    let mut upstream_names = HashSet::new();
    for u in &w.upstreams {
        if !upstream_names.insert(u.name.get_ref().as_str()) {
            report(
                &u.name.span(),
                format!("upstream {:?} is defined twice", u.name.get_ref()),
            );
        }
        if u.servers.get_ref().is_empty() {
            report(&u.servers.span(), "an upstream needs at least one server".into());
        }
        if let (Some(key), false) = (&u.hash_key, u.balance == Balance::Hash) {
            report(&key.span(), "hash_key needs balance = \"hash\"".into());
        }
        if let Some(cookie) = u
            .sticky_cookie
            .as_ref()
            .filter(|c| !crate::config::web::is_cookie_name(c.get_ref()))
        {
            report(
                &cookie.span(),
                format!("sticky_cookie {:?} is not a cookie name", cookie.get_ref()),
            );
        }
        if u.connect_timeout_ms == 0 || u.read_timeout_ms == 0 {
            report(
                &u.name.span(),
                "connect_timeout_ms and read_timeout_ms must be positive".into(),
            );
        }
        if let Some(h) = &u.health {
            if !h.timing_is_positive() {
                report(
                    &u.name.span(),
                    "health interval_ms, timeout_ms, rise and fall must be positive".into(),
                );
            }
        }
    }
    let l = w.limits.get_ref();
    if l.header_read_timeout_ms == 0
        || l.idle_timeout_ms == 0
        || l.max_header_bytes < 1024
        || l.max_headers == 0
        || l.max_connections == 0
        || l.max_connections_per_client == 0
        || l.h2_max_concurrent_streams == 0
        || l.upgrade_idle_timeout_ms == 0
    {
        report(
            &w.limits.span(),
            "[web.limits]: timeouts, connection and stream limits must be positive, max_header_bytes at least 1024"
                .into(),
        );
    }
    if l.client_request_rate == 0 && l.client_request_burst > 0 {
        report(
            &w.limits.span(),
            "[web.limits] client_request_burst needs client_request_rate".into(),
        );
    }
    if !(1..=128).contains(&l.client_ipv6_prefix_len) {
        report(
            &w.limits.span(),
            format!(
                "[web.limits] client_ipv6_prefix_len {} must be 1..=128",
                l.client_ipv6_prefix_len
            ),
        );
    }
}
