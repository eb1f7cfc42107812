//! The `[monitoring]` section as the file has it.

use super::Range;
use serde::Deserialize;
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};
use toml::Spanned;

/// The `[monitoring]` section.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Monitoring {
    /// Management address: `/metrics` (Prometheus text or OpenMetrics), `/` (the status page)
    /// and `/status.json`. Keep it off the public side: it has no authentication.
    pub listen: Spanned<SocketAddr>,
    /// Serve the management address over TLS only (the Prometheus exporter-toolkit's
    /// `tls_server_config`).
    pub tls_server_config: Option<TlsServerConfig>,
    /// Users let in, each with a bcrypt hash of their password (the exporter-toolkit's
    /// `basic_auth_users`); none: no authentication.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, Spanned<String>>,
    /// Push to an HTTP collector; none means pull only.
    pub push: Option<Push>,
}

/// `[monitoring.tls_server_config]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Spanned<PathBuf>,
    /// PEM private key; others may not read it.
    pub key_file: Spanned<PathBuf>,
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
    for (user, hash) in &m.basic_auth_users {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            report(
                &hash.span(),
                format!(
                    "basic_auth_users: {user:?} cannot be a user name (empty, or with a colon or control character)"
                ),
            );
        }
        if let Err(e) = hash.get_ref().parse::<bcrypt::HashParts>() {
            report(
                &hash.span(),
                format!("basic_auth_users.{user}: not a bcrypt hash ({e}); make one with: htpasswd -nBC 10 {user}"),
            );
        }
    }
    if let Some(p) = &m.push {
        if p.interval_ms == 0 || p.timeout_ms == 0 || p.max_buffer_bytes < 64 * 1024 {
            report(
                &p.url.span(),
                "push interval_ms and timeout_ms must be positive and max_buffer_bytes at least 65536".into(),
            );
        }
    }
}
