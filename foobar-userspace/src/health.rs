//! Active health checks of backends: TCP connect, HTTP/1.1 GET (plain or over TLS) with an
//! expected status, or a MySQL login, with interval, timeout, rise and fall. Backends start up (as HAProxy's do), so a restart
//! never drains a healthy pool; a check task per backend reports transitions.

use crate::{
    config::{CheckKind, Config, HealthCheck},
    mysql::monitor::Credentials,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, SignatureScheme,
};
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
    time::timeout,
};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

/// Which backends are down, by service name and address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    down: HashSet<(String, IpAddr)>,
}

impl Health {
    /// True unless the backend's checks have failed `fall` times in a row.
    pub fn is_up(&self, service: &str, addr: IpAddr) -> bool {
        !self.down.contains(&(service.to_string(), addr))
    }

    fn set(&mut self, service: &str, addr: IpAddr, up: bool) -> bool {
        let key = (service.to_string(), addr);
        if up {
            self.down.remove(&key)
        } else {
            self.down.insert(key)
        }
    }

    /// Forgets backends the configuration no longer has.
    pub fn retain_configured(&mut self, c: &Config) {
        let configured: HashSet<(String, IpAddr)> = c
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (s.name.get_ref().clone(), *b.address.get_ref()))
            })
            .collect();
        self.down.retain(|k| configured.contains(k));
    }
}

/// The running check tasks.
pub struct Checks {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    /// The longest check timeout: how long a check in flight may still take.
    longest: Duration,
}

impl Checks {
    /// Stops the checks without cutting one in flight short (a MySQL login cut off mid-way
    /// counts against this host on the server), then drops whatever is left.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let finished = timeout(self.longest + Duration::from_millis(100), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// Starts one check task per backend of every service whose check is not `none`; they publish
/// transitions into `health` until stopped ([`Checks::stop`]) or dropped.
pub fn spawn_checks(c: &Config, health: &watch::Sender<Health>) -> Checks {
    let mut tasks = JoinSet::new();
    let (stop, stopping) = watch::channel(false);
    let mut longest = Duration::ZERO;
    for svc in &c.services {
        if svc.health.kind == CheckKind::None {
            continue;
        }
        let port = svc.health.port.unwrap_or(svc.port);
        for b in &svc.backends {
            let target = SocketAddr::new(*b.address.get_ref(), port);
            let check = svc.health.clone();
            let service = svc.name.get_ref().clone();
            let health = health.clone();
            longest = longest.max(Duration::from_millis(check.timeout_ms));
            tasks.spawn(check_loop(service, target, check, health, stopping.clone()));
        }
    }
    Checks { tasks, stop, longest }
}

async fn check_loop(
    service: String,
    target: SocketAddr,
    check: HealthCheck,
    health: watch::Sender<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut up = health.borrow().is_up(&service, target.ip());
    let mut streak = 0u32;
    let mut ticker = tokio::time::interval(Duration::from_millis(check.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let result = timeout(Duration::from_millis(check.timeout_ms), probe(target, &check))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", check.timeout_ms)));
        let ok = result.is_ok();
        streak = if ok == up { 0 } else { streak + 1 };
        let needed = if up { check.fall } else { check.rise };
        if streak >= needed {
            up = ok;
            streak = 0;
            match &result {
                Ok(()) => info!(service, backend = %target, "backend is up"),
                Err(reason) => warn!(service, backend = %target, reason, "backend is down"),
            }
            health.send_if_modified(|h| h.set(&service, target.ip(), up));
        }
    }
}

/// Checks `target` once: Ok when it passes, otherwise why not.
pub async fn probe(target: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    if check.kind == CheckKind::Mysql {
        let path = check.credentials.as_deref().ok_or("no credentials configured")?;
        let credentials = Credentials::load(path).map_err(|e| format!("{e:#}"))?;
        return crate::mysql::monitor::login_check(target, &credentials).await;
    }
    let stream = TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
    let host = match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    match check.kind {
        CheckKind::Tcp | CheckKind::None | CheckKind::Mysql => Ok(()),
        CheckKind::Http => http_check(stream, &host, check).await,
        CheckKind::Https => {
            let name = ServerName::IpAddress(target.ip().into());
            let tls = TlsConnector::from(tls_config()?)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http_check(tls, &host, check).await
        }
    }
}

/// Sends a GET for the check's path and compares the response status.
async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    check: &HealthCheck,
) -> Result<(), String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: foobar-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = parse_status(&head).ok_or_else(|| "no HTTP status line".to_string())?;
    if status == check.expect_status {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", check.expect_status))
    }
}

/// The TLS client configuration of HTTPS checks: aws-lc-rs, TLS 1.2 and 1.3, and no
/// certificate verification (a health check asks "does it answer", as HAProxy's
/// `check-ssl verify none` does; backends often serve the VIP's name, not their address's).
fn tls_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = Arc::new(AnyCertificate(provider.clone()));
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(verifier)
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| format!("TLS configuration: {e}"))
        })
        .clone()
}

/// Accepts any certificate, but still checks that the handshake signatures are valid.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
