//! The web tier against real clients: curl over HTTP/1.1 and HTTP/2, `openssl s_client` for
//! protocol versions, cipher suites, SNI, ALPN and resumption, wrk during a certificate
//! reload, and hostile paths.

use anyhow::{bail, ensure, Context, Result};
use foobar_tests::{
    wait_until,
    weblab::{documents, tls_connect, WebLab, ADDR, HOST},
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
    // Refused: TLS 1.1, RSA key exchange, CBC suites. Each offer is first shown to complete
    // against a server that allows it (openssl s_server), so that a client refusing on its own
    // side (OpenSSL 3 does, for TLS 1.1 at its default security level) cannot pass for foobar
    // refusing; then foobar must answer it with the alert that says why.
    for (offer, cert, negotiated, alert) in [
        (
            "-tls1_1 -cipher DEFAULT:@SECLEVEL=0",
            "www-ec",
            "Protocol  : TLSv1.1",
            "alert handshake failure",
        ),
        (
            "-tls1_2 -cipher AES128-SHA",
            "www-rsa",
            "Cipher    : AES128-SHA",
            "alert handshake failure",
        ),
        (
            "-tls1_2 -cipher ECDHE-RSA-AES128-SHA",
            "www-rsa",
            "Cipher    : ECDHE-RSA-AES128-SHA",
            "alert handshake failure",
        ),
    ] {
        let log = lab.scratch.file("s_server.log");
        let (crt, key) = (lab.pem(&format!("{cert}.crt")), lab.pem(&format!("{cert}.key")));
        let mut args = vec!["s_server", "-accept", "10.99.0.1:4443", "-www", "-cert"];
        let (crt, key) = (crt.display().to_string(), key.display().to_string());
        args.extend([crt.as_str(), "-key", key.as_str()]);
        args.extend(offer.split(' '));
        let _server = lab.ns.spawn(std::path::Path::new("/usr/bin/openssl"), &args, &log)?;
        let control = format!("echo | timeout 5 openssl s_client -connect {ADDR}:4443 {offer} 2>&1");
        let mut out = String::new();
        wait_until(Duration::from_secs(5), "the control handshake", || {
            out = lab
                .ns
                .exec_any(&["sh", "-c", &control])
                .map(|(_, o)| o)
                .unwrap_or_default();
            out.contains(negotiated)
        })
        .with_context(|| format!("{offer} does not complete even where it is allowed:\n{out}"))?;
        let (_, out) = lab.s_client(&format!("{sni} {offer}"))?;
        ensure!(
            out.contains(alert) && out.contains("Cipher is (NONE)"),
            "{offer}: foobar did not refuse it with {alert:?}:\n{out}"
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
fn dotfiles_are_not_served_unless_the_site_says_so() -> Result<()> {
    let lab = WebLab::start("dots")?;
    let root = lab.root();
    std::fs::create_dir_all(root.join(".git"))?;
    std::fs::write(root.join(".git/config"), "[remote \"origin\"] secret\n")?;
    std::fs::write(root.join(".env"), "DB_PASSWORD=secret\n")?;
    std::fs::create_dir_all(root.join(".well-known/acme-challenge"))?;
    std::fs::write(root.join(".well-known/acme-challenge/token"), "token\n")?;
    let get = |path: &str| -> Result<(String, String)> {
        let out = lab.curl(&["--path-as-is", "-w", "\n%{http_code}", &format!("{URL}{path}")])?;
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        Ok((status.to_string(), body.to_string()))
    };
    for path in ["/.git/config", "/%2egit/config", "/.env", "/./.env"] {
        let (status, body) = get(path)?;
        ensure!(
            status == "404" && !body.contains("secret"),
            "{path} gave {status}: {body}"
        );
    }
    // ACME's challenges stay reachable.
    ensure!(get("/.well-known/acme-challenge/token")? == ("200".into(), "token\n".into()));
    // The control: with serve_dotfiles the same requests get the files (they are there, and
    // the probe reaches them).
    let config = std::fs::read_to_string(lab.config())?;
    std::fs::write(
        lab.config(),
        config.replacen(
            "hsts_max_age_s = 31536000",
            "hsts_max_age_s = 31536000\nserve_dotfiles = true",
            1,
        ),
    )?;
    let (status, out) = lab.reload()?;
    ensure!(status == 0, "{out}");
    for path in ["/.git/config", "/.env"] {
        let (status, body) = get(path)?;
        ensure!(
            status == "200" && body.contains("secret"),
            "{path} with serve_dotfiles gave {status}: {body}"
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

/// HTTP/2 frame types and codes the rapid-reset probe uses (RFC 9113).
const FRAME_HEADERS: u8 = 1;
const FRAME_RST_STREAM: u8 = 3;
const FRAME_SETTINGS: u8 = 4;
const FRAME_PING: u8 = 6;
const FRAME_GOAWAY: u8 = 7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const CANCEL: u32 = 0x8;
/// Streams opened and cancelled in one burst.
const BURST: u32 = 200;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// What a server did about a rapid-reset burst.
#[derive(Debug)]
struct ResetOutcome {
    /// GOAWAY's last stream id and error code, if one came.
    go_away: Option<(u32, u32)>,
    /// Whether the PING sent after the burst was answered (the connection carried on).
    pong: bool,
}

/// The 2023 rapid-reset attack in its sharpest form: the preface, then `BURST` requests each
/// cancelled at once (HEADERS with END_STREAM, then RST_STREAM), all in one write, then a PING;
/// reads what the server answers for up to 3 s.
async fn rapid_reset<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) -> Result<ResetOutcome> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    // HPACK: :method GET, :scheme https, :path / (static table), :authority as a literal.
    let mut block = vec![0x82, 0x87, 0x84, 0x01, HOST.len() as u8];
    block.extend(HOST.as_bytes());
    for i in 0..BURST {
        let id = 2 * i + 1;
        out.extend(frame(FRAME_HEADERS, 0x5, id, &block));
        out.extend(frame(FRAME_RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    out.extend(frame(FRAME_PING, 0, 0, b"rstprobe"));
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut seen = Vec::new();
    let mut outcome = ResetOutcome {
        go_away: None,
        pong: false,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 16384];
    while outcome.go_away.is_none() && !outcome.pong {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
        };
        seen.extend_from_slice(&buf[..n]);
        while seen.len() >= 9 {
            let len = u32::from_be_bytes([0, seen[0], seen[1], seen[2]]) as usize;
            if seen.len() < 9 + len {
                break;
            }
            let (kind, flags, payload) = (seen[3], seen[4], seen[9..9 + len].to_vec());
            seen.drain(..9 + len);
            match kind {
                FRAME_GOAWAY if payload.len() >= 8 => {
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    outcome.go_away = Some((last, code));
                }
                FRAME_PING if flags & 0x1 != 0 && payload == b"rstprobe" => outcome.pong = true,
                _ => {}
            }
        }
    }
    Ok(outcome)
}

/// The probe of a defence: `client` against a local server that hands its one connection to
/// `serve` (a server without foobar's defence).
fn against_a_local_server<T, S, C>(
    serve: impl FnOnce(tokio::net::TcpStream) -> S + Send + 'static,
    client: impl FnOnce(tokio::net::TcpStream) -> C,
) -> Result<T>
where
    S: std::future::Future<Output = ()> + Send + 'static,
    C: std::future::Future<Output = Result<T>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(async move {
                if let Ok((tcp, _)) = listener.accept().await {
                    serve(tcp).await;
                }
            });
            client(tokio::net::TcpStream::connect(addr).await?).await
        })
}

#[test]
fn http2_rapid_resets_end_the_connection_not_the_server() -> Result<()> {
    // The probe is not vacuous: an HTTP/2 server without a limit on reset streams takes the
    // whole burst and answers the PING that follows it.
    let undefended = against_a_local_server(
        |tcp| async move {
            let Ok(mut conn) = h2::server::Builder::new()
                .max_pending_accept_reset_streams(usize::MAX)
                .max_local_error_reset_streams(None)
                .handshake::<_, bytes::Bytes>(tcp)
                .await
            else {
                return;
            };
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                let _ = respond.send_response(hyper::Response::new(()), true);
            }
        },
        rapid_reset,
    )?;
    ensure!(
        undefended.go_away.is_none() && undefended.pong,
        "a server without the defence ended the probe: {undefended:?}"
    );

    let lab = WebLab::start("reset")?;
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    let (outcome, healthy) = lab.ns.run(move || -> Result<(ResetOutcome, bool)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let outcome = rapid_reset(tls_connect(&ca, b"h2").await?).await?;
            // A new connection is served as usual.
            let mut client = foobar_tests::weblab::h2_client(&ca).await?.ready().await?;
            let (response, _) = client.send_request(hyper::Request::get(format!("https://{HOST}/")).body(())?, true)?;
            let healthy = response.await?.status() == 200;
            Ok((outcome, healthy))
        })
    })??;
    // foobar ends the connection with GOAWAY(ENHANCE_YOUR_CALM) long before the burst ends.
    let Some((last_stream, code)) = outcome.go_away else {
        bail!("no GOAWAY after {BURST} reset streams: {outcome:?}");
    };
    ensure!(
        code == ENHANCE_YOUR_CALM,
        "GOAWAY with code {code:#x}, not ENHANCE_YOUR_CALM"
    );
    ensure!(
        last_stream < BURST,
        "the server processed streams up to {last_stream} of {} before GOAWAY",
        2 * BURST - 1
    );
    ensure!(healthy, "a fresh connection after the flood was not served");
    Ok(())
}

/// How long `stream` stays open while the client sends nothing (capped at `limit`).
async fn open_while_silent<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let began = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    began.elapsed()
}

#[test]
fn an_http2_client_that_sends_no_request_is_closed_after_the_header_timeout() -> Result<()> {
    // The probe is not vacuous: hyper's HTTP/2 server on its own keeps a silent client.
    let undefended = against_a_local_server(
        |tcp| async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        },
        |mut silent| async move { Ok(open_while_silent(&mut silent, Duration::from_secs(4)).await) },
    )?;
    ensure!(
        undefended >= Duration::from_secs(4),
        "an undefended server closed the silent client after {undefended:?}"
    );

    // foobar (header_read_timeout_ms = 2000): HTTP/2 by ALPN, then nothing.
    let lab = WebLab::start("h2silent")?;
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    let open_for = lab.ns.run(move || -> Result<Duration> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let mut tls = tls_connect(&ca, b"h2").await?;
            ensure!(
                tls.get_ref().1.alpn_protocol() == Some(b"h2"),
                "HTTP/2 was not negotiated"
            );
            Ok(open_while_silent(&mut tls, Duration::from_secs(8)).await)
        })
    })??;
    ensure!(
        open_for >= Duration::from_millis(1800) && open_for < Duration::from_secs(5),
        "the silent HTTP/2 client was closed after {open_for:?}"
    );
    Ok(())
}

/// Stops the lab's foobar (SIGTERM, as systemd does) and starts it again: a new process, as a
/// client resuming on the other edge meets.
fn restart(lab: &mut WebLab) -> Result<()> {
    let mut running = lab.foobar.take().context("foobar runs")?;
    running.signal(nix::sys::signal::Signal::SIGTERM)?;
    ensure!(running.wait(Duration::from_secs(15))?, "foobar did not stop cleanly");
    lab.start_foobar()
}

#[test]
fn shared_ticket_keys_resume_sessions_in_another_process() -> Result<()> {
    let mut lab = WebLab::start("tickets")?;
    let dir = lab.scratch.path.clone();
    let session = |name: &str| dir.join(name).display().to_string();
    // The probe: with keys of its own, a new process cannot open an earlier process's ticket.
    for version in ["-tls1_3", "-tls1_2"] {
        let (_, out) = lab.s_client(&format!("-servername {HOST} {version} -sess_out {}", session(version)))?;
        ensure!(out.contains("New, TLSv1."), "{version}: {out}");
    }
    restart(&mut lab)?;
    for version in ["-tls1_3", "-tls1_2"] {
        let (_, out) = lab.s_client(&format!("-servername {HOST} {version} -sess_in {}", session(version)))?;
        ensure!(
            out.contains("New, TLSv1."),
            "{version}: resumed without shared keys: {out}"
        );
    }
    // With a shared key file: a ticket from one process resumes in the next.
    let keys = lab.scratch.file("ticket.keys");
    let key = lab.ns.exec(&["openssl", "rand", "-base64", "32"])?;
    std::fs::write(&keys, format!("# shared by every edge\n{key}"))?;
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let config = std::fs::read_to_string(lab.config())?;
    std::fs::write(
        lab.config(),
        format!("{config}\n[web]\nticket_keys = \"{}\"\n", keys.display()),
    )?;
    restart(&mut lab)?;
    for version in ["-tls1_3", "-tls1_2"] {
        let shared = session(&format!("shared{version}"));
        let (_, out) = lab.s_client(&format!("-servername {HOST} {version} -sess_out {shared}"))?;
        ensure!(out.contains("New, TLSv1."), "{version}: {out}");
    }
    restart(&mut lab)?;
    for version in ["-tls1_3", "-tls1_2"] {
        let shared = session(&format!("shared{version}"));
        let (_, out) = lab.s_client(&format!("-servername {HOST} {version} -sess_in {shared}"))?;
        ensure!(
            out.contains("Reused, TLSv1."),
            "{version}: not resumed with shared keys: {out}"
        );
    }
    Ok(())
}

#[test]
fn a_site_may_gzip_its_compressible_files_and_proxied_responses_on_the_fly() -> Result<()> {
    let lab = WebLab::start("gzip")?;
    let css: String = (0..200)
        .map(|i| format!(".rule{i} {{ color: black; margin: 0 }}\n"))
        .collect();
    std::fs::write(lab.root().join("assets/long.css"), &css)?;
    std::fs::write(lab.root().join("assets/noise.bin"), vec![7u8; 4096])?;
    let fetch = |path: &str, extra: &[&str]| -> Result<(String, String)> {
        let mut args = vec!["--http1.1", "-D", "-"];
        args.extend_from_slice(extra);
        let url = format!("{URL}{path}");
        args.push(&url);
        let out = lab.curl(&args)?;
        let (head, body) = out.split_once("\r\n\r\n").context("no head")?;
        Ok((head.to_ascii_lowercase(), body.to_owned()))
    };
    // The probe: by default a client that accepts gzip gets the file, and the app's answer, as
    // they are.
    let (head, body) = fetch("/assets/long.css", &["--compressed"])?;
    ensure!(!head.contains("content-encoding") && body == css, "{head}");
    let echo = format!("/api/echo?pad={}", "x".repeat(400));
    let (head, plain_echo) = fetch(&echo, &["--compressed"])?;
    ensure!(
        !head.contains("content-encoding") && plain_echo.starts_with("GET /api/echo?pad="),
        "{head}"
    );
    // With compress = true (a reload): gzip for those that accept it, the same bytes decoded.
    let config = std::fs::read_to_string(lab.config())?;
    std::fs::write(
        lab.config(),
        config.replacen(
            "hsts_max_age_s = 31536000",
            "hsts_max_age_s = 31536000\ncompress = true",
            1,
        ),
    )?;
    let (code, said) = lab.reload()?;
    ensure!(code == 0, "reload: {said}");
    let (head, body) = fetch("/assets/long.css", &["--compressed"])?;
    ensure!(
        head.contains("content-encoding: gzip") && head.contains("vary: accept-encoding"),
        "{head}"
    );
    ensure!(body == css, "the gzipped file decodes to something else");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .context("no content-length")?;
    ensure!(
        length * 4 < css.len(),
        "{length} bytes of gzip for {} of CSS",
        css.len()
    );
    // Without Accept-Encoding: the file itself; a type that does not compress: as it is.
    let (head, body) = fetch("/assets/long.css", &[])?;
    ensure!(!head.contains("content-encoding") && body == css, "{head}");
    let (head, _) = fetch("/assets/noise.bin", &["--compressed"])?;
    ensure!(!head.contains("content-encoding"), "a binary was compressed: {head}");
    // A proxied answer of a compressible type streams gzipped and decodes to the same text.
    let (head, body) = fetch(&echo, &["--compressed"])?;
    ensure!(
        head.contains("content-encoding: gzip") && !head.contains("content-length"),
        "{head}"
    );
    ensure!(body.starts_with("GET /api/echo?pad=xxxx"), "{body}");
    // A precompressed twin still wins over compressing on the fly.
    let (head, _) = fetch("/assets/app.js", &["-H", "Accept-Encoding: gzip"])?;
    ensure!(head.contains("content-encoding: gzip"), "{head}");
    let (_, twin) = fetch("/assets/app.js", &["-H", "Accept-Encoding: gzip"])?;
    ensure!(twin == "GZIP-BYTES", "the .gz twin was not served: {twin:?}");
    Ok(())
}
