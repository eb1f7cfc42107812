//! The lab's demo application server: the app tier of www.foobar.com behind the edges' web
//! tier (`/api/`). It writes through the database's read-write endpoint and reads through the
//! read-only one, both on the VIP, so one request crosses the whole stack:
//!
//! - `/api/visit`: records a visit (INSERT through read-write), then counts the visits through
//!   read-only; answers JSON with both server ids, e.g.
//!   `{"visit":7,"written_on":1,"visits":7,"read_from":2}`.
//! - anything else under `/api/`: `{"app":"demo"}`.

use crate::{app::HttpServer, mariadb::APP_USER, Netns};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use mysql_async::{prelude::Queryable, OptsBuilder, Pool};
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

/// The database endpoints the app uses.
struct Endpoints {
    read_write: SocketAddr,
    read_only: SocketAddr,
    /// Connection pools, made on first use (inside the server's runtime).
    pools: OnceLock<(Pool, Pool)>,
}

impl Endpoints {
    fn pools(&self) -> &(Pool, Pool) {
        self.pools.get_or_init(|| {
            let pool = |addr: SocketAddr| {
                let (user, password) = APP_USER;
                Pool::new(
                    OptsBuilder::default()
                        .ip_or_hostname(addr.ip().to_string())
                        .tcp_port(addr.port())
                        .user(Some(user))
                        .pass(Some(password))
                        .db_name(Some("appdb"))
                        .prefer_socket(false),
                )
            };
            (pool(self.read_write), pool(self.read_only))
        })
    }

    async fn visit(&self) -> Result<String> {
        let (rw, ro) = self.pools();
        let mut writer = rw.get_conn().await?;
        writer.query_drop("INSERT INTO visits () VALUES ()").await?;
        let written: Option<(u64, u32)> = writer.query_first("SELECT LAST_INSERT_ID(), @@server_id").await?;
        let mut reader = ro.get_conn().await?;
        let read: Option<(u64, u32)> = reader.query_first("SELECT COUNT(*), @@server_id FROM visits").await?;
        let (visit, written_on) = written.unwrap_or_default();
        let (visits, read_from) = read.unwrap_or_default();
        Ok(format!(
            "{{\"visit\":{visit},\"written_on\":{written_on},\"visits\":{visits},\"read_from\":{read_from}}}\n"
        ))
    }
}

/// Starts the demo app on `addr` inside `ns`, using the database at `read_write` and
/// `read_only`.
pub fn start(ns: &Netns, addr: SocketAddr, read_write: SocketAddr, read_only: SocketAddr) -> Result<HttpServer> {
    let endpoints = Arc::new(Endpoints {
        read_write,
        read_only,
        pools: OnceLock::new(),
    });
    HttpServer::start(
        ns,
        addr,
        Arc::new(move |req| {
            let endpoints = endpoints.clone();
            Box::pin(async move {
                let (status, body) = if req.uri().path() == "/api/visit" {
                    match endpoints.visit().await {
                        Ok(json) => (StatusCode::OK, json),
                        Err(e) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{{\"error\":{:?}}}\n", e.to_string()),
                        ),
                    }
                } else {
                    (StatusCode::OK, "{\"app\":\"demo\"}\n".to_owned())
                };
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            })
        }),
    )
}
