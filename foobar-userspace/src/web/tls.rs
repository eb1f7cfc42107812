//! TLS for the web tier: rustls with one crypto provider (aws-lc-rs), TLS 1.2 and 1.3 with the
//! Mozilla-intermediate suites (AEAD only), certificates chosen by SNI among many (ECDSA and
//! RSA for the same name: by the client's signature schemes), ALPN h2 and http/1.1, session
//! resumption by a shared session cache and tickets whose keys rotate. Certificates reload
//! atomically: a new set that fails to load is refused and the running one keeps serving.

use super::names::NameTable;
use super::tickets::{SharedTicketer, TicketKey};
use crate::config::web::Certificate;
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::{
    crypto::{aws_lc_rs, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions},
    sign::CertifiedKey,
    ServerConfig,
};
use std::{path::Path, sync::Arc};

/// Sessions kept for ID-based resumption (TLS 1.2 clients without tickets).
const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// The one crypto provider: aws-lc-rs with the Mozilla-intermediate suites in Mozilla's order
/// (TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; TLS 1.2 ECDHE-ECDSA / ECDHE-RSA with
/// the same AEADs; no CBC, no RSA key exchange). The server's order wins, so clients that list
/// AES-256 first still get the cheaper AES-128 / SHA-256 key schedule.
pub fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite as suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// Which file of a certificate pair a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain.
    Chain,
    /// The private key.
    Key,
}

/// Loads a certificate chain and its private key and checks that they belong together;
/// returns the pair and the DNS names the leaf certificate serves, or which file is at fault
/// and why.
pub fn load_pair(
    chain_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), (PemFile, anyhow::Error)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .with_context(|| format!("reading certificate chain {}", chain_path.display()))
        .map_err(|e| (PemFile::Chain, e))?;
    let Some(leaf) = chain.first() else {
        return Err((
            PemFile::Chain,
            anyhow::anyhow!("{}: no certificate in the file", chain_path.display()),
        ));
    };
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .with_context(|| format!("{}: the first certificate does not parse", chain_path.display()))
        .map_err(|e| (PemFile::Chain, e))?
        .valid_dns_names()
        .map(str::to_string)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))
        .map_err(|e| (PemFile::Key, e))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .with_context(|| {
            format!(
                "{} with {}: the key does not load or does not match the certificate",
                chain_path.display(),
                key_path.display()
            )
        })
        .map_err(|e| (PemFile::Key, e))?;
    Ok((Arc::new(certified), names))
}

/// Certificates by the names they serve.
#[derive(Debug, Default)]
struct Store {
    names: NameTable<Vec<Arc<CertifiedKey>>>,
    default: Vec<Arc<CertifiedKey>>,
}

impl Store {
    fn load(certificates: &[Certificate], provider: &CryptoProvider) -> Result<Self> {
        let mut store = Store::default();
        let default_index = certificates.iter().position(|c| c.default).unwrap_or(0);
        for (i, c) in certificates.iter().enumerate() {
            let (certified, names) = load_pair(&c.chain, &c.key, provider).map_err(|(_, e)| e)?;
            for name in &names {
                store.names.entry(name).push(certified.clone());
            }
            if i == default_index {
                store.default.push(certified.clone());
            }
        }
        // Without certificates (only plain listeners; validation requires one for a TLS
        // listener) the store stays empty and is never asked.
        Ok(store)
    }

    /// The candidates for a server name: exact, then wildcard, then the default.
    fn candidates(&self, name: Option<&str>) -> &[Arc<CertifiedKey>] {
        name.and_then(|n| self.names.get(n)).unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let candidates = self.candidates(hello.server_name());
        let schemes = hello.signature_schemes();
        candidates
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| candidates.first())
            .cloned()
    }
}

/// The live TLS configuration, swapped whole on reload.
pub struct Tls {
    provider: Arc<CryptoProvider>,
    /// Kept across reloads so tickets and cached sessions stay valid.
    ticketer: Arc<dyn ProducesTickets>,
    /// The same ticketer when its keys are shared (`[web] ticket_keys`), for reloads.
    shared_tickets: Option<Arc<SharedTicketer>>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Loads the certificates and builds the first configuration; tickets are sealed with
    /// `ticket_keys` (shared by every edge) or with keys of this process's own.
    pub fn new(certificates: &[Certificate], ticket_keys: Option<Vec<TicketKey>>) -> Result<Self> {
        let provider = provider();
        let shared_tickets = ticket_keys.map(SharedTicketer::new);
        let ticketer: Arc<dyn ProducesTickets> = match &shared_tickets {
            Some(shared) => shared.clone(),
            None => aws_lc_rs::Ticketer::new().context("creating the session ticketer")?,
        };
        let sessions: Arc<dyn StoresServerSessions + Send + Sync> =
            ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        let config = build(&provider, &ticketer, &sessions, certificates)?;
        Ok(Self {
            provider,
            ticketer,
            shared_tickets,
            sessions,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Loads a new certificate set into a configuration that is not used yet ([`Tls::commit`]
    /// makes it live); the running one is untouched either way.
    pub fn prepare(&self, certificates: &[Certificate]) -> Result<Arc<ServerConfig>> {
        build(&self.provider, &self.ticketer, &self.sessions, certificates).map(Arc::new)
    }

    /// Makes a prepared configuration the one new handshakes use.
    pub fn commit(&self, config: Arc<ServerConfig>) {
        self.current.store(config);
    }

    /// Seals and opens tickets with `keys` from now on (when they are shared).
    pub fn set_ticket_keys(&self, keys: Vec<TicketKey>) {
        if let Some(shared) = &self.shared_tickets {
            shared.set_keys(keys);
        }
    }
}

fn build(
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions + Send + Sync>,
    certificates: &[Certificate],
) -> Result<ServerConfig> {
    let store = Store::load(certificates, provider)?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(config)
}
