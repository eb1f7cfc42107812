//! Monitoring: the management listener (`[monitoring] listen`) serves `/metrics` (Prometheus
//! text or OpenMetrics by content negotiation), the status page at `/` and its data at
//! `/status.json`. Everything is gathered at request time from where it lives: the data plane's
//! per-CPU maps, health, the VRRP instances, the web tier, the database routers, /proc.

pub mod access;
pub mod exposition;
pub mod host;
pub mod page;

use crate::{
    admission::{Admission, Caps},
    config::{database::Role, monitoring::Monitoring, Config},
    ctl::{self, NodeStatus},
    health::Standing,
    stats::{self, Snapshot},
};
use access::{Access, Refusals};
use anyhow::{Context, Result};
use exposition::{Family, Format, Kind};
use hyper::{body::Incoming, header, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};

/// Everything the metrics and the status page are read from.
#[derive(Clone)]
pub struct Sources {
    /// The node's live status (VRRP, web, databases).
    pub status: ctl::Source,
    /// The running configuration (names of services and backends).
    pub config: watch::Receiver<Arc<Config>>,
    /// Extra families (the push exporter's own counters).
    pub extra: Arc<dyn Fn() -> Vec<Family> + Send + Sync>,
    /// The data plane's counter maps (None when they could not be opened).
    pub counters: Option<Arc<stats::CounterMaps>>,
    /// What the management listener refused.
    pub management: Arc<Refusals>,
}

/// What one gathering saw: the status, the data plane's counters (None when its maps could
/// not be read) and the configuration they are named by.
pub struct View {
    /// The node's status.
    pub status: NodeStatus,
    /// Data-plane counters.
    pub dataplane: Option<Snapshot>,
    /// The configuration.
    pub config: Arc<Config>,
}

impl Sources {
    /// Reads every source once.
    pub fn view(&self) -> View {
        let config = self.config.borrow().clone();
        let dataplane = match self.counters.as_deref().map(stats::CounterMaps::snapshot) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                debug!("reading the data plane's counters failed: {e:#}");
                None
            }
            None => None,
        };
        View {
            status: (self.status)(),
            dataplane,
            config,
        }
    }

    /// Every metric family, foobar's first.
    pub fn families(&self) -> Vec<Family> {
        let view = self.view();
        let mut build = Family::new(
            "foobar_build_info",
            Kind::Gauge,
            "foobar's version, as a label; always 1.",
        );
        build.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let mut out = vec![build];
        out.extend(node_families(&view));
        out.extend(dataplane_families(&view));
        out.extend(vrrp_families(&view.status));
        out.extend(announce_families(&view.status));
        out.extend(web_families(&view.status));
        out.extend(database_families(&view.status));
        out.extend((self.extra)());
        let refusals = &self.management;
        let mut refused = Family::new(
            "foobar_management_refused_connections",
            Kind::Counter,
            "Connections to the management listener closed unserved: over its caps (64 open, 16 per client), or a failed TLS handshake.",
        );
        refused.sample(&[("reason", "caps")], refusals.over_caps.load(Ordering::Relaxed) as f64);
        refused.sample(
            &[("reason", "tls_handshake")],
            refusals.tls_handshake.load(Ordering::Relaxed) as f64,
        );
        out.push(refused);
        out.push(Family::single(
            "foobar_management_unauthorized_requests",
            Kind::Counter,
            "Requests to the management listener answered 401: no credentials or wrong ones (with basic_auth_users).",
            refusals.unauthorized.load(Ordering::Relaxed) as f64,
        ));
        out.extend(host::families());
        out
    }
}

fn node_families(view: &View) -> Vec<Family> {
    let mut claimed = Family::new(
        "foobar_vip_claimed",
        Kind::Gauge,
        "1 while this node answers ARP/ND for the VIP (it is the VRRP master for it).",
    );
    let mut vips: Vec<String> = view.config.services.iter().map(|s| s.vip.to_string()).collect();
    vips.sort();
    vips.dedup();
    for vip in &vips {
        claimed.sample(&[("vip", vip)], f64::from(u8::from(view.status.claimed.contains(vip))));
    }
    vec![
        Family::single(
            "foobar_forwarding",
            Kind::Gauge,
            "1 while the data plane balances VIP traffic on this node.",
            f64::from(u8::from(view.status.forwarding)),
        ),
        claimed,
    ]
}

fn dataplane_families(view: &View) -> Vec<Family> {
    let mut health = Family::new(
        "foobar_backend_up",
        Kind::Gauge,
        "1 while the backend passes its health checks.",
    );
    let mut active = Family::new(
        "foobar_backend_active",
        Kind::Gauge,
        "1 while the backend is in its service's Maglev table (up and weight > 0).",
    );
    let mut drained = Family::new(
        "foobar_backend_drained_by_operator",
        Kind::Gauge,
        "1 while an operator has drained the backend (foobar backend drain), whatever its weight.",
    );
    for s in &view.status.services {
        for b in &s.backends {
            let labels = [("service", s.name.as_str()), ("backend", &b.address.to_string())];
            health.sample(&labels, f64::from(u8::from(b.standing != Standing::Down)));
            active.sample(&labels, f64::from(u8::from(b.standing == Standing::Active)));
            drained.sample(&labels, f64::from(u8::from(b.drained_by_operator)));
        }
    }
    let Some(snap) = &view.dataplane else {
        return vec![health, active, drained];
    };
    let mut packets = Family::new(
        "foobar_dataplane_packets",
        Kind::Counter,
        "Packets the XDP program handled, by outcome (drops are in foobar_dataplane_dropped_packets).",
    );
    let mut drops = Family::new(
        "foobar_dataplane_dropped_packets",
        Kind::Counter,
        "Packets the XDP program dropped, by reason.",
    );
    for (name, value) in &snap.counters {
        match name.strip_prefix("drop_") {
            Some(reason) => drops.sample(&[("reason", reason)], *value as f64),
            None => packets.sample(&[("outcome", name)], *value as f64),
        };
    }
    // Services and backends by the names the configuration gives them.
    let names: HashMap<(SocketAddr, &str), &str> = view
        .config
        .services
        .iter()
        .map(|s| ((SocketAddr::new(s.vip, s.port), s.protocol.name()), s.name.as_str()))
        .collect();
    let by_id: HashMap<u32, &str> = snap
        .services
        .iter()
        .filter_map(|s| Some((s.id, *names.get(&(s.vip, s.protocol))?)))
        .collect();
    let traffic = |what: &str, help: &'static str| Family::new(format!("foobar_{what}"), Kind::Counter, help);
    let mut svc = [
        traffic("service_packets", "Packets to the service's VIP and port."),
        traffic("service_bytes", "Bytes (IP header and up) to the service."),
        traffic(
            "service_new_flows",
            "Flows Maglev assigned to a backend of the service.",
        ),
    ];
    for s in &snap.services {
        let Some(name) = by_id.get(&s.id) else { continue };
        let values = [s.traffic.packets, s.traffic.bytes, s.traffic.new_flows];
        for (f, v) in svc.iter_mut().zip(values) {
            f.sample(&[("service", name)], v as f64);
        }
    }
    let mut backend = [
        traffic("backend_packets", "Packets sent to the backend."),
        traffic("backend_bytes", "Bytes sent to the backend."),
        traffic("backend_new_flows", "Flows Maglev assigned to the backend."),
    ];
    for b in &snap.backends {
        let Some(name) = by_id.get(&b.service_id) else { continue };
        let addr = b.address.to_string();
        let labels = [("service", *name), ("backend", addr.as_str())];
        let values = [b.traffic.packets, b.traffic.bytes, b.traffic.new_flows];
        for (f, v) in backend.iter_mut().zip(values) {
            f.sample(&labels, v as f64);
        }
    }
    let mut out = vec![packets, drops, health, active, drained];
    out.extend(svc);
    out.extend(backend);
    out
}

fn vrrp_families(status: &NodeStatus) -> Vec<Family> {
    let mut state = Family::new(
        "foobar_vrrp_state",
        Kind::Gauge,
        "1 for the instance's current state (initialize, backup, master, fault), else 0.",
    );
    let mut priority = Family::new("foobar_vrrp_priority", Kind::Gauge, "The instance's own priority.");
    let mut faults = Family::new("foobar_vrrp_faults", Kind::Gauge, "Tracked conditions failing now.");
    let mut transitions = Family::new("foobar_vrrp_transitions", Kind::Counter, "State changes since start.");
    let mut sent = Family::new("foobar_vrrp_adverts_sent", Kind::Counter, "Advertisements sent.");
    let mut received = Family::new(
        "foobar_vrrp_adverts_received",
        Kind::Counter,
        "Advertisements received and accepted.",
    );
    let mut discarded = Family::new(
        "foobar_vrrp_adverts_discarded",
        Kind::Counter,
        "Received packets discarded, by reason.",
    );
    let mut answers = Family::new(
        "foobar_vrrp_answers_suppressed",
        Kind::Counter,
        "Answers to a lower-priority master's adverts left out (one per interval is sent).",
    );
    let mut notifies = Family::new(
        "foobar_vrrp_notify_suppressed",
        Kind::Counter,
        "Notify runs left out (at most 10 a minute).",
    );
    for v in &status.vrrp {
        let name = [("instance", v.name.as_str())];
        for s in crate::vrrp::election::State::ALL {
            state.sample(
                &[("instance", &v.name), ("state", s.name())],
                f64::from(u8::from(v.state == s)),
            );
        }
        priority.sample(&name, f64::from(v.priority));
        faults.sample(&name, v.faults.len() as f64);
        transitions.sample(&name, v.transitions as f64);
        sent.sample(&name, v.adverts_sent as f64);
        received.sample(&name, v.adverts_received as f64);
        for (reason, n) in &v.discards {
            discarded.sample(&[("instance", &v.name), ("reason", reason)], *n as f64);
        }
        answers.sample(&name, v.answers_suppressed as f64);
        notifies.sample(&name, v.notify_suppressed as f64);
    }
    vec![
        state,
        priority,
        faults,
        transitions,
        sent,
        received,
        discarded,
        answers,
        notifies,
    ]
}

fn announce_families(status: &NodeStatus) -> Vec<Family> {
    let Some(a) = &status.announce else {
        return Vec::new();
    };
    let mut announced = Family::new(
        "foobar_vip_announced",
        Kind::Gauge,
        "1 while the VIP's route is in the table the BGP daemon announces ([announce]).",
    );
    let mut faults = Family::new(
        "foobar_vip_announce_faults",
        Kind::Gauge,
        "Conditions keeping the VIP from being announced now.",
    );
    for v in &a.vips {
        let vip = v.vip.to_string();
        announced.sample(&[("vip", &vip)], f64::from(u8::from(v.announced)));
        faults.sample(&[("vip", &vip)], v.faults.len() as f64);
    }
    let mut sessions = Family::new(
        "foobar_bgp_session_established",
        Kind::Gauge,
        "1 while the BGP daemon reports the session established (with [announce] bird_socket).",
    );
    for session in &a.sessions {
        sessions.sample(
            &[("session", &session.name)],
            f64::from(u8::from(session.established())),
        );
    }
    let flag =
        |name: &str, help: &'static str, on: bool| Family::single(name, Kind::Gauge, help, f64::from(u8::from(on)));
    vec![
        announced,
        faults,
        sessions,
        flag(
            "foobar_draining",
            "1 while the node drains (foobar drain, or stopping).",
            a.draining,
        ),
        flag(
            "foobar_bgp_sessions_unknown",
            "1 while the BGP daemon's sessions cannot be read.",
            a.sessions_error.is_some(),
        ),
        flag(
            "foobar_announce_table_failing",
            "1 while writing the announcement table fails.",
            a.table_error.is_some(),
        ),
    ]
}

fn web_families(status: &NodeStatus) -> Vec<Family> {
    let Some(w) = &status.web else {
        return Vec::new();
    };
    let mut requests = Family::new(
        "foobar_web_requests",
        Kind::Counter,
        "Requests answered, by site, route (static, a proxy prefix, redirect, refused) and status class.",
    );
    for r in &w.by_route {
        requests.sample(
            &[("site", &r.site), ("route", &r.route), ("class", &r.class)],
            r.requests as f64,
        );
    }
    let mut latency = Family::new(
        "foobar_web_request_duration_seconds",
        Kind::Histogram,
        "Time from the request's arrival to its response headers.",
    );
    latency.histogram(&[], w.latency_buckets.clone(), w.latency_count, w.latency_sum_s);
    let mut handshakes = Family::new(
        "foobar_web_tls_handshakes",
        Kind::Counter,
        "TLS handshakes completed, by version.",
    );
    handshakes.sample(&[("version", "1.2")], w.tls12_handshakes as f64);
    handshakes.sample(&[("version", "1.3")], w.tls13_handshakes as f64);
    let mut errors = Family::new(
        "foobar_web_upstream_errors",
        Kind::Counter,
        "Proxied requests that failed: no_server (503), failed (502), timeout (504).",
    );
    for (kind, n) in &w.upstream_errors {
        errors.sample(&[("kind", kind)], *n as f64);
    }
    let mut server_up = Family::new(
        "foobar_web_upstream_server_up",
        Kind::Gauge,
        "1 while the upstream server takes new requests (its active checks pass, no connection to it failed within fail_timeout_ms, no operator drained it).",
    );
    let mut upstream_drained = Family::new(
        "foobar_web_upstream_server_drained_by_operator",
        Kind::Gauge,
        "1 while an operator has drained the upstream server (foobar upstream drain).",
    );
    let mut in_flight = Family::new(
        "foobar_web_upstream_server_in_flight_requests",
        Kind::Gauge,
        "Requests the upstream server is answering now.",
    );
    for u in &w.upstreams {
        for server in &u.servers {
            let labels = [("upstream", u.name.as_str()), ("server", &server.address.to_string())];
            server_up.sample(&labels, f64::from(u8::from(server.in_rotation())));
            upstream_drained.sample(&labels, f64::from(u8::from(server.drained_by_operator)));
            in_flight.sample(&labels, server.in_flight as f64);
        }
    }
    vec![
        requests,
        latency,
        handshakes,
        server_up,
        upstream_drained,
        in_flight,
        Family::single(
            "foobar_web_tls_handshake_failures",
            Kind::Counter,
            "TLS handshakes that failed or timed out.",
            w.tls_failed_handshakes as f64,
        ),
        Family::single(
            "foobar_web_open_connections",
            Kind::Gauge,
            "Client connections open now.",
            w.open_connections as f64,
        ),
        errors,
    ]
}

fn database_families(status: &NodeStatus) -> Vec<Family> {
    let gauge = |name: &str, help: &'static str| Family::new(format!("foobar_database_{name}"), Kind::Gauge, help);
    let counter = |name: &str, help: &'static str| Family::new(format!("foobar_database_{name}"), Kind::Counter, help);
    let mut up = gauge("server_up", "1 while the monitor's checks pass.");
    let mut primary = gauge("server_primary", "1 for the server read-write connections go to.");
    let mut read_only = gauge("server_read_only", "@@global.read_only at the last check.");
    let mut lag = gauge(
        "replication_lag_seconds",
        "Seconds_Behind_Master at the last check (absent when the server reports none).",
    );
    let mut open = gauge("open_connections", "Client connections open to the server now.");
    let mut total = counter("connections", "Client connections relayed to the server.");
    let mut failures = counter(
        "connect_failures",
        "Connections to the server that failed or timed out.",
    );
    let mut closed = counter(
        "closed_connections",
        "Client connections the router closed (server down, or no longer the primary).",
    );
    let mut refused = counter(
        "refused_connections",
        "Client connections refused with an error packet, by role.",
    );
    let mut timed_out = Family::new(
        "foobar_database_timed_out_connections",
        Kind::Counter,
        "Client connections closed for sending no login within handshake_timeout_ms, or for idle_timeout_ms without a byte.",
    );
    let mut over_limit = Family::new(
        "foobar_database_refused_over_limit_connections",
        Kind::Counter,
        "Client connections refused over max_client_connections or max_connections_per_client.",
    );
    let mut galera_state = gauge(
        "galera_local_state",
        "A Galera member's wsrep_local_state at the last check: 1 joining, 2 donor or desynced, 3 joined, 4 synced.",
    );
    let mut galera_primary = gauge(
        "galera_primary_component",
        "1 while the Galera member is in the primary component (wsrep_cluster_status = Primary).",
    );
    let mut acting = gauge(
        "failover_acting",
        "1 while this edge acts for the cluster's failover (it holds the lock on a majority of servers).",
    );
    let mut failover_steps = counter(
        "failover_steps",
        "Failover steps taken by this edge, by kind: failover, switchover, fence, repoint, failed.",
    );
    let mut pause = gauge(
        "switchover_write_pause_seconds",
        "How long writes paused in the last switchover this edge carried out.",
    );
    for d in &status.databases {
        over_limit.sample(&[("database", &d.name)], d.refused_over_limit as f64);
        if let Some(f) = &d.failover {
            acting.sample(&[("database", &d.name)], f64::from(u8::from(f.acting)));
            for (kind, n) in [
                ("failover", f.failovers),
                ("switchover", f.switchovers),
                ("fence", f.fenced),
                ("repoint", f.repointed),
                ("failed", f.failed_steps),
            ] {
                failover_steps.sample(&[("database", &d.name), ("kind", kind)], n as f64);
            }
            if let Some(ms) = f.last_write_pause_ms {
                pause.sample(&[("database", &d.name)], ms as f64 / 1000.0);
            }
        }
        for s in &d.servers {
            let labels = [("database", d.name.as_str()), ("server", s.address.as_str())];
            let is_primary = d.primary.as_deref() == Some(s.address.as_str());
            up.sample(&labels, f64::from(u8::from(s.state.up)));
            primary.sample(&labels, f64::from(u8::from(is_primary)));
            read_only.sample(&labels, f64::from(u8::from(s.state.read_only)));
            if let crate::mysql::monitor::Lag::Seconds(l) = s.state.lag {
                lag.sample(&labels, l as f64);
            }
            if let Some(g) = &s.state.galera {
                galera_state.sample(&labels, f64::from(g.local_state));
                galera_primary.sample(&labels, f64::from(u8::from(g.cluster_status == "Primary")));
            }
            open.sample(&labels, f64::from(s.active));
            total.sample(&labels, s.total as f64);
            failures.sample(&labels, s.connect_failures as f64);
            closed.sample(&labels, s.closed_by_router as f64);
        }
        refused.sample(
            &[("database", &d.name), ("role", Role::ReadWrite.name())],
            d.refused_read_write as f64,
        );
        refused.sample(
            &[("database", &d.name), ("role", Role::ReadOnly.name())],
            d.refused_read_only as f64,
        );
        timed_out.sample(&[("database", &d.name)], d.timed_out as f64);
    }
    vec![
        up,
        primary,
        read_only,
        lag,
        open,
        total,
        failures,
        closed,
        refused,
        timed_out,
        over_limit,
        galera_state,
        galera_primary,
        acting,
        failover_steps,
        pause,
    ]
}

/// Open connections the management listener takes at most: scrapers and a few browsers. Over
/// the caps a connection is closed at once, so no client can hold the listener.
const MANAGEMENT_CAPS: Caps = Caps {
    total: 64,
    per_client: 16,
    ipv6_prefix_len: 64,
};

/// Serves the management endpoints on `addr` until the task is dropped.
pub async fn serve(m: &Monitoring, sources: Sources) -> Result<tokio::task::JoinHandle<()>> {
    let addr = m.listen;
    let access = Arc::new(Access::new(m).context("the management listener's TLS")?);
    let listener = crate::listen::bind(addr)
        .and_then(|l| Ok(TcpListener::from_std(l)?))
        .with_context(|| format!("binding the management address {addr}"))?;
    info!(
        address = %addr,
        tls = access.tls().is_some(),
        users = m.basic_auth_users.len(),
        "metrics and status page up"
    );
    let sources = Arc::new(sources);
    let admission = Admission::new(MANAGEMENT_CAPS);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Some(admitted) = admission.admit(peer.ip()) else {
                Refusals::count(&sources.management.over_caps);
                debug!(client = %peer, "management connection refused over the caps");
                continue;
            };
            let (sources, access) = (sources.clone(), access.clone());
            tokio::spawn(async move {
                let _admitted = admitted;
                match access.tls() {
                    Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(tls, sources, access).await,
                        Ok(Err(_)) | Err(_) => {
                            Refusals::count(&sources.management.tls_handshake);
                            debug!(client = %peer, "management TLS handshake failed");
                        }
                    },
                    None => serve_connection(stream, sources, access).await,
                }
            });
        }
    }))
}

/// Time a management client has for its TLS handshake, and then for each request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on one management connection, plain or TLS.
async fn serve_connection<S>(stream: S, sources: Arc<Sources>, access: Arc<Access>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (sources, access) = (sources.clone(), access.clone());
        async move {
            if !access.allows(req.headers().get(header::AUTHORIZATION)).await {
                Refusals::count(&sources.management.unauthorized);
                let mut refused = crate::web::status_page(StatusCode::UNAUTHORIZED);
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"foobar\", charset=\"UTF-8\""),
                );
                return Ok::<_, Infallible>(refused);
            }
            Ok(answer(&req, &sources).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let _ = conn.await;
}

async fn answer(req: &Request<Incoming>, sources: &Arc<Sources>) -> Response<crate::web::Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return crate::web::status_page(StatusCode::METHOD_NOT_ALLOWED);
    }
    let sources = sources.clone();
    let path = req.uri().path().to_owned();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Reading the maps and /proc blocks briefly: off the runtime's threads.
    let made = tokio::task::spawn_blocking(move || match path.as_str() {
        "/metrics" => {
            let format = Format::negotiate(accept.as_deref());
            Some((format.content_type(), exposition::encode(&sources.families(), format)))
        }
        "/" => Some(("text/html; charset=utf-8", page::render(&sources.view()))),
        "/status.json" => {
            let status = sources.view().status;
            serde_json::to_string(&status).ok().map(|s| ("application/json", s))
        }
        _ => None,
    })
    .await;
    match made {
        Ok(Some((content_type, body))) => {
            let mut r = Response::new(crate::web::full(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            r
        }
        Ok(None) => crate::web::status_page(StatusCode::NOT_FOUND),
        Err(_) => crate::web::status_page(StatusCode::INTERNAL_SERVER_ERROR),
    }
}
