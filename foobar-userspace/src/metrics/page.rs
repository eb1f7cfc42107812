//! The status page, in the spirit of HAProxy's stats page: one self-contained HTML document
//! (no scripts, no external resources) that reloads itself every few seconds, with the node's
//! VRRP state, the services and their backends with health and counters, and the web and
//! database summaries.

use super::View;
use std::fmt::Write;

/// Seconds between the page's reloads.
const REFRESH_S: u32 = 2;

/// Renders the page from one view of the node.
pub fn render(view: &View) -> String {
    let s = &view.status;
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">
<title>foobar {node}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .4em 0; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.up, .active, .master {{ background: #cfc; }} .down, .fault {{ background: #fcc; }} .backup, .drained {{ background: #ffd; }}
</style></head><body>
<h1>foobar <span id="node">{node}</span>: <span id="forwarding">{forwarding}</span></h1>
<p>Claims: <span id="claimed">{claimed}</span>. This page reloads every {REFRESH_S} s; <a href="/metrics">metrics</a>, <a href="/status.json">status.json</a>.</p>
"#,
        node = esc(&s.node),
        forwarding = if s.forwarding { "forwarding" } else { "not forwarding" },
        claimed = if s.claimed.is_empty() {
            "none".into()
        } else {
            esc(&s.claimed.join(", "))
        },
    );

    if let Some(a) = &s.announce {
        let _ = write!(
            html,
            "<section id=\"announce\"><h2>Announcements</h2><p>Kernel table {}{}.</p><table><tr><th>VIP</th><th>state</th><th>why not</th></tr>",
            a.table,
            if a.draining { "; <span class=\"drained\">draining</span>" } else { "" }
        );
        for v in &a.vips {
            let why: Vec<String> = v.faults.iter().map(ToString::to_string).collect();
            let (class, state) = if v.announced {
                ("up", "announced")
            } else {
                ("down", "WITHDRAWN")
            };
            let _ = write!(
                html,
                r#"<tr class="announcement"><td>{}</td><td class="{class}">{state}</td><td>{}</td></tr>"#,
                v.vip,
                esc(&why.join("; ")),
            );
        }
        html.push_str("</table><table><tr><th>BGP session</th><th>state</th><th>info</th></tr>");
        for session in &a.sessions {
            let class = if session.established() { "up" } else { "down" };
            let _ = write!(
                html,
                r#"<tr class="bgp-session"><td>{}</td><td class="{class}">{}</td><td>{}</td></tr>"#,
                esc(&session.name),
                esc(&session.state),
                esc(&session.info),
            );
        }
        html.push_str("</table>");
        if let Some(e) = &a.sessions_error {
            let _ = write!(html, "<p class=\"down\">BGP sessions unknown: {}</p>", esc(e));
        }
        html.push_str("</section>\n");
    }

    html.push_str("<section id=\"vrrp\"><h2>VRRP</h2>");
    if s.announce.is_some() {
        html.push_str("<p>The VIPs are announced, not elected.</p>");
    } else if s.vrrp.is_empty() {
        html.push_str("<p>No VRRP instances: this node owns every VIP.</p>");
    } else {
        html.push_str("<table><tr><th>instance</th><th>state</th><th>priority</th><th>master</th><th>reason</th><th>faults</th><th>adverts sent</th><th>received</th><th>transitions</th></tr>");
        for v in &s.vrrp {
            let _ = write!(
                html,
                r#"<tr class="vrrp-instance"><td>{}</td><td class="{}">{}</td><td class="n">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                esc(&v.name),
                v.state.name(),
                v.state.name().to_uppercase(),
                v.priority,
                v.master.map_or("?".into(), |m| m.to_string()),
                v.reason.name(),
                esc(&v.faults_text()),
                v.adverts_sent,
                v.adverts_received,
                v.transitions,
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>\n");

    html.push_str("<section id=\"services\"><h2>Services</h2>");
    for svc in &view.status.services {
        let traffic = view.dataplane.as_ref().and_then(|d| {
            d.services
                .iter()
                .find(|t| t.vip == svc.vip && t.protocol == svc.protocol)
                .map(|t| (t.id, &t.traffic))
        });
        let _ = write!(
            html,
            r#"<h3 class="service">{} — {}</h3><table><tr><th>backend</th><th>health</th><th>weight</th><th>packets</th><th>bytes</th><th>new flows</th></tr>"#,
            esc(&svc.name),
            svc.vip
        );
        for b in &svc.backends {
            let addr = b.address;
            let counts = view.dataplane.as_ref().and_then(|d| {
                d.backends
                    .iter()
                    .find(|x| Some(x.service_id) == traffic.map(|t| t.0) && x.address == addr)
                    .map(|x| &x.traffic)
            });
            let (p, by, nf) = counts.map_or((0, 0, 0), |t| (t.packets, t.bytes, t.new_flows));
            // Who drained it, or why it is down.
            let detail = match (&b.down_reason, b.drained_by_operator) {
                (Some(why), _) => format!(": {}", esc(why)),
                (None, true) => " by an operator".to_string(),
                (None, false) => String::new(),
            };
            let _ = write!(
                html,
                r#"<tr class="backend"><td>{addr}</td><td class="{cls}">{cls}{detail}</td><td class="n">{w}</td><td class="n">{p}</td><td class="n">{by}</td><td class="n">{nf}</td></tr>"#,
                cls = b.standing.name(),
                w = b.weight,
            );
        }
        if let Some((_, t)) = traffic {
            let _ = write!(
                html,
                r#"<tr><th>service total</th><td></td><td></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                t.packets, t.bytes, t.new_flows
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>\n");

    html.push_str("<section id=\"web\"><h2>Web tier</h2>");
    match &s.web {
        None => html.push_str("<p>No web tier on this node.</p>"),
        Some(w) => {
            let requests: Vec<String> = w.requests.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let errors: Vec<String> = w.upstream_errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = write!(
                html,
                r#"<table><tr><th>open connections</th><td class="n" id="web-open">{}</td></tr><tr><th>requests</th><td>{}</td></tr><tr><th>TLS handshakes</th><td>1.3: {}, 1.2: {}, failed: {}</td></tr><tr><th>upstream errors</th><td>{}</td></tr></table>"#,
                w.open_connections,
                esc(&requests.join(", ")),
                w.tls13_handshakes,
                w.tls12_handshakes,
                w.tls_failed_handshakes,
                esc(&errors.join(", "))
            );
        }
    }
    html.push_str("</section>\n");

    html.push_str("<section id=\"databases\"><h2>Databases</h2>");
    if s.databases.is_empty() {
        html.push_str("<p>No database routing on this node.</p>");
    }
    for d in &s.databases {
        let _ = write!(
            html,
            r#"<h3 class="database">{} — primary {}; refused read-write {}, read-only {}</h3><table><tr><th>server</th><th>state</th><th>lag</th><th>open</th><th>total</th><th>connect failures</th><th>closed by router</th><th>last error</th></tr>"#,
            esc(&d.name),
            esc(d.primary.as_deref().unwrap_or("none")),
            d.refused_read_write,
            d.refused_read_only
        );
        for server in &d.servers {
            let st = &server.state;
            let cls = if st.up { "up" } else { "down" };
            let role = st.role();
            let lag = st.lag_text().unwrap_or_default();
            let _ = write!(
                html,
                r#"<tr class="db-server"><td>{}</td><td class="{cls}">{role}</td><td>{lag}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td>{}</td></tr>"#,
                esc(&server.address),
                server.active,
                server.total,
                server.connect_failures,
                server.closed_by_router,
                esc(st.last_error.as_deref().unwrap_or("")),
            );
        }
        html.push_str("</table>");
        if let Some(f) = &d.failover {
            let _ = write!(
                html,
                r#"<p class="failover">Failover: {}{}</p><ul class="failover-events">"#,
                esc(&f.summary(d.servers.len())),
                f.waiting
                    .as_deref()
                    .map(|w| format!("; waiting: {}", esc(w)))
                    .unwrap_or_default()
            );
            for e in f.events.iter().rev().take(5) {
                let _ = write!(html, "<li>{}</li>", esc(&e.what));
            }
            html.push_str("</ul>");
        }
    }
    html.push_str("</section>\n</body></html>\n");
    html
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
