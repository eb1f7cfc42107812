//! The `[monitoring]` section: the management address (metrics and the status page) and the
//! push exporter to a Sumo Logic-style HTTP collector.

use super::Range;
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf};
use toml::Spanned;

/// The `[monitoring]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Management address: `/metrics` (Prometheus text or OpenMetrics), `/` (the status page)
    /// and `/status.json`. Keep it off the public side: it has no authentication.
    pub listen: Spanned<SocketAddr>,
    /// Push to an HTTP collector; none means pull only.
    pub push: Option<Push>,
}

/// `[monitoring.push]`: metrics and logs sent to an HTTP collector (a Sumo Logic HTTP Logs and
/// Metrics source, or anything that takes the same requests).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The collector's URL, `http://` or `https://` (the source's unique URL for Sumo Logic).
    pub url: Spanned<String>,
    /// Metrics are sent this often, ms; logs are sent at least this often.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// `X-Sumo-Category`.
    pub category: Option<String>,
    /// `X-Sumo-Name`; defaults to `foobar`.
    pub source_name: Option<String>,
    /// `X-Sumo-Host`; defaults to the node name.
    pub host: Option<String>,
    /// Also send the access log and event log (each its own requests).
    #[serde(default = "default_true")]
    pub logs: bool,
    /// Data waiting to be sent is bounded by this many bytes (uncompressed); beyond it the
    /// oldest is dropped and counted.
    #[serde(default = "default_buffer_bytes")]
    pub max_buffer_bytes: usize,
    /// Limit on one request, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM bundle of the CAs that may sign an `https://` collector's certificate.
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
}

fn default_interval_ms() -> u64 {
    60_000
}

fn default_true() -> bool {
    true
}

fn default_buffer_bytes() -> usize {
    8 << 20
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_ca_file() -> PathBuf {
    PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
}

/// Checks the section.
pub(super) fn validate(m: &Monitoring, report: &mut dyn FnMut(&Range<usize>, String)) {
    if let Some(p) = &m.push {
        let url = p.url.get_ref();
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            report(
                &p.url.span(),
                format!("push url {url:?} must be http://HOST[:PORT]/PATH or https://..."),
            );
        }
        if p.interval_ms == 0 || p.timeout_ms == 0 || p.max_buffer_bytes < 64 * 1024 {
            report(
                &p.url.span(),
                "push interval_ms and timeout_ms must be positive and max_buffer_bytes at least 65536".into(),
            );
        }
    }
}
