//! Monitoring's configuration (`[monitoring]`): the management address (metrics and the status
//! page) and the push exporter to a Sumo Logic-style HTTP collector.

use super::{file, ms, Range};
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

/// The `[monitoring]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Monitoring {
    /// Management address: `/metrics`, `/` (the status page) and `/status.json`.
    pub listen: SocketAddr,
    /// Served over TLS only, with this certificate.
    pub tls: Option<TlsFiles>,
    /// Users let in, by name, with a bcrypt hash of their password; empty: no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Push to an HTTP collector; none means pull only.
    pub push: Option<Push>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
}

/// `[monitoring.push]`: metrics and logs sent to an HTTP collector.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The collector.
    pub url: CollectorUrl,
    /// Metrics are sent this often; logs at least this often.
    pub interval: Duration,
    /// `X-Sumo-Category`.
    pub category: Option<String>,
    /// `X-Sumo-Name`; defaults to `foobar`.
    pub source_name: Option<String>,
    /// `X-Sumo-Host`; defaults to the node name.
    pub host: Option<String>,
    /// Also send the access log and event log.
    pub logs: bool,
    /// Data waiting to be sent is bounded by this many bytes (uncompressed).
    pub max_buffer_bytes: usize,
    /// Limit on one request.
    pub timeout: Duration,
    /// PEM bundle of the CAs that may sign an `https://` collector's certificate.
    pub ca_file: PathBuf,
}

/// A collector's URL, taken apart: `http[s]://HOST[:PORT][/PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorUrl {
    /// `https://`.
    pub https: bool,
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (80 or 443 unless the URL names one).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl CollectorUrl {
    /// Parses `http[s]://HOST[:PORT][/PATH]`; `[v6]` for an IPv6 host.
    pub fn parse(url: &str) -> Result<Self, String> {
        let shape = || format!("push url {url:?} must be http://HOST[:PORT]/PATH or https://...");
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(shape()),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let default_port = if https { 443 } else { 80 };
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("push url {url:?}: port {p:?} is not 0..=65535"))
        };
        // `host`, `host:port`, `[v6]` or `[v6]:port`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, rest) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("push url {url:?}: unclosed ["))?;
                match rest.strip_prefix(':') {
                    Some(p) => (host, port(p)?),
                    None if rest.is_empty() => (host, default_port),
                    None => return Err(shape()),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (authority, default_port),
            },
        };
        if host.is_empty() {
            return Err(shape());
        }
        Ok(Self {
            https,
            host: host.to_owned(),
            port,
            path: if path.is_empty() { "/".into() } else { path.to_owned() },
        })
    }
}

/// The section's domain values; a push URL that does not parse is reported at its place.
pub(super) fn lower(m: &file::monitoring::Monitoring, report: &mut dyn FnMut(&Range<usize>, String)) -> Monitoring {
    Monitoring {
        listen: *m.listen.get_ref(),
        tls: m.tls_server_config.as_ref().map(|t| TlsFiles {
            cert_file: t.cert_file.get_ref().clone(),
            key_file: t.key_file.get_ref().clone(),
        }),
        basic_auth_users: m
            .basic_auth_users
            .iter()
            .map(|(user, hash)| (user.clone(), hash.get_ref().clone()))
            .collect(),
        push: m.push.as_ref().and_then(|p| {
            let url = CollectorUrl::parse(p.url.get_ref())
                .map_err(|why| report(&p.url.span(), why))
                .ok()?;
            Some(Push {
                url,
                interval: ms(p.interval_ms),
                category: p.category.clone(),
                source_name: p.source_name.clone(),
                host: p.host.clone(),
                logs: p.logs,
                max_buffer_bytes: p.max_buffer_bytes,
                timeout: ms(p.timeout_ms),
                ca_file: p.ca_file.clone(),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::CollectorUrl;

    fn parts(url: &str) -> Result<(bool, String, u16, String), String> {
        CollectorUrl::parse(url).map(|u| (u.https, u.host, u.port, u.path))
    }

    #[test]
    fn collector_urls_of_every_shape() {
        let ok = |https, host: &str, port, path: &str| Ok((https, host.to_owned(), port, path.to_owned()));
        assert_eq!(
            parts("http://[fd00::5]:9300/receiver/v1/http/T"),
            ok(false, "fd00::5", 9300, "/receiver/v1/http/T")
        );
        assert_eq!(
            parts("http://collector.example"),
            ok(false, "collector.example", 80, "/")
        );
        assert_eq!(parts("https://10.0.0.5/x?y=1"), ok(true, "10.0.0.5", 443, "/x?y=1"));
        assert_eq!(parts("http://10.0.0.5:8080/x"), ok(false, "10.0.0.5", 8080, "/x"));
        for bad in [
            "http://[fd00::5/x",
            "http://h:port/",
            "ftp://h/",
            "http:///x",
            "http://h:70000/",
            "http://[::1]x/",
        ] {
            assert!(parts(bad).is_err(), "{bad}");
        }
    }
}
