//! The web tier against real clients: curl over HTTP/1.1 and HTTP/2, `openssl s_client` for
//! protocol versions, cipher suites, SNI, ALPN and resumption, wrk during a certificate
//! reload, and hostile paths.

use anyhow::{bail, ensure, Context, Result};
use foobar_tests::{
    wait_until,
    weblab::{documents, WebLab, ADDR, HOST},
};
use std::time::Duration;

const URL: &str = "https://www.foobar.com";

#[test]
fn https_serves_files_over_http1_and_http2_and_http_redirects() -> Result<()> {
    let lab = WebLab::start("basic")?;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = lab.curl(&[flag, "-i", "-w", "\n%{http_version} %{http_code}", &format!("{URL}/")])?;
        ensure!(out.ends_with(&format!("\n{version} 200")), "{flag}: {out}");
        ensure!(out.contains("<h1>www.foobar.com</h1>"), "{flag}: {out}");
        let lower = out.to_lowercase();
        for header in [
            "content-type: text/html; charset=utf-8",
            "strict-transport-security: max-age=31536000",
            "server: foobar",
        ] {
            ensure!(lower.contains(header), "{flag}: no {header:?} in {out}");
        }
    }
    // A directory without its slash is redirected; with it, its index is served.
    let out = lab.curl(&["-i", &format!("{URL}/sub")])?;
    ensure!(
        out.starts_with("HTTP/2 301") && out.to_lowercase().contains("location: /sub/"),
        "{out}"
    );
    ensure!(lab.curl(&[&format!("{URL}/sub/")])? == "sub index\n");
    // Plain HTTP is redirected to the same URL over HTTPS.
    let out = lab.curl(&["-i", "http://www.foobar.com/assets/app.js?v=2"])?;
    ensure!(out.starts_with("HTTP/1.1 301"), "{out}");
    ensure!(out.contains("https://www.foobar.com/assets/app.js?v=2"), "{out}");
    // Keep-alive: several requests on one connection.
    let out = lab.curl(&[
        "--http1.1",
        "-w",
        "%{num_connects} ",
        &format!("{URL}/"),
        &format!("{URL}/sub/"),
        &format!("{URL}/assets/style.css"),
    ])?;
    ensure!(
        out.matches("0 ").count() == 2,
        "requests after the first reuse the connection: {out}"
    );
    // The counters saw it all: `foobar status` reports them.
    let socket = lab.scratch.file("control.sock");
    let web = foobar::ctl::query(&socket)?.web.context("no web summary")?;
    let count = |class: &str| web.requests.iter().find(|(k, _)| k == class).map_or(0, |(_, n)| *n);
    ensure!(count("2xx") >= 5 && count("3xx") >= 2, "{web:?}");
    ensure!(web.tls13_handshakes >= 4, "{web:?}");
    let total: u64 = web.requests.iter().map(|(_, n)| n).sum();
    ensure!(web.latency_count == total, "{web:?}");
    let shown = lab.ns.exec_direct(
        &foobar_tests::foobar_bin(),
        &["status", "--socket", &socket.display().to_string()],
    )?;
    ensure!(shown.contains("web: ") && shown.contains("2xx "), "{shown}");
    // One access-log line per request, with the TLS version.
    let log = lab.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("\"target\":\"foobar::access\""))
        .count() as u64;
    ensure!(lines == total, "{lines} access-log lines for {total} requests");
    ensure!(
        log.contains("\"tls\":\"TLSv1.3\"") && log.contains("\"vhost\":\"www.foobar.com\""),
        "{log}"
    );
    Ok(())
}

#[test]
fn tls_versions_suites_sni_alpn_and_resumption() -> Result<()> {
    let lab = WebLab::start("tls")?;
    let ok = |args: &str, expect: &[&str]| -> Result<()> {
        let (success, out) = lab.s_client(args)?;
        for e in expect {
            if !success || !out.contains(e) {
                bail!("s_client {args}: expected {e:?}:\n{out}");
            }
        }
        Ok(())
    };
    let sni = format!("-servername {HOST}");
    ok(
        &format!("{sni} -tls1_3"),
        &["Protocol  : TLSv1.3", "subject=CN = www.foobar.com"],
    )?;
    ok(&format!("{sni} -tls1_2"), &["Protocol  : TLSv1.2", "ECDHE"])?;
    // No SNI, or an unknown name: the default certificate.
    ok("-noservername", &["subject=CN = default.foobar.test"])?;
    ok("-servername other.example", &["subject=CN = default.foobar.test"])?;
    // A client that only verifies RSA signatures gets the RSA certificate for the same name.
    ok(
        &format!("{sni} -tls1_2 -sigalgs RSA-PSS+SHA256:RSA+SHA256"),
        &["Server public key is 2048 bit"],
    )?;
    ok(&format!("{sni} -tls1_3"), &["Server public key is 256 bit"])?;
    for (alpn, chosen) in [
        ("h2,http/1.1", "ALPN protocol: h2"),
        ("http/1.1", "ALPN protocol: http/1.1"),
    ] {
        let (_, out) = lab.handshake(&format!("{sni} -alpn {alpn}"))?;
        ensure!(out.contains(chosen), "ALPN {alpn}: expected {chosen:?}:\n{out}");
    }
    for refused in [
        format!("{sni} -tls1_1"),
        format!("{sni} -tls1_2 -cipher AES128-SHA"),
        format!("{sni} -tls1_2 -cipher ECDHE-RSA-AES128-SHA"),
    ] {
        let (success, out) = lab.s_client(&refused)?;
        ensure!(
            !success || !out.contains("Protocol  :") || out.contains("Cipher is (NONE)"),
            "{refused} was accepted:\n{out}"
        );
    }
    // Resumption: TLS 1.3 tickets, and TLS 1.2 (tickets or session ids).
    for version in ["-tls1_3", "-tls1_2"] {
        let session = lab.scratch.file(&format!("session{version}"));
        let s = session.display();
        ok(&format!("{sni} {version} -sess_out {s}"), &["New, TLSv1."])?;
        ok(&format!("{sni} {version} -sess_in {s}"), &["Reused, TLSv1."])?;
    }
    Ok(())
}

#[test]
fn static_files_validators_ranges_and_encodings() -> Result<()> {
    let lab = WebLab::start("files")?;
    let head = lab.curl(&["-sI", &format!("{URL}/assets/style.css")])?;
    let etag = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("etag: ")
                .map(|_| l[6..].trim().to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no ETag in {head}"))?;
    let lower = head.to_lowercase();
    for h in [
        "content-type: text/css; charset=utf-8",
        "cache-control: public, max-age=31536000, immutable",
        "accept-ranges: bytes",
        "last-modified: ",
        "content-length: 22",
    ] {
        ensure!(lower.contains(h), "no {h:?} in {head}");
    }
    let code = |args: &[&str]| -> Result<String> {
        let mut full = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        full.extend_from_slice(args);
        lab.curl(&full)
    };
    let style = format!("{URL}/assets/style.css");
    ensure!(code(&["-H", &format!("If-None-Match: {etag}"), &style])? == "304");
    ensure!(code(&["-H", "If-None-Match: \"other\"", &style])? == "200");
    let modified = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("last-modified: "))
        .map(|l| l["last-modified: ".len()..].trim().to_string())
        .unwrap_or_default();
    ensure!(code(&["-H", &format!("If-Modified-Since: {modified}"), &style])? == "304");

    // Byte ranges.
    let big = format!("{URL}/big.bin");
    let expected = documents()
        .into_iter()
        .find(|(p, _)| *p == "big.bin")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let part = lab.ns.exec(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --resolve {HOST}:443:{ADDR} --cacert {} -r 100-199 {big} | od -An -tu1 -v",
            lab.pem("www-ec.crt").display()
        ),
    ])?;
    let got: Vec<u8> = part.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    ensure!(
        got == expected[100..200],
        "range 100-199 returned {} bytes that differ",
        got.len()
    );
    ensure!(code(&["-r", "0-9", &big])? == "206");
    ensure!(code(&["-r", "999999999-", &big])? == "416");
    let full_len = lab.curl(&["-o", "/dev/null", "-w", "%{size_download}", &big])?;
    ensure!(full_len == expected.len().to_string(), "streamed {full_len} bytes");

    // Precompressed variants by Accept-Encoding, with Vary.
    let app = format!("{URL}/assets/app.js");
    for (accept, body, encoding) in [
        ("br, gzip", "BROTLI-BYTES", "content-encoding: br"),
        ("gzip", "GZIP-BYTES", "content-encoding: gzip"),
        ("identity", "console.log('plain');\n", ""),
    ] {
        let out = lab.curl(&["-i", "-H", &format!("Accept-Encoding: {accept}"), &app])?;
        let lower = out.to_lowercase();
        ensure!(out.ends_with(body), "{accept}: {out}");
        ensure!(lower.contains("vary: accept-encoding"), "{accept}: {out}");
        ensure!(encoding.is_empty() || lower.contains(encoding), "{accept}: {out}");
        ensure!(
            lower.contains("content-type: text/javascript; charset=utf-8"),
            "{accept}: {out}"
        );
    }
    // HEAD has the headers and no body; other methods are refused.
    ensure!(lab
        .curl(&["-I", &big])?
        .to_lowercase()
        .contains(&format!("content-length: {}", expected.len())));
    ensure!(code(&["-X", "POST", &big])? == "405");
    ensure!(code(&[&format!("{URL}/missing.html")])? == "404");
    Ok(())
}

#[test]
fn paths_never_escape_the_document_root() -> Result<()> {
    let lab = WebLab::start("paths")?;
    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/sub/..%2f..%2f..%2fetc/passwd",
        "/sub/%2e%2e/%2e%2e/etc/passwd",
        "/escape",
        "/..%5c..%5cetc/passwd",
        "/%00/etc/passwd",
    ] {
        let out = lab.curl(&["--path-as-is", "-w", "\n%{http_code}", &format!("{URL}{path}")])?;
        let status = out.lines().last().unwrap_or_default();
        ensure!(
            !out.contains("root:") && matches!(status, "400" | "403" | "404"),
            "{path} gave {status}:\n{out}"
        );
    }
    Ok(())
}

#[test]
fn certificates_reload_under_load_and_bad_ones_are_refused() -> Result<()> {
    let lab = WebLab::start("reload")?;
    // wrk reaches the listener by address (no SNI): the default certificate.
    let wrk = lab.ns.thread({
        let url = format!("https://{ADDR}/");
        move || foobar_tests::sh(&["wrk", "-t2", "-c16", "-d4s", &url])
    });
    std::thread::sleep(Duration::from_millis(1000));
    lab.certificate("default", "ec", &["renewed.foobar.test"])?;
    wait_until(Duration::from_secs(6), "the renewed certificate", || {
        lab.s_client("-noservername")
            .is_ok_and(|(_, out)| out.contains("subject=CN = renewed.foobar.test"))
    })?;
    let report = wrk.join().map_err(|_| anyhow::anyhow!("wrk thread panicked"))???;
    ensure!(report.contains("Requests/sec"), "{report}");
    ensure!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "requests failed during the reload:\n{report}"
    );
    // A broken certificate file is refused; the renewed certificate keeps serving.
    std::fs::write(lab.pem("default.crt"), "not a certificate\n")?;
    wait_until(Duration::from_secs(6), "the refusal", || {
        lab.log().contains("changed certificate files refused")
    })?;
    let (_, out) = lab.s_client("-noservername")?;
    ensure!(out.contains("subject=CN = renewed.foobar.test"), "{out}");
    // SIGHUP with a bad certificate is refused the same way, with the file named.
    let foobar = lab.foobar.as_ref().ok_or_else(|| anyhow::anyhow!("foobar running"))?;
    foobar.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_until(Duration::from_secs(3), "the reload refusal", || {
        lab.log().contains("reload refused") && lab.log().contains("default.crt")
    })?;
    Ok(())
}

/// A TLS connection to the web lab's listener from inside its namespace, offering `alpn`.
async fn tls_connect(ca: &[u8], alpn: &[u8]) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
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

#[test]
fn http2_rapid_resets_end_the_connection_not_the_server() -> Result<()> {
    let lab = WebLab::start("reset")?;
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    let (opened, healthy) = lab.ns.run(move || -> Result<(usize, bool)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            // Open streams and cancel each at once (HEADERS then RST_STREAM), as in the 2023
            // rapid-reset attack: the server must give up on the connection early.
            let tls = tls_connect(&ca, b"h2").await?;
            let (mut client, connection) = h2::client::handshake(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut opened = 0;
            let mut ended = None;
            for _ in 0..5000 {
                client = match client.ready().await {
                    Ok(c) => c,
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                };
                let request = hyper::Request::get(format!("https://{HOST}/")).body(())?;
                match client.send_request(request, true) {
                    Ok((response, _)) => drop(response),
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
                opened += 1;
                tokio::task::yield_now().await;
            }
            // The server ends the connection: GOAWAY(ENHANCE_YOUR_CALM), or a close the client
            // notices as a broken pipe while it is still writing.
            let ended_by_server = ended.as_ref().is_some_and(|e| {
                (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)) || e.is_io()
            });
            ensure!(
                ended_by_server,
                "after {opened} reset streams the connection ended with {ended:?}"
            );
            // A new connection is served as usual.
            let tls = tls_connect(&ca, b"h2").await?;
            let (client, connection) = h2::client::handshake(tls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut client = client.ready().await?;
            let (response, _) = client.send_request(hyper::Request::get(format!("https://{HOST}/")).body(())?, true)?;
            let healthy = response.await?.status() == 200;
            Ok((opened, healthy))
        })
    })??;
    eprintln!("the server closed the connection after {opened} reset streams");
    // How many streams get through first depends on how many the server accepted before their
    // resets arrived (tens to several hundred here); never the whole flood.
    ensure!(
        opened < 5000,
        "the server accepted {opened} reset streams without closing the connection"
    );
    ensure!(healthy, "a fresh connection after the flood was not served");
    Ok(())
}
