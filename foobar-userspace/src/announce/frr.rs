//! The BGP sessions as FRR reports them: `vtysh -c 'show bgp summary json'`, one entry per
//! neighbour (merged over address families).

use super::BgpSession;
use anyhow::{bail, Context, Result};
use std::{collections::BTreeMap, path::Path, time::Duration};

/// The longest vtysh may take.
const VTYSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the FRR whose vty sockets are in `vty_dir` for its BGP sessions.
pub async fn sessions(vty_dir: &Path) -> Result<Vec<BgpSession>> {
    let run = tokio::process::Command::new("vtysh")
        .arg("--vty_socket")
        .arg(vty_dir)
        .args(["-c", "show bgp summary json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(VTYSH_TIMEOUT, run)
        .await
        .context("vtysh did not answer in time")?
        .context("running vtysh (is frr installed?)")?;
    if !out.status.success() {
        bail!(
            "vtysh --vty_socket {} failed: {}",
            vty_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout)
}

/// The neighbours of every address family in a `show bgp summary json` answer.
pub(crate) fn parse(json: &[u8]) -> Result<Vec<BgpSession>> {
    let summary: serde_json::Value = serde_json::from_slice(json).context("vtysh's answer is not JSON")?;
    let families = summary.as_object().context("vtysh's answer is not a JSON object")?;
    let mut sessions = BTreeMap::new();
    for family in families.values() {
        let Some(peers) = family.get("peers").and_then(|p| p.as_object()) else {
            continue;
        };
        for (address, peer) in peers {
            let state = peer.get("state").and_then(|s| s.as_str()).unwrap_or("unknown");
            sessions.entry(address.clone()).or_insert_with(|| BgpSession {
                name: address.clone(),
                state: if state == "Established" { "up" } else { "start" }.into(),
                info: state.to_owned(),
            });
        }
    }
    Ok(sessions.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_of_every_family_are_read_once() {
        let answer = br#"{
          "ipv4Unicast": {"routerId": "10.10.0.3", "as": 65001, "peers": {
            "10.10.0.254": {"remoteAs": 65000, "state": "Established", "peerState": "OK"},
            "10.10.0.253": {"remoteAs": 65000, "state": "Active", "peerState": "OK"}}},
          "ipv6Unicast": {"peers": {"10.10.0.254": {"state": "Established"}}}
        }"#;
        let sessions = parse(answer).unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(
            (sessions[0].name.as_str(), sessions[0].established()),
            ("10.10.0.253", false)
        );
        assert_eq!(
            (sessions[1].name.as_str(), sessions[1].established()),
            ("10.10.0.254", true)
        );
        assert!(parse(b"{}").unwrap().is_empty(), "no BGP instance: no sessions");
        assert!(parse(b"% Unknown command").is_err());
    }
}
