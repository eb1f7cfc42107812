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
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    task::JoinHandle,
    time::timeout,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Rise / fall hysteresis over probe results, as every check uses it (service health checks,
/// upstream servers' active checks, the database monitor): an up target goes down after
/// `fall` failed probes in a row, a down one comes up after `rise` passed probes in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    /// The state; None until the first probe decides it.
    up: Option<bool>,
    /// Probes in a row that disagreed with the state.
    streak: u32,
}

impl RiseFall {
    /// Starts in state `up`, or (None) undecided until the first probe decides at once.
    pub fn new(rise: u32, fall: u32, up: Option<bool>) -> Self {
        Self {
            rise,
            fall,
            up,
            streak: 0,
        }
    }

    /// Records one probe; returns the new state when it changed (or was first decided).
    pub fn observe(&mut self, passed: bool) -> Option<bool> {
        let Some(up) = self.up else {
            self.up = Some(passed);
            return Some(passed);
        };
        self.streak = if passed == up { 0 } else { self.streak + 1 };
        let needed = if up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.up = Some(passed);
        (passed != up).then_some(passed)
    }

    /// The state (undecided counts as down).
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }
}

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No answer within the check's timeout.
    Timeout(Duration),
    /// The TCP connection could not be made.
    Connect(String),
    /// The TLS handshake failed.
    Tls(String),
    /// Sending the request or reading the answer failed.
    Io(String),
    /// The answer had no HTTP status line.
    NoStatusLine,
    /// The HTTP status was not the expected one.
    Status {
        /// What the target answered.
        got: u16,
        /// What the check expects.
        expected: u16,
    },
    /// A MySQL login, query or quit failed (the server's or the client library's words).
    Mysql(String),
    /// The check could not run here (credentials unreadable, TLS setup).
    Setup(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Timeout(limit) => write!(f, "no answer within {} ms", limit.as_millis()),
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Tls(e) => write!(f, "TLS handshake: {e}"),
            ProbeError::Io(e) => write!(f, "{e}"),
            ProbeError::NoStatusLine => write!(f, "no HTTP status line"),
            ProbeError::Status { got, expected } => write!(f, "status {got}, expected {expected}"),
            ProbeError::Mysql(e) => write!(f, "{e}"),
            ProbeError::Setup(e) => write!(f, "{e}"),
        }
    }
}

/// Where an L4 backend stands, as `foobar status`, the status page and the metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Passing its checks with a positive weight: in its service's Maglev table.
    Active,
    /// Passing its checks with weight 0: no new flows, established ones stay.
    Drained,
    /// Failing its checks: out of the table, and its flows go elsewhere.
    Down,
}

impl Standing {
    /// From health and the weight in force (0 while an operator drains it).
    pub fn of(up: bool, weight: u32) -> Self {
        match (up, weight) {
            (false, _) => Standing::Down,
            (true, 0) => Standing::Drained,
            (true, _) => Standing::Active,
        }
    }

    /// Stable lowercase name (as serialised).
    pub const fn name(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Drained => "drained",
            Standing::Down => "down",
        }
    }
}

/// Which backends are down (their checks failed, with the last reason) and which an operator
/// drained (`foobar backend drain`), by service name and address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    down: HashMap<(String, IpAddr), String>,
    drained: HashSet<(String, IpAddr)>,
}

impl Health {
    /// True unless the backend's checks have failed `fall` times in a row.
    pub fn is_up(&self, service: &str, addr: IpAddr) -> bool {
        !self.down.contains_key(&(service.to_string(), addr))
    }

    /// Why the backend's checks put it down, while it is down.
    pub fn down_reason(&self, service: &str, addr: IpAddr) -> Option<&str> {
        self.down.get(&(service.to_string(), addr)).map(String::as_str)
    }

    /// Records a backend's state (down: with the reason); true when it changed.
    pub(crate) fn set(&mut self, service: &str, addr: IpAddr, down: Option<String>) -> bool {
        let key = (service.to_string(), addr);
        match down {
            None => self.down.remove(&key).is_some(),
            Some(reason) => self.down.insert(key, reason).is_none(),
        }
    }

    /// Whether an operator drained the backend.
    pub fn is_drained(&self, service: &str, addr: IpAddr) -> bool {
        self.drained.contains(&(service.to_string(), addr))
    }

    /// Drains (`true`: weight 0 whatever the configuration says) or enables a backend; true
    /// when that changed anything.
    pub(crate) fn set_drained(&mut self, service: &str, addr: IpAddr, drained: bool) -> bool {
        let key = (service.to_string(), addr);
        if drained {
            self.drained.insert(key)
        } else {
            self.drained.remove(&key)
        }
    }

    /// The weight the backend gets now: 0 while drained, else `configured`.
    pub fn weight(&self, service: &str, addr: IpAddr, configured: u32) -> u32 {
        if self.is_drained(service, addr) {
            0
        } else {
            configured
        }
    }

    /// Forgets backends the configuration no longer has.
    pub fn retain_configured(&mut self, c: &Config) {
        let configured: HashSet<(String, IpAddr)> = c
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.address)))
            .collect();
        self.down.retain(|k, _| configured.contains(k));
        self.drained.retain(|k| configured.contains(k));
    }
}

/// What identifies a running check: the service, the target and the check's settings. A
/// reload keeps a check whose key is unchanged (its state and its rhythm go on).
type CheckKey = (String, SocketAddr, HealthCheck);

/// One running check task.
struct RunningCheck {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

/// The running check tasks.
#[derive(Default)]
pub struct Checks {
    running: HashMap<CheckKey, RunningCheck>,
    credentials: CheckCredentials,
}

/// The MySQL checks' credentials by file, read on the control thread at start and on every
/// reload: the checks themselves run on threads that may not read them (docs/security.md).
#[derive(Clone, Default)]
struct CheckCredentials(Arc<Mutex<HashMap<PathBuf, LoadedCredentials>>>);

/// A credentials file as read: the login, or why it could not be read.
type LoadedCredentials = Result<Arc<Credentials>, String>;

impl CheckCredentials {
    /// Reads every credentials file the MySQL checks of `c` name, replacing what was read.
    fn reread(&self, c: &Config) {
        let read: HashMap<_, _> = c
            .services
            .iter()
            .filter_map(|svc| svc.health.credentials.clone())
            .map(|path| {
                let loaded = Credentials::load(&path).map(Arc::new).map_err(|e| format!("{e:#}"));
                (path, loaded)
            })
            .collect();
        if let Ok(mut slot) = self.0.lock() {
            *slot = read;
        }
    }

    /// What was read from `path`.
    fn get(&self, path: &Path) -> Result<Arc<Credentials>, ProbeError> {
        let slot = self
            .0
            .lock()
            .map_err(|_| ProbeError::Setup("credentials lock poisoned".into()))?;
        match slot.get(path) {
            Some(Ok(credentials)) => Ok(credentials.clone()),
            Some(Err(e)) => Err(ProbeError::Setup(e.clone())),
            None => Err(ProbeError::Setup(format!("{} was not read", path.display()))),
        }
    }
}

/// How a reload changed the checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckChanges {
    /// Checks left running as they were.
    pub kept: usize,
    /// Checks started.
    pub started: usize,
    /// Checks stopped.
    pub stopped: usize,
}

impl Checks {
    /// Makes the running checks those `c` configures: unchanged ones go on, removed ones stop
    /// after the probe they may have in flight, new ones start. Checks publish transitions into
    /// `health` until stopped.
    pub fn update(&mut self, c: &Config, health: &watch::Sender<Health>) -> CheckChanges {
        let wanted: HashSet<CheckKey> = c
            .services
            .iter()
            .filter(|svc| svc.health.kind != CheckKind::None)
            .flat_map(|svc| {
                let port = svc.health.port.unwrap_or(svc.port);
                svc.backends
                    .iter()
                    .map(move |b| (svc.name.clone(), SocketAddr::new(b.address, port), svc.health.clone()))
            })
            .collect();
        self.credentials.reread(c);
        let mut changes = CheckChanges::default();
        self.running.retain(|key, check| {
            let keep = wanted.contains(key);
            if !keep {
                check.stop.cancel();
                changes.stopped += 1;
            }
            keep
        });
        for key in wanted {
            if self.running.contains_key(&key) {
                changes.kept += 1;
                continue;
            }
            self.spawn(key, health);
            changes.started += 1;
        }
        changes
    }

    /// Starts the checks of one backend over (its rise / fall counts from nothing, from the
    /// state `health` holds now); the number restarted.
    pub fn restart(&mut self, service: &str, addr: IpAddr, health: &watch::Sender<Health>) -> usize {
        let keys: Vec<CheckKey> = self
            .running
            .keys()
            .filter(|(s, target, _)| s == service && target.ip() == addr)
            .cloned()
            .collect();
        for key in &keys {
            if let Some(old) = self.running.remove(key) {
                old.stop.cancel();
            }
            self.spawn(key.clone(), health);
        }
        keys.len()
    }

    /// Starts the check task for `key`.
    fn spawn(&mut self, key: CheckKey, health: &watch::Sender<Health>) {
        let stop = CancellationToken::new();
        let (service, target, check) = key.clone();
        let task = tokio::spawn(check_loop(
            service,
            target,
            check,
            self.credentials.clone(),
            health.clone(),
            stop.clone(),
        ));
        self.running.insert(key, RunningCheck { task, stop });
    }

    /// Stops the checks without cutting one in flight short (a MySQL login cut off mid-way
    /// counts against this host on the server), then drops whatever is left.
    pub async fn stop(self) {
        let longest = self
            .running
            .keys()
            .map(|(_, _, check)| check.timing.timeout)
            .max()
            .unwrap_or_default();
        let mut tasks = Vec::with_capacity(self.running.len());
        for check in self.running.into_values() {
            check.stop.cancel();
            tasks.push(check.task);
        }
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let finished = timeout(longest + Duration::from_millis(100), async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if finished.is_err() {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

/// Starts one check task per backend of every service whose check is not `none`.
pub fn spawn_checks(c: &Config, health: &watch::Sender<Health>) -> Checks {
    let mut checks = Checks::default();
    checks.update(c, health);
    checks
}

async fn check_loop(
    service: String,
    target: SocketAddr,
    check: HealthCheck,
    credentials: CheckCredentials,
    health: watch::Sender<Health>,
    stop: CancellationToken,
) {
    let mut state = RiseFall::new(
        check.timing.rise,
        check.timing.fall,
        Some(health.borrow().is_up(&service, target.ip())),
    );
    let limit = check.timing.timeout;
    let mut ticker = tokio::time::interval(check.timing.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let result = match check
            .credentials
            .as_deref()
            .map(|path| credentials.get(path))
            .transpose()
        {
            Ok(login) => probe_within(limit, target, &check, login.as_deref()).await,
            Err(e) => Err(e),
        };
        if let Some(up) = state.observe(result.is_ok()) {
            match &result {
                Ok(()) => info!(service, backend = %target, "backend is up"),
                Err(reason) => warn!(service, backend = %target, %reason, "backend is down"),
            }
            let down = result.err().filter(|_| !up).map(|reason| reason.to_string());
            health.send_if_modified(|h| h.set(&service, target.ip(), down));
        }
    }
}

/// Checks `target` once within `limit`.
pub async fn probe_within(
    limit: Duration,
    target: SocketAddr,
    check: &HealthCheck,
    login: Option<&Credentials>,
) -> Result<(), ProbeError> {
    timeout(limit, probe(target, check, login))
        .await
        .unwrap_or(Err(ProbeError::Timeout(limit)))
}

/// Checks `target` once (a MySQL check logs in with `login`): Ok when it passes, otherwise
/// why not.
pub async fn probe(target: SocketAddr, check: &HealthCheck, login: Option<&Credentials>) -> Result<(), ProbeError> {
    if check.kind == CheckKind::Mysql {
        let login = login.ok_or_else(|| ProbeError::Setup("no credentials configured".into()))?;
        return crate::mysql::monitor::login_check(target, login).await;
    }
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
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
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
            http_check(tls, &host, check).await
        }
    }
}

/// Sends a GET for the check's path and compares the response status.
async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    check: &HealthCheck,
) -> Result<(), ProbeError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: foobar-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Io(format!("send: {e}")))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| ProbeError::Io(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = parse_status(&head).ok_or(ProbeError::NoStatusLine)?;
    if status == check.expect_status {
        Ok(())
    } else {
        Err(ProbeError::Status {
            got: status,
            expected: check.expect_status,
        })
    }
}

/// The TLS client configuration of HTTPS checks: aws-lc-rs, TLS 1.2 and 1.3, and no
/// certificate verification (a health check asks "does it answer", as HAProxy's
/// `check-ssl verify none` does; backends often serve the VIP's name, not their address's).
fn tls_config() -> Result<Arc<ClientConfig>, ProbeError> {
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
        .map_err(ProbeError::Setup)
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
    fn rise_and_fall_need_runs_in_a_row() {
        let mut state = RiseFall::new(2, 3, Some(true));
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(true), None, "a pass breaks the run of failures");
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(false), None);
        assert_eq!(state.observe(false), Some(false), "the third failure in a row");
        assert!(!state.is_up());
        assert_eq!(state.observe(true), None);
        assert_eq!(state.observe(true), Some(true), "the second pass in a row");
        let mut undecided = RiseFall::new(5, 5, None);
        assert!(!undecided.is_up());
        assert_eq!(undecided.observe(true), Some(true), "the first probe decides at once");
        assert_eq!(undecided.observe(true), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
