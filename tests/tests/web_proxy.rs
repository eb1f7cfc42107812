//! The web tier's reverse proxy and protections against real clients: curl (HTTP/1.1 and
//! HTTP/2) through to two application servers, a WebSocket echo, upstream failures, raw
//! smuggling shapes, slow headers and connection limits.

use anyhow::{bail, ensure, Context, Result};
use foobar_tests::{
    wait_until,
    weblab::{WebLab, ADDR, APP1, APP2, HOST},
};
use futures_util::{SinkExt, StreamExt};
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

const URL: &str = "https://www.foobar.com";

#[test]
fn requests_reach_the_app_with_forwarding_headers_and_pooled_connections() -> Result<()> {
    let lab = WebLab::start("proxy")?;
    for flag in ["--http1.1", "--http2"] {
        // Connection-specific headers exist only in HTTP/1.1.
        let hop: &[&str] = if flag == "--http1.1" {
            &[
                "-H",
                "Connection: keep-alive, X-Secret",
                "-H",
                "X-Secret: hop",
                "-H",
                "TE: trailers",
            ]
        } else {
            &[]
        };
        let url = format!("{URL}/api/echo?q=1");
        let mut args = vec![flag, "-H", "X-App: kept", "--data-binary", "hello body"];
        args.extend_from_slice(hop);
        args.push(&url);
        let out = lab.curl(&args)?;
        for expected in [
            "POST /api/echo?q=1\n",
            "x-forwarded-for: 10.99.0.1\n",
            "x-forwarded-proto: https\n",
            "x-forwarded-host: www.foobar.com\n",
            "forwarded: for=10.99.0.1;proto=https;host=\"www.foobar.com\"\n",
            "host: www.foobar.com\n",
            "x-app: kept\n",
            "\n\nhello body",
        ] {
            ensure!(out.contains(expected), "{flag}: no {expected:?} in\n{out}");
        }
        ensure!(
            !out.contains("x-secret") && !out.contains("\nte:"),
            "{flag}: hop-by-hop forwarded:\n{out}"
        );
    }
    // Round-robin over both servers; keep-alive connections to them are reused (the servers
    // count only connections that carried a proxied request, not the other upstream's
    // health checks, which open one every 200 ms whatever the pool does).
    let urls: Vec<String> = (0..20).map(|_| format!("{URL}/api/name")).collect();
    let mut args: Vec<&str> = vec!["--http1.1"];
    args.extend(urls.iter().map(String::as_str));
    let names = lab.curl(&args)?;
    ensure!(
        names.matches("app1").count() == 10 && names.matches("app2").count() == 10,
        "{names}"
    );
    // The edge is the first proxy: a client's own forwarding headers are replaced by what the
    // connection says...
    let spoofed = [
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Real-IP: 6.6.6.6",
        "-H",
        "Forwarded: for=6.6.6.6",
        "-H",
        "X-Forwarded-Host: evil.example",
    ];
    let echo = format!("{URL}/api/echo");
    let mut args = spoofed.to_vec();
    args.push(&echo);
    let out = lab.curl(&args)?;
    ensure!(
        out.contains("x-forwarded-for: 10.99.0.1\n")
            && out.contains("x-real-ip: 10.99.0.1\n")
            && out.contains("forwarded: for=10.99.0.1;")
            && out.contains("x-forwarded-host: www.foobar.com\n")
            && !out.contains("6.6.6.6")
            && !out.contains("evil.example"),
        "spoofed forwarding headers reached the app:\n{out}"
    );
    // ...unless the client is a trusted proxy: then they reach the app, appended to (the
    // control: the same headers do get through where they should).
    let config = std::fs::read_to_string(lab.config())?;
    std::fs::write(lab.config(), config + "\n[web]\ntrusted_proxies = [\"10.99.0.0/24\"]\n")?;
    let (status, out) = lab.reload()?;
    ensure!(status == 0, "{out}");
    let out = lab.curl(&args)?;
    ensure!(
        out.contains("x-forwarded-for: 6.6.6.6, 10.99.0.1\n")
            && out.contains("x-real-ip: 6.6.6.6\n")
            && out.contains("forwarded: for=6.6.6.6, for=10.99.0.1;"),
        "a trusted proxy's forwarding headers were not kept:\n{out}"
    );
    for _ in 0..10 {
        lab.curl(&[&format!("{URL}/api/name")])?;
    }
    let upstream_connections: usize = lab
        .apps
        .iter()
        .flatten()
        .map(|a| a.proxied_connections.load(Ordering::Relaxed))
        .sum();
    // Each worker thread (one per CPU here) keeps its own idle connections: at least one
    // connection per server, at most one per server and worker.
    let workers = std::thread::available_parallelism()?.get();
    ensure!(
        (2..=2 * workers).contains(&upstream_connections),
        "{upstream_connections} upstream connections for 32 requests: the pool is not reused"
    );
    Ok(())
}

#[test]
fn websocket_upgrades_pass_through() -> Result<()> {
    let lab = WebLab::start("ws")?;
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    let echoed = lab.ns.run(move || -> Result<Vec<String>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca) {
                roots.add(cert?)?;
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect((ADDR, 443)).await?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from(HOST)?, tcp)
                .await?;
            let (mut ws, response) = tokio_tungstenite::client_async(format!("wss://{HOST}/api/ws"), tls).await?;
            ensure!(response.status() == 101, "{response:?}");
            let mut out = Vec::new();
            // Exchanges 600 ms apart outlast upgrade_idle_timeout_ms (1 s) in all: the
            // timeout counts idleness, not age.
            for text in ["first", "second frame", "third"] {
                ws.send(text.into()).await?;
                let back = ws.next().await.context("the socket closed")??;
                out.push(back.into_text()?.to_string());
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            // Then nothing for longer than the timeout: the edge closes the upgraded
            // connection (both sides of it).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let after = tokio::time::timeout(Duration::from_secs(3), async {
                let _ = ws.send("late".into()).await;
                ws.next().await
            })
            .await;
            ensure!(
                matches!(
                    after,
                    Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))))
                ),
                "an idle upgraded connection was kept open: {after:?}"
            );
            Ok(out)
        })
    })??;
    ensure!(echoed == ["first", "second frame", "third"], "{echoed:?}");
    Ok(())
}

#[test]
fn upstream_trouble_gives_502_503_504_and_413_never_a_hang() -> Result<()> {
    let mut lab = WebLab::start("upfail")?;
    let status = |lab: &WebLab, args: &[&str]| -> Result<String> {
        let mut full = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        full.extend_from_slice(args);
        lab.curl(&full)
    };
    // A response slower than read_timeout_ms (1 s): 504 after about a second.
    let began = Instant::now();
    ensure!(status(&lab, &[&format!("{URL}/api/slow?ms=3000")])? == "504");
    ensure!(
        began.elapsed() < Duration::from_secs(3),
        "the 504 took {:?}",
        began.elapsed()
    );
    // A request body over the limit (1 MiB): 413.
    let big = lab.scratch.file("big-body");
    std::fs::write(&big, vec![b'x'; 2 * 1024 * 1024])?;
    let body = format!("@{}", big.display());
    ensure!(status(&lab, &["--http1.1", "--data-binary", &body, &format!("{URL}/api/echo")])? == "413");

    // The server holding a request dies mid-request: 502; the next request goes to the other.
    // (Round-robin of a fresh pool: the 504 above went to app1, so this one goes to app2.)
    let slow = lab.curl_in_background(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{URL}/api/slow?ms=800"),
    ]);
    wait_until(Duration::from_secs(3), "the slow request to reach app2", || {
        lab.apps[1]
            .as_ref()
            .is_some_and(|a| a.received().contains(&"GET /api/slow".to_string()))
    })?;
    let Some(mut app2) = lab.apps[1].take() else {
        bail!("app2 already stopped");
    };
    app2.stop();
    let code = slow.join().map_err(|_| anyhow::anyhow!("curl thread panicked"))???;
    ensure!(code == "502", "the request cut mid-way gave {code}");
    for _ in 0..4 {
        let out = lab.curl(&[&format!("{URL}/api/name")])?;
        ensure!(out == "app1\n", "with app2 gone: {out:?}");
    }
    // Both gone: 502 on the request that finds them failing, then 503 while both sit out.
    if let Some(mut app1) = lab.apps[0].take() {
        app1.stop();
    }
    let first = status(&lab, &[&format!("{URL}/api/name")])?;
    let next = status(&lab, &[&format!("{URL}/api/name")])?;
    ensure!(first == "502" && next == "503", "with both gone: {first}, then {next}");
    let web = foobar::ctl::query(&lab.scratch.file("control.sock"))?
        .web
        .context("no web summary")?;
    let errors = |kind: &str| {
        web.upstream_errors
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n)
    };
    ensure!(
        errors("timeout") == 1 && errors("failed") == 2 && errors("no_server") == 1,
        "upstream errors counted: {web:?}"
    );
    Ok(())
}

/// Sends raw bytes to the plain listener and returns what came back before the server closed
/// (or 5 s passed).
fn raw(lab: &WebLab, request: impl Into<Vec<u8>>) -> Result<String> {
    let request = request.into();
    lab.ns.run(move || -> Result<String> {
        let mut stream = TcpStream::connect((ADDR, 80))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&request)?;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    })?
}

/// Request shapes that let a front end and a back end disagree on where a request ends
/// (RFC 9112 §6.3, §5.2): each carries a second request for `SMUGGLED` in its body.
const SMUGGLING: [(&str, &str); 6] = [
    (
        "CL+TE",
        "POST {path} HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n",
    ),
    (
        "duplicate CL",
        "POST {path} HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 4\r\nContent-Length: 48\r\n\r\nabcdGET {smuggled} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "TE not chunked",
        "POST {path} HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "TE list",
        "POST {path} HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "space before colon",
        "POST {path} HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    (
        "obs-fold",
        "GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\nX-Folded: a\r\n b\r\n\r\nGET {smuggled} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
];

/// The path the smuggled requests ask for.
const SMUGGLED: &str = "/api/smuggled";

/// Every request the application servers received so far, by server.
fn received(lab: &WebLab) -> Vec<Vec<String>> {
    lab.apps.iter().flatten().map(|a| a.received()).collect()
}

/// The requests the application servers received since `before` (an earlier [`received`]).
fn received_since(lab: &WebLab, before: &[Vec<String>]) -> Vec<String> {
    received(lab)
        .into_iter()
        .zip(before)
        .flat_map(|(now, was)| now.into_iter().skip(was.len()))
        .collect()
}

#[test]
fn smuggling_shapes_are_refused_at_the_redirect_listener_and_the_proxy() -> Result<()> {
    let lab = WebLab::start("smuggle")?;
    // The probe reaches the application: a well-formed request with a second one pipelined
    // behind it in the same write is proxied, and so is the second request.
    let pipelined = format!(
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\n\r\nGET {SMUGGLED} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n"
    );
    let out = lab.raw_tls(pipelined.as_bytes())?;
    ensure!(out.matches("HTTP/1.1 200").count() == 2, "{out}");
    ensure!(
        received(&lab).concat().contains(&format!("GET {SMUGGLED}")),
        "the pipelined control request never reached the app: {:?}",
        received(&lab)
    );
    for (name, shape) in SMUGGLING {
        // At the plain listener, which only redirects to HTTPS.
        let request = shape.replace("{path}", "/").replace("{smuggled}", "/x");
        let out = raw(&lab, request)?;
        let first = out.lines().next().unwrap_or_default();
        // Both lengths: hyper frames the message by Transfer-Encoding, drops the
        // Content-Length and closes after the response (RFC 9112 §6.3); anything else is a 400.
        let refused = first.starts_with("HTTP/1.1 400") || (name == "CL+TE" && first.starts_with("HTTP/1.1 301"));
        ensure!(refused, "{name} at :80: answered {first:?}");
        ensure!(
            out.matches("HTTP/1.1").count() == 1,
            "{name} at :80: a second request was read:\n{out}"
        );
        // Through TLS to the proxy, where a desync would reach the application.
        let request = shape.replace("{path}", "/api/echo").replace("{smuggled}", SMUGGLED);
        let before = received(&lab);
        let out = lab.raw_tls(request.as_bytes())?;
        let first = out.lines().next().unwrap_or_default();
        let refused = first.starts_with("HTTP/1.1 400") || (name == "CL+TE" && first.starts_with("HTTP/1.1 200"));
        ensure!(refused, "{name} at the proxy: answered {first:?}");
        ensure!(
            out.matches("HTTP/1.1").count() == 1,
            "{name} at the proxy: a second request was read:\n{out}"
        );
        let reached = received_since(&lab, &before);
        ensure!(
            !reached.iter().any(|r| r.ends_with(SMUGGLED)),
            "{name}: the smuggled request reached the app: {reached:?}"
        );
        // Only CL+TE (framed by its Transfer-Encoding, body empty) is passed on at all.
        let expected: &[&str] = if name == "CL+TE" { &["POST /api/echo"] } else { &[] };
        ensure!(reached == expected, "{name}: the app received {reached:?}");
    }
    Ok(())
}

#[test]
fn requests_without_exactly_one_valid_host_are_refused() -> Result<()> {
    let lab = WebLab::start("host")?;
    // The probe: with a Host the request reaches the application, and so does an HTTP/1.0
    // request without one (1.0 has no Host requirement).
    for ok in [
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n",
        "GET /api/echo HTTP/1.0\r\n\r\n",
    ] {
        let before = received(&lab);
        let out = lab.raw_tls(ok.as_bytes())?;
        ensure!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
            "{ok:?}: {out}"
        );
        ensure!(received_since(&lab, &before).len() == 1, "{ok:?} did not reach the app");
    }
    // RFC 9112 §3.2: none, several, or one that is not a host and port: 400, nothing proxied.
    for bad in [
        "GET /api/echo HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nHost: evil.example\r\n\r\n",
        "GET /api/echo HTTP/1.1\r\nHost: user@www.foobar.com\r\n\r\n",
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com/x\r\n\r\n",
    ] {
        let before = received(&lab);
        let out = lab.raw_tls(bad.as_bytes())?;
        ensure!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out}");
        let reached = received_since(&lab, &before);
        ensure!(reached.is_empty(), "{bad:?} reached the app: {reached:?}");
    }
    Ok(())
}

/// Requests RFC 9110 / 9112 say a server or gateway must refuse or answer itself, each with
/// the status it gets; none may reach the application.
const REFUSED_BY_THE_RFCS: [(&str, &str, &str); 11] = [
    (
        "a whitespace-preceded line before the first field (9112 §2.2)",
        "GET /api/echo HTTP/1.1\r\n X-Lead: a\r\nHost: www.foobar.com\r\n\r\n",
        "400",
    ),
    (
        "a bare CR in a field value (9112 §2.2)",
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nX-A: a\rb\r\n\r\n",
        "400",
    ),
    (
        "a NUL in a field value (9110 §5.5)",
        "GET /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nX-A: a\0b\r\n\r\n",
        "400",
    ),
    (
        "a Content-Length that is no number (9112 §6.3)",
        "POST /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 1x\r\n\r\nab",
        "400",
    ),
    (
        "a Content-Length list of different values (9112 §6.3)",
        "POST /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Length: 1, 2\r\n\r\nab",
        "400",
    ),
    (
        "Transfer-Encoding in HTTP/1.0 (9112 §6.1)",
        "POST /api/echo HTTP/1.0\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "400",
    ),
    (
        "a space in the request target (9112 §3)",
        "GET /api/echo x HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n",
        "400",
    ),
    (
        "TRACE (9110 §9.3.8: echoes credentials; never forwarded)",
        "TRACE /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n",
        "405",
    ),
    (
        "CONNECT (a reverse proxy opens no tunnels)",
        "CONNECT www.foobar.com:443 HTTP/1.1\r\nHost: www.foobar.com:443\r\nConnection: close\r\n\r\n",
        "405",
    ),
    (
        "OPTIONS with Max-Forwards 0: the edge is the final recipient (9110 §7.6.2)",
        "OPTIONS /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
        "200",
    ),
    (
        "OPTIONS with an invalid Max-Forwards (9110 §7.6.2)",
        "OPTIONS /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nMax-Forwards: -1\r\n\r\n",
        "400",
    ),
];

#[test]
fn requests_the_rfcs_say_to_refuse_never_reach_the_app() -> Result<()> {
    let lab = WebLab::start("rfc")?;
    // The probe: a well-formed OPTIONS with hops left reaches the application, one hop fewer.
    let before = received(&lab);
    let out = lab.raw_tls(
        b"OPTIONS /api/echo HTTP/1.1\r\nHost: www.foobar.com\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
    )?;
    ensure!(
        out.starts_with("HTTP/1.1 200") && out.contains("max-forwards: 2"),
        "{out}"
    );
    ensure!(
        received_since(&lab, &before).contains(&"OPTIONS /api/echo".to_string()),
        "{:?}",
        received(&lab)
    );
    for (what, request, status) in REFUSED_BY_THE_RFCS {
        let before = received(&lab);
        let out = lab.raw_tls(request.as_bytes())?;
        ensure!(out.starts_with(&format!("HTTP/1.1 {status}")), "{what}: {out}");
        if status != "400" {
            ensure!(
                out.to_ascii_lowercase()
                    .contains("allow: get, head, post, put, delete, options, patch"),
                "{what}: no Allow: {out}"
            );
        }
        // The upstream's active checks (GET /api/name) go on meanwhile.
        let reached: Vec<String> = received_since(&lab, &before)
            .into_iter()
            .filter(|r| r != "GET /api/name")
            .collect();
        ensure!(reached.is_empty(), "{what}: reached the app: {reached:?}");
    }
    // HTTP/2: a Host naming another site than :authority (RFC 9113 §8.3.1) is refused.
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    let statuses = lab.ns.run(move || -> Result<Vec<u16>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let client = foobar_tests::weblab::h2_client(&ca).await?;
            let mut statuses = Vec::new();
            for host in ["www.foobar.com", "evil.example"] {
                let mut client = client.clone().ready().await?;
                let request = hyper::Request::get(format!("https://{HOST}/api/echo"))
                    .header("host", host)
                    .body(())?;
                let (response, _) = client.send_request(request, true)?;
                statuses.push(response.await?.status().as_u16());
            }
            Ok(statuses)
        })
    })??;
    ensure!(
        statuses == [200, 400],
        "HTTP/2 with a matching and a foreign Host: {statuses:?}"
    );
    Ok(())
}

#[test]
fn slow_and_oversized_heads_are_refused() -> Result<()> {
    let lab = WebLab::start("heads")?;
    // The same request with a small head is served.
    let out = raw(
        &lab,
        "GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n",
    )?;
    ensure!(out.starts_with("HTTP/1.1 301"), "{out}");
    // A head over max_header_bytes (16 KiB) is refused.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.foobar.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let out = raw(&lab, big)?;
    ensure!(
        out.starts_with("HTTP/1.1 431"),
        "an oversized head got {:?}",
        out.lines().next()
    );
    // Headers that never finish: closed at header_read_timeout_ms (2 s), not before and not
    // much later (`raw` itself waits 5 s).
    let began = Instant::now();
    let out = raw(&lab, b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nX-Slow: ")?;
    let took = began.elapsed();
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(4500),
        "slow headers closed after {took:?}: {out:?}"
    );
    Ok(())
}

/// A connection to the plain listener from `source` (an address of the lab's namespace).
fn connect_from(source: &str) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::new(source.parse()?, 0).into())?;
    socket.connect(&std::net::SocketAddr::new(ADDR.parse()?, 80).into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// Sends a keep-alive request and returns the first bytes of the answer.
fn ask(stream: &mut TcpStream) -> Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// [`ask`] on a connection kept for more: reads the whole response (head and its
/// Content-Length of body), so the next answer starts where it should.
fn ask_whole(stream: &mut TcpStream) -> Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Ok(text);
            }
        }
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "the connection closed mid-response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_client_over_its_connection_cap_is_closed_and_others_are_served() -> Result<()> {
    let lab = WebLab::start("cap")?;
    lab.ns.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", "w0"])?;
    let outcome = lab.ns.run(|| -> Result<(Vec<TcpStream>, String, Duration, String)> {
        // max_connections_per_client = 64: each of 64 connections is answered, so foobar holds
        // them (the kernel completing a handshake proves nothing).
        let mut held = Vec::new();
        for i in 0..64 {
            let mut c = connect_from(ADDR)?;
            let answer = ask(&mut c)?;
            ensure!(answer.starts_with("HTTP/1.1 301"), "connection {i}: {answer:?}");
            held.push(c);
        }
        // The 65th from the same address is closed at once: end of stream or a reset, well
        // before the 2 s read timeout.
        let mut extra = connect_from(ADDR)?;
        let began = Instant::now();
        let over = match ask(&mut extra) {
            Ok(answer) => answer,
            Err(e) => format!("error: {e}"),
        };
        let took = began.elapsed();
        // Another client is not held to the first one's cap.
        let other = ask(&mut connect_from("10.99.0.2")?)?;
        Ok((held, over, took, other))
    })??;
    let (held, over, took, other) = outcome;
    ensure!(
        (over.is_empty() || over.contains("reset")) && took < Duration::from_secs(1),
        "the connection over the cap got {over:?} after {took:?}"
    );
    ensure!(
        other.starts_with("HTTP/1.1 301"),
        "another client was refused: {other:?}"
    );
    // A slot freed is a slot taken.
    drop(held);
    wait_until(Duration::from_secs(3), "a slot to free up", || {
        raw(
            &lab,
            b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|o| o.starts_with("HTTP/1.1 301"))
    })?;
    Ok(())
}

#[test]
fn a_client_over_its_request_rate_gets_429_and_others_are_served() -> Result<()> {
    // One request a second and 3 more at once: 4 in a row pass, the 5th waits a second.
    let lab = WebLab::start_with("rate", "client_request_rate = 1\nclient_request_burst = 3\n")?;
    lab.ns.exec(&["ip", "addr", "add", "10.99.0.2/24", "dev", "w0"])?;
    let (answers, other, after) = lab.ns.run(|| -> Result<(Vec<String>, String, String)> {
        let mut client = connect_from(ADDR)?;
        let answers = (0..6).map(|_| ask_whole(&mut client)).collect::<Result<Vec<_>>>()?;
        // Another client has an allowance of its own.
        let other = ask(&mut connect_from("10.99.0.2")?)?;
        std::thread::sleep(Duration::from_millis(1100));
        let after = ask_whole(&mut client)?;
        Ok((answers, other, after))
    })??;
    // The probe: within the burst every request is answered as usual.
    for (i, answer) in answers.iter().take(4).enumerate() {
        ensure!(
            answer.starts_with("HTTP/1.1 301"),
            "request {i} within the burst: {answer:?}"
        );
    }
    // Past it (a slow run may have earned one more), 429 saying when to come back.
    let limited: Vec<&String> = answers[4..].iter().filter(|a| a.starts_with("HTTP/1.1 429")).collect();
    ensure!(!limited.is_empty(), "no 429 past the burst: {answers:?}");
    ensure!(
        limited
            .iter()
            .all(|a| a.to_ascii_lowercase().contains("retry-after: 1\r\n")),
        "{limited:?}"
    );
    ensure!(
        other.starts_with("HTTP/1.1 301"),
        "another client was limited: {other:?}"
    );
    ensure!(
        after.starts_with("HTTP/1.1 301"),
        "still limited after a second: {after:?}"
    );
    Ok(())
}

/// Which app server answered `/api/name` for a request with these headers, and the cookie
/// the response set (if any).
fn served_by(lab: &WebLab, headers: &[String]) -> Result<(String, Option<String>)> {
    let mut args = vec!["--http1.1".to_string(), "-i".to_string()];
    for h in headers {
        args.extend(["-H".to_string(), h.clone()]);
    }
    args.push(format!("{URL}/api/name"));
    let out = lab.curl(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (head, body) = out.split_once("\r\n\r\n").context("no response head")?;
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .map(|c| c.split(';').next().unwrap_or_default().to_owned());
    Ok((body.trim().to_owned(), cookie))
}

#[test]
fn affinity_by_hash_and_by_cookie_keeps_a_client_on_its_server() -> Result<()> {
    let extra = format!(
        "\n[[web.site.proxy]]\nprefix = \"/api/name\"\nupstream = \"hashed\"\n\n[[web.upstream]]\nname = \"hashed\"\nservers = [\"{ADDR}:{APP1}\", \"{ADDR}:{APP2}\"]\nbalance = \"hash\"\nhash_key = \"header:X-User\"\nsticky_cookie = \"fbsrv\"\n"
    );
    let mut lab = WebLab::start_with("affinity", &extra)?;
    let user = |i: usize| vec![format!("X-User: user{i}")];
    // Different keys spread over both servers (the probe that the key decides)...
    let mut first = Vec::new();
    for i in 0..16 {
        first.push(served_by(&lab, &user(i))?.0);
    }
    ensure!(
        first.iter().any(|s| s == "app1") && first.iter().any(|s| s == "app2"),
        "16 keys all went to one server: {first:?}"
    );
    // ...and each key keeps its server.
    for (i, was) in first.iter().enumerate().take(8) {
        for _ in 0..3 {
            let now = served_by(&lab, &user(i))?.0;
            ensure!(now == *was, "user{i} moved from {was} to {now}");
        }
    }
    // The sticky cookie beats the hash: a key another server owns follows the cookie.
    let (server, cookie) = served_by(&lab, &user(0))?;
    let cookie = cookie.context("no sticky cookie set")?;
    let elsewhere = first
        .iter()
        .position(|s| *s != server)
        .context("a key on the other server")?;
    for _ in 0..3 {
        let mut headers = user(elsewhere);
        headers.push(format!("Cookie: {cookie}"));
        let (now, again) = served_by(&lab, &headers)?;
        ensure!(now == server, "the cookie for {server} led to {now}");
        ensure!(again.is_none(), "a carried cookie was set again: {again:?}");
    }
    // Its server gone, the cookie's client is served by the other one and gets its cookie.
    let gone = if server == "app1" { 0 } else { 1 };
    lab.apps[gone].take().context("app running")?.stop();
    let (now, moved) = served_by(&lab, &[format!("Cookie: {cookie}")])?;
    ensure!(
        now != server && moved.is_some_and(|c| c != cookie),
        "after {server} stopped: {now}"
    );
    Ok(())
}

#[test]
fn a_header_routes_requests_to_another_upstream() -> Result<()> {
    // /api/name goes to app1, and to app2 for requests saying X-Canary: 1.
    let extra = format!(
        "\n[[web.site.proxy]]\nprefix = \"/api/name\"\nupstream = \"stable\"\n\n[[web.site.proxy]]\nprefix = \"/api/name\"\nupstream = \"canary\"\nheader = \"X-Canary: 1\"\n\n[[web.upstream]]\nname = \"stable\"\nservers = [\"{ADDR}:{APP1}\"]\n\n[[web.upstream]]\nname = \"canary\"\nservers = [\"{ADDR}:{APP2}\"]\n"
    );
    let lab = WebLab::start_with("header", &extra)?;
    for (headers, expected) in [
        (vec![], "app1"),
        (vec!["X-Canary: 1".to_string()], "app2"),
        (vec!["X-Canary: 0".to_string()], "app1"),
        (vec!["x-canary: 1".to_string()], "app2"),
    ] {
        for _ in 0..3 {
            let (server, _) = served_by(&lab, &headers)?;
            ensure!(server == expected, "{headers:?} went to {server}, not {expected}");
        }
    }
    Ok(())
}

#[test]
fn request_bodies_arrive_intact_and_a_clients_bad_body_benches_no_upstream() -> Result<()> {
    let lab = WebLab::start("bodies")?;
    let ca = std::fs::read(lab.pem("www-ec.crt"))?;
    // An HTTP/2 PUT whose body has no content-length (DATA frames only) reaches the app whole.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let echoed = lab.ns.run(move || -> Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let client = foobar_tests::weblab::h2_client(&ca).await?;
            let mut client = client.ready().await?;
            let request = hyper::Request::put(format!("https://{HOST}/api/echo")).body(())?;
            let (response, mut stream) = client.send_request(request, false)?;
            for chunk in sent.chunks(16_000) {
                stream.reserve_capacity(chunk.len());
                futures_util::future::poll_fn(|cx| stream.poll_capacity(cx)).await;
                stream.send_data(bytes::Bytes::copy_from_slice(chunk), false)?;
            }
            stream.send_data(bytes::Bytes::new(), true)?;
            let mut body = response.await?.into_body();
            let mut out = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        })
    })??;
    let head_end = echoed.windows(2).position(|w| w == b"\n\n").context("no echo head")? + 2;
    let head = String::from_utf8_lossy(&echoed[..head_end]);
    ensure!(head.starts_with("PUT /api/echo\n"), "{head}");
    ensure!(
        echoed[head_end..] == data[..],
        "the app received {} of {} body bytes",
        echoed.len() - head_end,
        data.len()
    );
    // A chunked body over max_request_body_bytes (1 MiB) is the client's fault: 413, and the
    // server it was streaming to stays in rotation.
    let big = lab.scratch.file("big-body");
    std::fs::write(&big, vec![b'x'; 2 * 1024 * 1024])?;
    let body = format!("@{}", big.display());
    let code = lab.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--http1.1",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &format!("{URL}/api/echo"),
    ])?;
    ensure!(code == "413", "an over-limit chunked body gave {code}");
    // The probe reached an upstream server (it was streaming the body there)...
    ensure!(
        lab.apps
            .iter()
            .flatten()
            .any(|a| a.received().contains(&"POST /api/echo".to_string())),
        "the over-limit body never reached an app"
    );
    // ...which still serves: round-robin keeps reaching both.
    let names = lab.curl(&["--http1.1", &format!("{URL}/api/name"), &format!("{URL}/api/name")])?;
    let names = names + &lab.curl(&["--http1.1", &format!("{URL}/api/name"), &format!("{URL}/api/name")])?;
    ensure!(
        names.contains("app1") && names.contains("app2"),
        "a server was taken out over a client's body: {names:?}"
    );
    ensure!(!lab.log().contains("connecting upstream failed"), "{}", lab.log());
    Ok(())
}

#[test]
fn graceful_shutdown_lets_requests_in_flight_finish() -> Result<()> {
    let mut lab = WebLab::start("drain")?;
    let slow = lab.curl_in_background(&[&format!("{URL}/api/slow?ms=700")]);
    wait_until(Duration::from_secs(3), "the slow request to reach the app", || {
        lab.apps
            .iter()
            .flatten()
            .any(|a| a.received().contains(&"GET /api/slow".to_string()))
    })?;
    let mut foobar = lab.foobar.take().context("foobar running")?;
    foobar.signal(nix::sys::signal::Signal::SIGTERM)?;
    let body = slow.join().map_err(|_| anyhow::anyhow!("curl thread panicked"))???;
    ensure!(body == "slow done\n", "the request in flight got {body:?}");
    ensure!(foobar.wait(Duration::from_secs(5))?, "foobar did not exit cleanly");
    let (ok, _) = lab
        .ns
        .exec_any(&["curl", "-sk", "--max-time", "2", &format!("https://{ADDR}/")])?;
    ensure!(!ok, "a new connection was served after shutdown");
    Ok(())
}

#[test]
fn active_checks_take_a_dead_server_out_and_bring_it_back() -> Result<()> {
    let mut lab = WebLab::start("active")?;
    let served_by = |lab: &WebLab| -> Result<String> {
        let out = lab.curl(&["-i", "--data-binary", "x", &format!("{URL}/api/checked/x")])?;
        ensure!(out.starts_with("HTTP/2 200"), "{out}");
        out.lines()
            .find_map(|l| l.strip_prefix("x-served-by: "))
            .map(|v| v.trim().to_string())
            .context("no x-served-by")
    };
    // app2 stops; the checks (every 200 ms, fall 1) take it out before any request tries it,
    // so even requests that cannot be retried (POST with a body) all succeed on app1.
    let Some(mut app2) = lab.apps[1].take() else {
        bail!("app2 already stopped");
    };
    app2.stop();
    wait_until(Duration::from_secs(3), "the checks to take app2 out", || {
        lab.log().contains("upstream server down")
    })?;
    for _ in 0..6 {
        ensure!(served_by(&lab)? == "app1");
    }
    // Status says so, for the checked pool only.
    let app2 = format!("{ADDR}:{}", foobar_tests::weblab::APP2);
    let status = foobar::ctl::query(&lab.socket())?;
    let web = status.web.context("no web summary")?;
    let standing = |pool: &str| {
        web.upstreams
            .iter()
            .find(|u| u.name == pool)
            .and_then(|u| u.servers.iter().find(|s| s.address.to_string() == app2))
            .map(|s| (s.up, s.in_rotation()))
    };
    ensure!(
        standing("checked") == Some((false, false)),
        "checked pool: {:?}",
        web.upstreams
    );
    ensure!(
        standing("app").is_some_and(|(up, _)| up),
        "the unchecked pool has no active check: {:?}",
        web.upstreams
    );
    let printed = foobar_tests::sh(&[
        &foobar_tests::foobar_bin().display().to_string(),
        "status",
        "--socket",
        &lab.socket().display().to_string(),
    ])?;
    ensure!(
        printed.contains(&format!("upstream checked: {ADDR}:{} up", foobar_tests::weblab::APP1)),
        "{printed}"
    );
    ensure!(printed.contains(&format!("{app2} DOWN (active check)")), "{printed}");
    // Back up: the checks (rise 1) return it to the rotation.
    let addr: std::net::SocketAddr = format!("{ADDR}:{}", foobar_tests::weblab::APP2).parse()?;
    lab.apps[1] = Some(foobar_tests::app::HttpServer::app(&lab.ns, addr, "app2")?);
    wait_until(Duration::from_secs(3), "app2 back in rotation", || {
        served_by(&lab).is_ok_and(|s| s == "app2")
    })?;
    ensure!(lab.log().contains("upstream server down") && lab.log().contains("upstream server up"));
    Ok(())
}

/// `foobar upstream ARGS` against the lab: success and output.
fn upstream(lab: &WebLab, args: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new(foobar_tests::foobar_bin())
        .arg("upstream")
        .args(args)
        .arg("--socket")
        .arg(lab.socket())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

#[test]
fn an_upstream_server_drained_by_an_operator_gets_no_new_requests_across_a_reload() -> Result<()> {
    let lab = WebLab::start("udrain")?;
    let app2 = format!("{ADDR}:{}", foobar_tests::weblab::APP2);
    ensure!(
        lab.proxied_names(6)?.contains("app2"),
        "app2 serves before the drain (the probe)"
    );
    let (ok, out) = upstream(&lab, &["drain", "app", &app2])?;
    ensure!(ok && out.contains("drained"), "{out}");
    ensure!(
        !lab.proxied_names(8)?.contains("app2"),
        "a request went to the drained app2"
    );
    let status = foobar::ctl::query(&lab.socket())?;
    let shown = status
        .web
        .as_ref()
        .and_then(|w| w.upstreams.iter().find(|u| u.name == "app"))
        .and_then(|u| u.servers.iter().find(|s| s.address.to_string() == app2))
        .context("app2 not in status")?;
    ensure!(shown.drained_by_operator && !shown.in_rotation(), "{shown:?}");
    // A reload that changes the pool (a new pool is built) keeps the drain.
    let text = std::fs::read_to_string(lab.config())?;
    let changed = text.replacen("read_timeout_ms = 1000", "read_timeout_ms = 1500", 1);
    ensure!(changed != text, "the pool's settings were not changed");
    std::fs::write(lab.config(), changed)?;
    let (code, out) = lab.reload()?;
    ensure!(code == 0 && out.contains("upstream app changed"), "reload: {out}");
    ensure!(!lab.proxied_names(8)?.contains("app2"), "the reload forgot the drain");
    // Unknown names are refused, naming what exists.
    let (ok, out) = upstream(&lab, &["drain", "nope", &app2])?;
    ensure!(
        !ok && out.contains("no upstream \"nope\" (upstreams: app, checked)"),
        "{out}"
    );
    let (ok, out) = upstream(&lab, &["drain", "app", "10.99.0.1:1"])?;
    ensure!(!ok && out.contains("has no server 10.99.0.1:1"), "{out}");
    // Enabled, it serves again.
    let (ok, out) = upstream(&lab, &["enable", "app", &app2])?;
    ensure!(ok && out.contains("enabled"), "{out}");
    ensure!(
        lab.proxied_names(6)?.contains("app2"),
        "app2 does not serve after enable"
    );
    Ok(())
}
