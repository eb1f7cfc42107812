//! A small application server (hyper, HTTP/1.1 keep-alive) standing in for the app tier behind
//! the web tier's reverse proxy, inside a namespace:
//!
//! - `/api/echo`: `METHOD PATH?QUERY`, then every request header as `name: value` (sorted),
//!   a blank line, and the request body.
//! - `/api/name`: the server's name.
//! - `/api/slow?ms=N`: answers after N ms.
//! - `/api/ws`: a WebSocket echo.
//!
//! Every response names the server in `X-Served-By`.

use crate::Netns;
use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};

/// A request handler of an [`HttpServer`].
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A small HTTP/1.1 server (keep-alive, upgrades) on its own thread inside a namespace;
/// stopping it (or dropping it) closes every connection at once.
pub struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<Result<()>>>>,
    /// Connections that carried a proxied request (one with `X-Forwarded-For`): the web
    /// tier's pooled connections, not its health checks.
    pub proxied_connections: Arc<AtomicUsize>,
    /// Every request received, as `METHOD PATH`, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Listens on `addr` inside `ns`, answering every request with `handler`.
    pub fn start(ns: &Netns, addr: SocketAddr, handler: Handler) -> Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let proxied_connections = Arc::new(AtomicUsize::new(0));
        let counter = proxied_connections.clone();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requests.clone();
        let thread = ns.thread(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let _ = ready_tx.send(());
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (handler, counter, log) = (handler.clone(), counter.clone(), log.clone());
                        let counted = AtomicBool::new(false);
                        tokio::spawn(async move {
                            let service = service_fn(move |req: Request<Incoming>| {
                                if req.headers().contains_key("x-forwarded-for")
                                    && !counted.swap(true, Ordering::Relaxed)
                                {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                if let Ok(mut log) = log.lock() {
                                    log.push(format!("{} {}", req.method(), req.uri().path()));
                                }
                                let answer = handler(req);
                                async move { Ok::<_, Infallible>(answer.await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
                Ok(())
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the HTTP server did not start")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            proxied_connections,
            requests,
        })
    }

    /// The requests received so far (`METHOD PATH`).
    pub fn received(&self) -> Vec<String> {
        self.requests.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops the server: its runtime goes, and every connection with it.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl HttpServer {
    /// The application server on `addr` inside `ns`, answering as `name`.
    pub fn app(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Self> {
        let name: Arc<str> = name.into();
        Self::start(
            ns,
            addr,
            Arc::new(move |req| {
                let name = name.clone();
                Box::pin(async move {
                    let mut response = match respond(req, name.clone()).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    if let Ok(v) = header::HeaderValue::from_str(&name) {
                        response.headers_mut().insert("x-served-by", v);
                    }
                    response
                })
            }),
        )
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn respond(mut req: Request<Incoming>, name: Arc<str>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    Ok(match path.as_str() {
        "/api/name" => text(StatusCode::OK, format!("{name}\n")),
        "/api/slow" => {
            let ms: u64 = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow done\n")
        }
        "/api/ws" => {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
                return Ok(text(StatusCode::BAD_REQUEST, "not a websocket request\n"));
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() || ws.send(message).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
            let h = r.headers_mut();
            h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
            if let Ok(accept) = header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
            r
        }
        _ => {
            let mut head = format!("{} {}", req.method(), path);
            if !query.is_empty() {
                head += &format!("?{query}");
            }
            let mut headers: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("?")))
                .collect();
            headers.sort();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut out = format!("{head}\n{}\n\n", headers.join("\n")).into_bytes();
            out.extend_from_slice(&body);
            text(StatusCode::OK, out)
        }
    })
}
