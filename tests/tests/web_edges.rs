//! The web tier end to end through the VIP: two edges run VRRP, the XDP load balancer and the
//! web tier; the HTTPS service's backends are the edges themselves, so the master serves some
//! connections locally and sends the others to the backup by IPIP, which answers the client
//! directly.

use anyhow::{ensure, Result};
use foobar_tests::lab::{LabSpec, LbLab, HTTPS_PORT, VIP, WEB_HOST};

#[test]
fn https_through_the_vip_is_served_by_both_edges() -> Result<()> {
    let lab = LbLab::build(LabSpec::pair(1, true, true))?;
    let resolve = format!("{WEB_HOST}:{HTTPS_PORT}:{VIP}");
    let ca = lab.web_certificate().display().to_string();
    let url = format!("https://{WEB_HOST}/");
    let mut served = Vec::new();
    // Each curl is a new connection from a new source port: Maglev spreads them.
    for flag in ["--http2", "--http1.1"] {
        for _ in 0..12 {
            let out = lab.client.exec(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                flag,
                "--resolve",
                &resolve,
                "--cacert",
                &ca,
                &url,
            ])?;
            served.push(out);
        }
    }
    let by_edge1 = served.iter().filter(|s| *s == "served by edge1\n").count();
    let by_edge2 = served.iter().filter(|s| *s == "served by edge2\n").count();
    ensure!(
        by_edge1 + by_edge2 == served.len() && by_edge1 > 0 && by_edge2 > 0,
        "both edges should serve: {served:?}"
    );
    Ok(())
}
