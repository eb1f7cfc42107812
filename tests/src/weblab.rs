//! The web-tier lab: one namespace running `foobar run` with a `[web]` section (TLS on 443,
//! redirects on 80) over generated certificates (ECDSA and RSA for www.foobar.com, an ECDSA
//! default), a document root and two application servers behind `/api/`, with curl, openssl
//! and wrk as clients in the same namespace.

use crate::{app::HttpServer, ChildGuard, Netns, PinDir, Scratch};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The listeners' address.
pub const ADDR: &str = "10.99.0.1";
/// The site's name.
pub const HOST: &str = "www.foobar.com";
/// Port of the first application server.
pub const APP1: u16 = 9001;
/// Port of the second application server.
pub const APP2: u16 = 9002;

/// A running web lab.
pub struct WebLab {
    /// foobar (None once stopped).
    pub foobar: Option<ChildGuard>,
    /// The application servers `app1` and `app2` behind `/api/` (None once stopped).
    pub apps: Vec<Option<HttpServer>>,
    pins: PinDir,
    /// The namespace.
    pub ns: Netns,
    /// Certificates, document root, configuration and logs.
    pub scratch: Scratch,
}

/// Generates a self-signed end-entity certificate `DIR/NAME.crt` with its key `DIR/NAME.key`
/// for `names` (the subject CN is the first), with an `ec` (P-256) or `rsa` (2048) key; clients
/// trust it directly.
pub fn self_signed(dir: &std::path::Path, name: &str, kind: &str, names: &[&str]) -> Result<()> {
    let key_opts: &[&str] = if kind == "ec" {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let san = names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
    let crt = dir.join(format!("{name}.crt")).display().to_string();
    let key = dir.join(format!("{name}.key")).display().to_string();
    let subject = format!("/CN={}", names.first().context("a certificate needs a name")?);
    let ext = format!("subjectAltName={san}");
    let mut args = vec!["openssl", "req", "-x509", "-nodes", "-days", "2"];
    args.extend_from_slice(key_opts);
    args.extend_from_slice(&[
        "-keyout",
        &key,
        "-out",
        &crt,
        "-subj",
        &subject,
        "-addext",
        &ext,
        "-addext",
        "basicConstraints=critical,CA:FALSE",
    ]);
    crate::sh(&args)?;
    Ok(())
}

/// The document root's files: (path, contents).
pub fn documents() -> Vec<(&'static str, Vec<u8>)> {
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    vec![
        ("index.html", b"<h1>www.foobar.com</h1>\n".to_vec()),
        ("assets/style.css", b"body { color: black }\n".to_vec()),
        ("assets/app.js", b"console.log('plain');\n".to_vec()),
        ("assets/app.js.br", b"BROTLI-BYTES".to_vec()),
        ("assets/app.js.gz", b"GZIP-BYTES".to_vec()),
        ("sub/index.html", b"sub index\n".to_vec()),
        ("big.bin", big),
    ]
}

impl WebLab {
    /// Generates certificates and files, writes the configuration and starts foobar.
    pub fn start(tag: &str) -> Result<Self> {
        Self::start_with(tag, "")
    }

    /// [`WebLab::start`] with `extra` appended to the configuration.
    pub fn start_with(tag: &str, extra: &str) -> Result<Self> {
        let scratch = Scratch::new(&format!("web-{tag}"))?;
        let ns = Netns::new(&format!("web{tag}"))?;
        ns.exec(&["ip", "link", "add", "w0", "type", "veth", "peer", "name", "w1"])?;
        ns.exec(&["ip", "link", "set", "w0", "up"])?;
        ns.exec(&["ip", "link", "set", "w1", "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{ADDR}/24"), "dev", "w0"])?;
        let lab_pins = PinDir::new(&format!("web{tag}"));
        let lab = Self {
            foobar: None,
            apps: Vec::new(),
            pins: lab_pins,
            ns,
            scratch,
        };
        lab.certificate("www-ec", "ec", &[HOST, "foobar.com"])?;
        lab.certificate("www-rsa", "rsa", &[HOST, "foobar.com"])?;
        lab.certificate("default", "ec", &["default.foobar.test"])?;
        let root = lab.root();
        for (path, contents) in documents() {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().context("document path")?)?;
            std::fs::write(&file, contents)?;
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("escape"))?;
        std::fs::write(lab.config(), lab.config_text() + extra)?;
        let mut lab = lab;
        for (i, port) in [APP1, APP2].into_iter().enumerate() {
            let addr: std::net::SocketAddr = format!("{ADDR}:{port}").parse()?;
            lab.apps
                .push(Some(HttpServer::app(&lab.ns, addr, &format!("app{}", i + 1))?));
        }
        lab.start_foobar()?;
        Ok(lab)
    }

    /// Starts foobar and waits until its listeners are up.
    pub fn start_foobar(&mut self) -> Result<()> {
        let log = self.scratch.file("foobar.log");
        self.foobar = Some(crate::start_foobar(&self.ns, &self.config(), &log)?);
        Ok(())
    }

    /// Launches `command` (which ends by running `foobar run --config` on this lab's file, as
    /// a wrapper or a service manager would) with its output in the lab's log, without waiting.
    pub fn launch(&mut self, mut command: std::process::Command) -> Result<()> {
        let log = self.scratch.file("foobar.log");
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdout(std::process::Stdio::from(file.try_clone()?))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .with_context(|| format!("launching {command:?}"))?;
        self.foobar = Some(ChildGuard::adopt(child, &log));
        Ok(())
    }

    /// The document root.
    pub fn root(&self) -> PathBuf {
        self.scratch.file("www")
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.scratch.file("foobar.toml")
    }

    /// The pin directory of its data plane.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pins.path
    }

    /// foobar's control socket.
    pub fn socket(&self) -> PathBuf {
        self.scratch.file("control.sock")
    }

    /// `foobar reload` against the lab's daemon: its exit status and everything it printed.
    pub fn reload(&self) -> Result<(i32, String)> {
        let out = std::process::Command::new(crate::foobar_bin())
            .args(["reload", "--socket"])
            .arg(self.socket())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// foobar's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("foobar.log")).unwrap_or_default()
    }

    /// Path of a generated PEM file (`NAME.crt` or `NAME.key`).
    pub fn pem(&self, file: &str) -> PathBuf {
        self.scratch.file(file)
    }

    /// Generates a self-signed certificate `NAME.crt` / `NAME.key` in the scratch directory
    /// (see [`self_signed`]).
    pub fn certificate(&self, name: &str, kind: &str, names: &[&str]) -> Result<()> {
        self_signed(&self.scratch.path, name, kind, names)
    }

    fn config_text(&self) -> String {
        format!(
            r#"[node]
name = "web"
interfaces = ["w0"]
pin_dir = "{pins}"
control_socket = "{socket}"

[[web.listener]]
address = "{ADDR}:443"
tls = true

[[web.listener]]
address = "{ADDR}:80"
redirect_to_https = true

[[web.certificate]]
chain = "{dir}/www-ec.crt"
key = "{dir}/www-ec.key"

[[web.certificate]]
chain = "{dir}/www-rsa.crt"
key = "{dir}/www-rsa.key"

[[web.certificate]]
chain = "{dir}/default.crt"
key = "{dir}/default.key"
default = true

[[web.site]]
names = ["{HOST}", "foobar.com"]
root = "{root}"
hsts_max_age_s = 31536000

[[web.site.cache]]
prefix = "/assets/"
cache_control = "public, max-age=31536000, immutable"

[[web.site.proxy]]
prefix = "/api/"
upstream = "app"

[[web.upstream]]
name = "app"
servers = ["{ADDR}:{APP1}", "{ADDR}:{APP2}"]
read_timeout_ms = 1000
pool_idle_timeout_ms = 5000

[[web.site.proxy]]
prefix = "/api/checked/"
upstream = "checked"

[[web.upstream]]
name = "checked"
servers = ["{ADDR}:{APP1}", "{ADDR}:{APP2}"]
balance = "least-requests"
health = {{ kind = "http", path = "/api/name", interval_ms = 200, timeout_ms = 150, rise = 1, fall = 1 }}

[web.limits]
header_read_timeout_ms = 2000
max_connections_per_client = 64
max_request_body_bytes = 1048576
upgrade_idle_timeout_ms = 1000
"#,
            pins = self.pins.path.display(),
            socket = self.socket().display(),
            dir = self.scratch.path.display(),
            root = self.root().display(),
        )
    }

    /// The curl command line with www.foobar.com resolving to the listeners and the generated
    /// certificate trusted, then `args`.
    fn curl_command(&self, args: &[&str]) -> Vec<String> {
        let mut full: Vec<String> = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("{HOST}:443:{ADDR}"),
            "--resolve",
            &format!("{HOST}:80:{ADDR}"),
            "--cacert",
            &self.pem("www-ec.crt").display().to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    /// curl inside the namespace (see [`WebLab::curl_command`]); returns stdout.
    pub fn curl(&self, args: &[&str]) -> Result<String> {
        let full = self.curl_command(args);
        self.ns.exec(&full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `n` proxied requests of pool `app` (`/api/name`) over one HTTP/1.1 connection: what the
    /// app servers answered (their names).
    pub fn proxied_names(&self, n: usize) -> Result<String> {
        let urls: Vec<String> = (0..n).map(|_| format!("https://{HOST}/api/name")).collect();
        let mut args = vec!["--http1.1"];
        args.extend(urls.iter().map(String::as_str));
        self.curl(&args)
    }

    /// The same on a thread in the namespace, for requests that overlap other steps.
    pub fn curl_in_background(&self, args: &[&str]) -> std::thread::JoinHandle<Result<Result<String>>> {
        let full = self.curl_command(args);
        self.ns
            .thread(move || crate::sh(&full.iter().map(String::as_str).collect::<Vec<_>>()))
    }

    /// `openssl s_client` to the TLS listener with these extra arguments and an HTTP/1.1
    /// request on stdin (read to the end, so TLS 1.3 tickets arrive); returns success and
    /// everything it printed.
    pub fn s_client(&self, args: &str) -> Result<(bool, String)> {
        let cmd = format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: {HOST}\\r\\nConnection: close\\r\\n\\r\\n' | \
             timeout 10 openssl s_client -connect {ADDR}:443 -ign_eof {args} 2>&1"
        );
        self.ns.exec_any(&["sh", "-c", &cmd])
    }

    /// Sends `request` as it is over TLS to the HTTPS listener (HTTP/1.1 by ALPN) from inside
    /// the namespace and returns everything the server sent until it closed (or 5 s passed).
    pub fn raw_tls(&self, request: &[u8]) -> Result<String> {
        let (ca, request) = (std::fs::read(self.pem("www-ec.crt"))?, request.to_vec());
        self.ns.run(move || -> Result<String> {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut tls = tls_connect(&ca, b"http/1.1").await?;
                tls.write_all(&request).await?;
                let mut out = Vec::new();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
                Ok(String::from_utf8_lossy(&out).into_owned())
            })
        })?
    }

    /// `openssl s_client` that only completes the handshake (no request).
    pub fn handshake(&self, args: &str) -> Result<(bool, String)> {
        let cmd = format!("timeout 10 openssl s_client -connect {ADDR}:443 {args} < /dev/null 2>&1");
        self.ns.exec_any(&["sh", "-c", &cmd])
    }
}

/// An HTTP/2 client over TLS to the web lab's HTTPS listener trusting `ca` (PEM), its
/// connection driven by a task of the current runtime; run it inside the lab's namespace.
pub async fn h2_client(ca: &[u8]) -> Result<h2::client::SendRequest<bytes::Bytes>> {
    let tls = tls_connect(ca, b"h2").await?;
    let (client, connection) = h2::client::handshake(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A TLS connection to the web lab's HTTPS listener trusting `ca` (PEM), offering `alpn`; run it
/// inside the lab's namespace.
pub async fn tls_connect(ca: &[u8], alpn: &[u8]) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect((ADDR, 443)).await?;
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from(HOST)?, tcp)
        .await?)
}
