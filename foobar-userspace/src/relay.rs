//! Relaying bytes both ways between two connections (a WebSocket after its upgrade, a database
//! client and its server) with deadlines: the client's first bytes within a handshake timeout,
//! and nothing moving for longer than an idle timeout. The copy itself is tokio's; each side
//! is wrapped to note when it last delivered bytes, and a watchdog ends the relay.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a relay was ended by its deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The client sent nothing within the handshake timeout.
    Handshake,
    /// Nothing moved either way within the idle timeout.
    Idle,
}

/// The relay's deadlines; `None` is no deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// The client's first bytes must arrive within this.
    pub handshake: Option<Duration>,
    /// Bytes must move (either way) at least this often.
    pub idle: Option<Duration>,
}

/// When bytes last moved, and whether the client has sent any.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    client_bytes: AtomicU64,
}

impl Activity {
    /// Activity of a relay that starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            client_bytes: AtomicU64::new(0),
        })
    }

    fn note(&self, n: usize, client: bool) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if client {
            self.client_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Resolves when a deadline passes; pending forever without deadlines.
    pub async fn expired(&self, deadlines: Deadlines) -> Expired {
        let tick = [deadlines.handshake, deadlines.idle]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::from_secs(3600), |d| (d / 4).max(Duration::from_millis(10)));
        loop {
            tokio::time::sleep(tick).await;
            let now = self.start.elapsed();
            if let Some(limit) = deadlines.handshake {
                if now >= limit && self.client_bytes.load(Ordering::Relaxed) == 0 {
                    return Expired::Handshake;
                }
            }
            if let Some(limit) = deadlines.idle {
                let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
                if now.saturating_sub(last) >= limit {
                    return Expired::Idle;
                }
            }
        }
    }
}

/// A connection whose reads are noted in an [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    client: bool,
}

impl<S> Watched<S> {
    /// Wraps `inner`; `client` marks the side whose first bytes the handshake deadline awaits.
    pub fn new(inner: S, activity: &Arc<Activity>, client: bool) -> Self {
        Self {
            inner,
            activity: activity.clone(),
            client,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.note(read, self.client);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways between `client` and `server` until either closes or a deadline passes;
/// `Ok(Some(_))` says which deadline ended it.
pub async fn relay<C, S>(client: C, server: S, buffer: usize, deadlines: Deadlines) -> io::Result<Option<Expired>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Watched::new(client, &activity, true);
    let mut server = Watched::new(server, &activity, false);
    tokio::select! {
        copied = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, buffer, buffer) => copied.map(|_| None),
        expired = activity.expired(deadlines) => Ok(Some(expired)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_client_meets_the_handshake_deadline_and_a_quiet_pair_the_idle_one() {
        let deadlines = Deadlines {
            handshake: Some(Duration::from_millis(200)),
            idle: Some(Duration::from_millis(400)),
        };
        let (client, _client_end) = tokio::io::duplex(64);
        let (server, _server_end) = tokio::io::duplex(64);
        assert_eq!(
            relay(client, server, 64, deadlines).await.ok(),
            Some(Some(Expired::Handshake))
        );

        let (client, mut client_end) = tokio::io::duplex(64);
        let (server, mut server_end) = tokio::io::duplex(64);
        let relayed = tokio::spawn(relay(client, server, 64, deadlines));
        client_end.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        server_end.read_exact(&mut got).await.expect("relayed");
        assert_eq!(&got, b"hello");
        assert_eq!(relayed.await.ok().and_then(Result::ok), Some(Some(Expired::Idle)));
    }
}
