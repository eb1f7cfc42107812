//! The BGP sessions as BIRD 2 reports them: `show protocols` over its control socket (the
//! protocol `birdc` speaks: numbered reply lines, `0000` ends an answer), parsed into one
//! entry per BGP protocol.

use super::BgpSession;
use anyhow::{bail, Context, Result};
use std::{path::Path, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// The longest a whole exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most reply lines read (a daemon with thousands of protocols is cut off there).
const MAX_LINES: usize = 10_000;

/// Asks the BIRD listening on `socket` for its BGP sessions.
pub async fn sessions(socket: &Path) -> Result<Vec<BgpSession>> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(socket))
        .await
        .with_context(|| format!("BIRD at {} did not answer in time", socket.display()))?
}

async fn exchange(socket: &Path) -> Result<Vec<BgpSession>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to BIRD's control socket {}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = lines.next_line().await?.context("BIRD closed the socket at once")?;
    if !greeting.starts_with("0001 ") {
        bail!("not BIRD's greeting: {greeting:?}");
    }
    write.write_all(b"show protocols\n").await?;
    let mut reply = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if line.starts_with("0000") {
            return Ok(parse(&reply));
        }
        if line.starts_with('8') || line.starts_with('9') {
            bail!("BIRD refused show protocols: {line}");
        }
        if reply.len() == MAX_LINES {
            bail!("BIRD's answer exceeds {MAX_LINES} lines");
        }
        reply.push(line);
    }
    bail!("BIRD closed the socket before the end of its answer")
}

/// The BGP rows of a `show protocols` answer (code 1002 rows, continued by lines starting with
/// a space): name, protocol, table, state, since (one or two words), info.
pub(crate) fn parse(lines: &[String]) -> Vec<BgpSession> {
    let mut sessions = Vec::new();
    let mut code = "";
    for line in lines {
        // A code is four digits and a separator ('-' or ' '), all ASCII: slicing after them
        // stays on a character boundary whatever follows.
        let coded = line
            .as_bytes()
            .get(..5)
            .is_some_and(|head| head[..4].iter().all(u8::is_ascii_digit) && matches!(head[4], b'-' | b' '));
        let row = if let Some(rest) = line.strip_prefix(' ') {
            rest
        } else if coded {
            code = &line[..4];
            &line[5..]
        } else {
            continue;
        };
        if code != "1002" {
            continue;
        }
        let words: Vec<&str> = row.split_whitespace().collect();
        if words.len() < 5 || words[1] != "BGP" {
            continue;
        }
        // Since is a time ("08:57:20.410") or a date and a time; info follows it.
        let dated = words[4].len() == 10 && words[4].as_bytes().get(4) == Some(&b'-');
        let since_words = if dated { 2 } else { 1 };
        let info = words.get(4 + since_words..).map(|w| w.join(" ")).unwrap_or_default();
        sessions.push(BgpSession {
            name: words[0].to_owned(),
            state: words[3].to_owned(),
            info,
        });
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_rows_of_show_protocols_are_parsed() {
        let answer = [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     08:56:53.549  ",
            " kernel1    Kernel     master4    up     08:56:53.549  ",
            " uplink     BGP        ---        up     08:57:20.410  Established   ",
            " spare      BGP        ---        start  2026-11-30 08:56:53  Active        Socket: Connection refused",
        ]
        .map(String::from);
        let sessions = parse(&answer);
        assert_eq!(
            sessions,
            vec![
                BgpSession {
                    name: "uplink".into(),
                    state: "up".into(),
                    info: "Established".into()
                },
                BgpSession {
                    name: "spare".into(),
                    state: "start".into(),
                    info: "Active Socket: Connection refused".into()
                },
            ]
        );
        assert!(sessions[0].established() && !sessions[1].established());
        // Found by the bgp_daemon_answers fuzz target: a multibyte character right after the
        // code (the slice after it cut the character).
        assert!(parse(&["1002\u{fffd}-x BGP".to_string(), "100é".to_string()]).is_empty());
    }
}
