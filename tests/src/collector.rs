//! A stand-in for a Sumo Logic HTTP source: records every request it receives (headers and the
//! gunzipped body) and answers with the statuses it is told to, 200 otherwise.

use crate::{app::HttpServer, Netns};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use std::{
    collections::VecDeque,
    io::Read,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// One request as the collector saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// Lower-case header names with their values.
    pub headers: Vec<(String, String)>,
    /// Size of the body as sent.
    pub wire_bytes: usize,
    /// The body, gunzipped when it was gzip-encoded.
    pub body: String,
    /// The status the collector answered.
    pub status: u16,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Statuses for the next requests, in order.
    script: VecDeque<u16>,
    /// Answer this to everything once the script is used up (200 when None).
    otherwise: Option<u16>,
}

/// A running collector.
pub struct Collector {
    state: Arc<Mutex<State>>,
    _server: HttpServer,
}

impl Collector {
    /// Listens on `addr` inside `ns`; the first requests get `script`'s statuses. With `log`,
    /// each request also appends a line there: time, status, category, records, bytes.
    pub fn start(ns: &Netns, addr: SocketAddr, script: &[u16], log: Option<&std::path::Path>) -> Result<Self> {
        let log = log.map(std::path::Path::to_path_buf);
        let state = Arc::new(Mutex::new(State {
            script: script.iter().copied().collect(),
            ..State::default()
        }));
        let shared = state.clone();
        let server = HttpServer::start(
            ns,
            addr,
            Arc::new(move |req| {
                let state = shared.clone();
                let log = log.clone();
                Box::pin(async move {
                    let path = req.uri().to_string();
                    let headers: Vec<(String, String)> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let gzip = headers.iter().any(|(k, v)| k == "content-encoding" && v == "gzip");
                    let raw = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let body = if gzip {
                        let mut text = String::new();
                        let _ = flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text);
                        text
                    } else {
                        String::from_utf8_lossy(&raw).into_owned()
                    };
                    let status = match state.lock() {
                        Ok(mut s) => {
                            let status = s.script.pop_front().or(s.otherwise).unwrap_or(200);
                            if let Some(log) = &log {
                                let category = headers
                                    .iter()
                                    .find(|(k, _)| k == "x-sumo-category")
                                    .map_or("-", |(_, v)| v.as_str());
                                let line = format!(
                                    "{} {status} {category} {} records {} bytes\n",
                                    std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .map_or(0, |d| d.as_secs()),
                                    body.lines().count(),
                                    raw.len()
                                );
                                let _ = std::fs::OpenOptions::new()
                                    .create(true)
                                    .append(true)
                                    .open(log)
                                    .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
                            }
                            s.received.push(Received {
                                path,
                                headers,
                                wire_bytes: raw.len(),
                                body,
                                status,
                            });
                            status
                        }
                        Err(_) => 500,
                    };
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    r
                })
            }),
        )?;
        Ok(Self { state, _server: server })
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().map(|s| s.received.clone()).unwrap_or_default()
    }

    /// Answers `status` to every request from now on (None: 200 again).
    pub fn answer_always(&self, status: Option<u16>) {
        if let Ok(mut s) = self.state.lock() {
            s.otherwise = status;
        }
    }
}
