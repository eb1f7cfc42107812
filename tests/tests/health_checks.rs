//! Health probes against real servers: a TCP listener, an HTTP responder, and `openssl s_server`
//! for HTTPS.

use anyhow::{Context, Result};
use foobar::{
    config::{CheckKind, HealthCheck},
    health::{probe, ProbeError},
};
use foobar_tests::{ChildGuard, Scratch};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

fn check(kind: CheckKind, expect_status: u16) -> HealthCheck {
    HealthCheck {
        kind,
        expect_status,
        ..HealthCheck::default()
    }
}

/// Answers every connection with `status` once.
fn http_server(status: u16) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = write!(stream, "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
        }
    });
    Ok(addr)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

#[test]
fn tcp_and_http_checks_tell_up_from_down() -> Result<()> {
    let rt = runtime()?;
    let ok = http_server(200)?;
    let failing = http_server(503)?;
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?; // dropped: nothing listens
    rt.block_on(async {
        assert_eq!(probe(ok, &check(CheckKind::Tcp, 200), None).await, Ok(()));
        assert_eq!(probe(ok, &check(CheckKind::Http, 200), None).await, Ok(()));
        let err = probe(failing, &check(CheckKind::Http, 200), None)
            .await
            .expect_err("503 is down");
        assert_eq!(
            err,
            ProbeError::Status {
                got: 503,
                expected: 200
            }
        );
        let err = probe(closed, &check(CheckKind::Tcp, 200), None)
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ProbeError::Connect(_)), "{err}");
        // "Up" means whatever status the check expects.
        assert_eq!(probe(failing, &check(CheckKind::Http, 503), None).await, Ok(()));
    });
    Ok(())
}

#[test]
fn https_check_talks_tls_to_a_real_server() -> Result<()> {
    let scratch = Scratch::new("https-check")?;
    let (cert, key) = (scratch.file("cert.pem"), scratch.file("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=backend.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("openssl req")?;
    assert!(status.success());
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = scratch.file("s_server.log");
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::null())
        .spawn()
        .context("openssl s_server")?;
    let _server = ChildGuard::adopt(child, &log);
    let target: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut last = Err(ProbeError::NoStatusLine);
        for _ in 0..50 {
            last = probe(target, &check(CheckKind::Https, 200), None).await;
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last, Ok(()), "HTTPS check against s_server");
        let err = probe(target, &check(CheckKind::Https, 204), None)
            .await
            .expect_err("200 is not 204");
        assert_eq!(
            err,
            ProbeError::Status {
                got: 200,
                expected: 204
            }
        );
        // Plain HTTP against a TLS port is not a pass.
        assert!(probe(target, &check(CheckKind::Http, 200), None).await.is_err());
    });
    Ok(())
}
