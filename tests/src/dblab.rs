//! The database lab: a MariaDB primary (`db1`, server id 1) and GTID replicas (`db2`, ...),
//! each in its own namespace, router namespaces (edges) running `foobar run`, and a client
//! namespace with the `mariadb` client, all on one bridge. By default two servers and one
//! router with two `[[database]]` clusters over them (`main` on 3306/3307 falls back to the
//! primary for reads, `strict` on 3316/3317 refuses); a [`Shape`] asks for more servers, more
//! edges, semi-synchronous replication, and `main` alone with `[database.failover]`.

use crate::{
    lab::wire,
    mariadb::{self, MariaDb, MONITOR_USER},
    ChildGuard, Netns, PinDir, Scratch,
};
use anyhow::{Context, Result};
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The first router's address (both clusters' listeners).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 100);
/// Read-write and read-only ports of the `main` cluster.
pub const MAIN: (u16, u16) = (3306, 3307);
/// Read-write and read-only ports of the `strict` cluster.
pub const STRICT: (u16, u16) = (3316, 3317);
/// How long the router takes at most to notice a change (monitor every 200 ms, fall 2).
pub const NOTICE: Duration = Duration::from_secs(5);

/// Address of database server `i` (0-based).
pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 11 + i as u8)
}

/// Address of router (edge) `i` (0-based).
pub fn router_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 1 + i as u8)
}

/// What a lab is made of.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Database servers: the first is the primary, the others its replicas.
    pub servers: usize,
    /// Routers running foobar, each with the same clusters.
    pub edges: usize,
    /// MariaDB's semi-synchronous replication on every server.
    pub semi_sync: bool,
    /// `Some(extra)`: only the `main` cluster, with `[database.failover]` made of the
    /// replication credentials and `extra` (TOML lines), and writes held 5 s.
    pub failover: Option<String>,
    /// The servers are a Galera cluster, and `main` alone routes to it (`kind = "galera"`).
    pub galera: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            servers: 2,
            edges: 1,
            semi_sync: false,
            failover: None,
            galera: false,
        }
    }
}

/// One router: its namespace and `foobar run`.
pub struct Router {
    /// `foobar run` (None until started or once stopped).
    pub process: Option<ChildGuard>,
    /// Its namespace.
    pub ns: Netns,
    pins: PinDir,
}

/// A running database lab.
pub struct DbLab {
    /// The routers (edges).
    pub routers: Vec<Router>,
    /// `db1` (the primary at first) and its replicas.
    pub servers: Vec<MariaDb>,
    /// The namespaces of the servers, in order.
    pub server_ns: Vec<Netns>,
    /// The client's namespace.
    pub client: Netns,
    _switch: Netns,
    shape: Shape,
    /// Data directories, configuration and logs.
    pub scratch: Scratch,
}

impl DbLab {
    /// Builds the network, starts the primary and the replica with replication running, and
    /// writes the router's configuration and credentials (the router is not started).
    pub fn build(tag: &str) -> Result<Self> {
        Self::build_shaped(tag, Shape::default())
    }

    /// [`DbLab::build`] made of `shape`.
    pub fn build_shaped(tag: &str, shape: Shape) -> Result<Self> {
        let scratch = Scratch::new(&format!("db-{tag}"))?;
        let switch = Netns::new(&format!("db{tag}-sw"))?;
        let client = Netns::new(&format!("db{tag}-cl"))?;
        let mut routers = Vec::new();
        for i in 0..shape.edges {
            routers.push(Router {
                process: None,
                ns: Netns::new(&format!("db{tag}-rt{}", suffix(i)))?,
                pins: PinDir::new(&format!("db{tag}{}", suffix(i))),
            });
        }
        let server_ns = (0..shape.servers)
            .map(|i| Netns::new(&format!("db{tag}-{}", i + 1)))
            .collect::<Result<Vec<_>>>()?;
        let mut hosts = vec![(&client, "cl".to_string(), CLIENT)];
        for (i, r) in routers.iter().enumerate() {
            hosts.push((&r.ns, format!("rt{i}"), router_addr(i)));
        }
        for (i, ns) in server_ns.iter().enumerate() {
            hosts.push((ns, format!("db{}", i + 1), server_addr(i)));
        }
        wire(&switch, &hosts)?;
        let servers: Vec<(&Netns, String)> = server_ns
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns, server_addr(i).to_string()))
            .collect();
        let servers = if shape.galera {
            mariadb::galera_cluster(&scratch.path, &servers)?
        } else {
            mariadb::cluster(&scratch.path, &servers, shape.semi_sync)?
        };
        let lab = Self {
            routers,
            servers,
            server_ns,
            client,
            _switch: switch,
            shape,
            scratch,
        };
        lab.write_credentials(MONITOR_USER.1, 0o600)?;
        mariadb::write_login(&lab.replication_credentials(), "repl", mariadb::REPL_PASSWORD, 0o600)?;
        for i in 0..lab.routers.len() {
            std::fs::write(lab.config_of(i), lab.config_text(i))?;
        }
        Ok(lab)
    }

    /// The replication credentials file `[database.failover]` names.
    pub fn replication_credentials(&self) -> PathBuf {
        self.scratch.file("replication.toml")
    }

    /// [`DbLab::build`], then starts the router and waits until it routes writes.
    pub fn start(tag: &str) -> Result<Self> {
        let mut lab = Self::build(tag)?;
        lab.start_router()?;
        lab.wait_for(MAIN.0, "SELECT @@server_id", "1")?;
        Ok(lab)
    }

    /// The first router's configuration file.
    pub fn config(&self) -> PathBuf {
        self.config_of(0)
    }

    /// Router `i`'s configuration file.
    pub fn config_of(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("foobar{}.toml", suffix(i)))
    }

    /// The monitor credentials file.
    pub fn credentials(&self) -> PathBuf {
        self.scratch.file("monitor.toml")
    }

    /// Writes the monitor credentials with `password`, file mode `mode`.
    pub fn write_credentials(&self, password: &str, mode: u32) -> Result<()> {
        mariadb::write_credentials(&self.credentials(), password, mode)
    }

    fn config_text(&self, i: usize) -> String {
        let servers: Vec<String> = (0..self.servers.len()).map(|i| server_addr(i).to_string()).collect();
        let router = router_addr(i).to_string();
        let credentials = self.credentials();
        let main = mariadb::database_section("main", &router, MAIN, &servers, &credentials, "primary");
        let clusters = match &self.shape.failover {
            None if self.shape.galera => format!("{main}kind = \"galera\"\n"),
            None => format!(
                "{main}{}",
                mariadb::database_section("strict", &router, STRICT, &servers, &credentials, "refuse")
            ),
            Some(extra) => format!(
                "{main}hold_writes_ms = 5000\n\n[database.failover]\nreplication_credentials = \"{}\"\n{extra}\n",
                self.replication_credentials().display()
            ),
        };
        format!(
            "[node]\nname = \"router{n}\"\ninterfaces = [\"eth0\"]\npin_dir = \"{pins}\"\ncontrol_socket = \"{socket}\"\n{clusters}",
            n = i + 1,
            pins = self.routers[i].pins.path.display(),
            socket = self.socket_of(i).display(),
        )
    }

    /// The first router's control socket.
    pub fn socket(&self) -> PathBuf {
        self.socket_of(0)
    }

    /// Router `i`'s control socket.
    pub fn socket_of(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("foobar{}.sock", suffix(i)))
    }

    /// Starts `foobar run` in every router namespace.
    pub fn start_router(&mut self) -> Result<()> {
        for i in 0..self.routers.len() {
            self.start_edge(i)?;
        }
        Ok(())
    }

    /// Starts `foobar run` in router `i`'s namespace.
    pub fn start_edge(&mut self, i: usize) -> Result<()> {
        let log = self.log_path(i);
        let process = crate::start_foobar(&self.routers[i].ns, &self.config_of(i), &log)?;
        self.routers[i].process = Some(process);
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.scratch.file(&format!("foobar{}.log", suffix(i)))
    }

    /// The first router's log so far.
    pub fn router_log(&self) -> String {
        self.log_of(0)
    }

    /// Router `i`'s log so far.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Every router's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.routers.len())
            .map(|i| format!("router {} log:\n{}", i + 1, self.log_of(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs SQL as the application user through the first router's `port` from the client
    /// namespace: whether it succeeded, and its rows (or error message).
    pub fn query(&self, port: u16, sql: &str) -> Result<(bool, String)> {
        self.query_via(0, port, sql)
    }

    /// [`DbLab::query`] through router `i`.
    pub fn query_via(&self, i: usize, port: u16, sql: &str) -> Result<(bool, String)> {
        mariadb::app_query(&self.client, &router_addr(i).to_string(), port, sql, &[])
    }

    /// Runs SQL that must succeed through `port`; its rows.
    pub fn must_query(&self, port: u16, sql: &str) -> Result<String> {
        let (ok, out) = self.query(port, sql)?;
        anyhow::ensure!(
            ok,
            "{sql} through port {port} failed: {out}\nrouter log:\n{}",
            self.router_log()
        );
        Ok(out)
    }

    /// Waits until `sql` through `port` answers `expected`.
    pub fn wait_for(&self, port: u16, sql: &str, expected: &str) -> Result<()> {
        let mut last = String::new();
        crate::wait_until(NOTICE, &format!("{sql} through {port} to answer {expected}"), || {
            last = self
                .query(port, sql)
                .map(|(_, out)| out)
                .unwrap_or_else(|e| e.to_string());
            last == expected
        })
        .with_context(|| format!("last answer: {last}\nrouter log:\n{}", self.router_log()))
    }

    /// Waits until a connection through `port` is refused with a message containing `needle`;
    /// the message.
    pub fn wait_for_refusal(&self, port: u16, needle: &str) -> Result<String> {
        let mut last = String::new();
        crate::wait_until(NOTICE, &format!("port {port} to refuse with {needle:?}"), || {
            last = match self.query(port, "SELECT @@server_id") {
                Ok((false, out)) => out,
                Ok((true, out)) => format!("answered {out}"),
                Err(e) => e.to_string(),
            };
            last.contains(needle)
        })
        .with_context(|| format!("last answer: {last}\nrouter log:\n{}", self.router_log()))?;
        Ok(last)
    }

    /// The first router's status over its control socket.
    pub fn status(&self) -> Result<foobar::ctl::NodeStatus> {
        self.status_of(0)
    }

    /// Router `i`'s status over its control socket.
    pub fn status_of(&self, i: usize) -> Result<foobar::ctl::NodeStatus> {
        foobar::ctl::query(&self.socket_of(i))
    }

    /// `foobar status` of router `i`, as text.
    pub fn status_text_of(&self, i: usize) -> Result<String> {
        let socket = self.socket_of(i).display().to_string();
        self.routers[i]
            .ns
            .exec_direct(&crate::foobar_bin(), &["status", "--socket", &socket])
    }

    /// `foobar status` of the first router, as text.
    pub fn status_text(&self) -> Result<String> {
        self.status_text_of(0)
    }
}

/// The file name suffix of router `i`: none for the first, `2`, `3`, ... after.
fn suffix(i: usize) -> String {
    if i == 0 {
        String::new()
    } else {
        (i + 1).to_string()
    }
}

/// A write load through a router's read-write endpoint: numbered INSERTs into `appdb.t`
/// (`v = 'w<n>'`), one at a time, reconnecting after any error, from the client namespace.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// The writing thread: entering the namespace, then the load.
    thread: Option<std::thread::JoinHandle<Result<Result<Written>>>>,
}

/// What a [`Writer`] saw.
#[derive(Debug, Default)]
pub struct Written {
    /// The numbers of the INSERTs the server acknowledged (OK packet under autocommit).
    pub acked: Vec<u64>,
    /// INSERTs or connections that failed.
    pub errors: u64,
    /// The longest time between two acknowledged INSERTs.
    pub longest_gap: Duration,
    /// When each acknowledgement came, since the writer started.
    pub acked_at: Vec<Duration>,
}

impl Writer {
    /// Starts writing through router `edge`'s read-write port.
    pub fn start(lab: &DbLab, edge: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let router = router_addr(edge);
        let thread = lab.client.thread(move || -> Result<Written> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(write_until(router, stopping))
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the load; what it saw.
    pub fn stop(mut self) -> Result<Written> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("writer already stopped")?;
        let written = thread.join().map_err(|_| anyhow::anyhow!("the writer panicked"))???;
        Ok(written)
    }

    /// The acknowledged INSERTs of `written` that `server`'s table lacks.
    pub fn lost_on(server: &MariaDb, written: &Written) -> Result<Vec<u64>> {
        let rows = server.sql("SELECT v FROM appdb.t WHERE v LIKE 'w%'")?;
        let present: std::collections::HashSet<&str> = rows.lines().collect();
        Ok(written
            .acked
            .iter()
            .copied()
            .filter(|n| !present.contains(format!("w{n}").as_str()))
            .collect())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn write_until(router: Ipv4Addr, stop: Arc<AtomicBool>) -> Result<Written> {
    use mysql_async::prelude::Queryable;
    let (user, password) = mariadb::APP_USER;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(router.to_string())
        .tcp_port(MAIN.0)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    let started = Instant::now();
    let mut written = Written::default();
    let mut last_ok = Instant::now();
    let mut conn: Option<mysql_async::Conn> = None;
    let mut n = 0u64;
    let limit = Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(limit, mysql_async::Conn::new(opts.clone())).await {
                Ok(Ok(c)) => conn.insert(c),
                _ => {
                    written.errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        n += 1;
        let insert = c.exec_drop("INSERT INTO appdb.t (v) VALUES (?)", (format!("w{n}"),));
        match tokio::time::timeout(limit, insert).await {
            Ok(Ok(())) => {
                written.acked.push(n);
                written.acked_at.push(started.elapsed());
                written.longest_gap = written.longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
            _ => {
                written.errors += 1;
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(written)
}

impl DbLab {
    /// Waits until exactly one router acts for `main`'s failover; which.
    pub fn acting_edge(&self) -> Result<usize> {
        let mut acting = Vec::new();
        crate::wait_until(NOTICE, "one edge to act for the failover", || {
            acting = (0..self.routers.len())
                .filter(|&i| self.failover_of(i).is_ok_and(|f| f.is_some_and(|f| f.acting)))
                .collect();
            acting.len() == 1
        })
        .with_context(|| format!("acting: {acting:?}\n{}", self.logs()))?;
        Ok(acting[0])
    }

    /// Waits until writes through `edge` reach a server other than `not`; its index.
    pub fn new_primary(&self, edge: usize, not: usize, limit: Duration) -> Result<usize> {
        let mut id = String::new();
        crate::wait_until(limit, "writes to reach a new primary", || {
            id = match self.query_via(edge, MAIN.0, "SELECT @@server_id") {
                Ok((true, id)) => id,
                _ => String::new(),
            };
            !id.is_empty() && id != (not + 1).to_string()
        })
        .with_context(|| self.logs())?;
        Ok(id.parse::<usize>()? - 1)
    }

    /// Waits until server `i` replicates from server `source` with its receiver connected.
    pub fn wait_replicating(&self, i: usize, source: usize, limit: Duration) -> Result<()> {
        let mut last = Default::default();
        crate::wait_until(limit, "a replica to follow the new primary", || {
            last = self.servers[i].replica_status().unwrap_or_default();
            last.get("Master_Host").map(String::as_str) == Some(server_addr(source).to_string().as_str())
                && last.get("Slave_IO_Running").map(String::as_str) == Some("Yes")
        })
        .with_context(|| format!("db{} replication: {last:?}\n{}", i + 1, self.logs()))
    }

    /// Router `i`'s failover status of `main`.
    pub fn failover_of(&self, i: usize) -> Result<Option<foobar::mysql::failover::FailoverStatus>> {
        let status = self.status_of(i)?;
        let main = status.databases.into_iter().next().context("no database")?;
        Ok(main.failover)
    }

    /// Runs `foobar db switchover main` on router `i` (`to`: a server's address); whether it
    /// succeeded, and what it printed.
    pub fn switchover(&self, i: usize, to: Option<Ipv4Addr>) -> Result<(bool, String)> {
        let socket = self.socket_of(i).display().to_string();
        let bin = crate::foobar_bin().display().to_string();
        let target = to.map(|a| format!("{a}:3306"));
        let mut args = vec![bin.as_str(), "db", "switchover", "main", "--socket", &socket];
        if let Some(t) = &target {
            args.extend(["--to", t]);
        }
        self.routers[i].ns.exec_any(&args)
    }
}
