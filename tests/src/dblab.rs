//! The database lab: a MariaDB primary (`db1`, server id 1) and a GTID replica (`db2`,
//! server id 2), each in its own namespace, a router namespace running `foobar run` with two
//! `[[database]]` clusters over them (`main` on 3306/3307 falls back to the primary for reads,
//! `strict` on 3316/3317 refuses), and a client namespace with the `mariadb` client, all on
//! one bridge.

use crate::{
    lab::wire,
    mariadb::{self, MariaDb, MONITOR_USER},
    ChildGuard, Netns, PinDir, Scratch,
};
use anyhow::{Context, Result};
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

/// The router's address (both clusters' listeners).
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

/// A running database lab.
pub struct DbLab {
    /// `foobar run` in the router namespace (None until started or once stopped).
    pub router: Option<ChildGuard>,
    /// `db1` (the primary at first) and `db2` (its replica).
    pub servers: Vec<MariaDb>,
    /// The namespaces of the servers, in order.
    pub server_ns: Vec<Netns>,
    /// The router's namespace.
    pub router_ns: Netns,
    /// The client's namespace.
    pub client: Netns,
    _switch: Netns,
    pins: PinDir,
    /// Data directories, configuration and logs.
    pub scratch: Scratch,
}

impl DbLab {
    /// Builds the network, starts the primary and the replica with replication running, and
    /// writes the router's configuration and credentials (the router is not started).
    pub fn build(tag: &str) -> Result<Self> {
        let scratch = Scratch::new(&format!("db-{tag}"))?;
        let switch = Netns::new(&format!("db{tag}-sw"))?;
        let client = Netns::new(&format!("db{tag}-cl"))?;
        let router_ns = Netns::new(&format!("db{tag}-rt"))?;
        let server_ns = vec![Netns::new(&format!("db{tag}-1"))?, Netns::new(&format!("db{tag}-2"))?];
        wire(
            &switch,
            &[
                (&client, "cl".into(), CLIENT),
                (&router_ns, "rt".into(), ROUTER),
                (&server_ns[0], "db1".into(), server_addr(0)),
                (&server_ns[1], "db2".into(), server_addr(1)),
            ],
        )?;
        let hosts: Vec<(&Netns, String)> = server_ns
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns, server_addr(i).to_string()))
            .collect();
        let servers = mariadb::cluster(&scratch.path, &hosts)?;
        let lab = Self {
            router: None,
            servers,
            server_ns,
            router_ns,
            client,
            _switch: switch,
            pins: PinDir::new(&format!("db{tag}")),
            scratch,
        };
        lab.write_credentials(MONITOR_USER.1, 0o600)?;
        std::fs::write(lab.config(), lab.config_text())?;
        Ok(lab)
    }

    /// [`DbLab::build`], then starts the router and waits until it routes writes.
    pub fn start(tag: &str) -> Result<Self> {
        let mut lab = Self::build(tag)?;
        lab.start_router()?;
        lab.wait_for(MAIN.0, "SELECT @@server_id", "1")?;
        Ok(lab)
    }

    /// The router's configuration file.
    pub fn config(&self) -> PathBuf {
        self.scratch.file("foobar.toml")
    }

    /// The monitor credentials file.
    pub fn credentials(&self) -> PathBuf {
        self.scratch.file("monitor.toml")
    }

    /// Writes the monitor credentials with `password`, file mode `mode`.
    pub fn write_credentials(&self, password: &str, mode: u32) -> Result<()> {
        mariadb::write_credentials(&self.credentials(), password, mode)
    }

    fn config_text(&self) -> String {
        let servers = [server_addr(0).to_string(), server_addr(1).to_string()];
        let router = ROUTER.to_string();
        let credentials = self.credentials();
        format!(
            "[node]\nname = \"router\"\ninterfaces = [\"eth0\"]\npin_dir = \"{pins}\"\ncontrol_socket = \"{socket}\"\n{main}{strict}",
            pins = self.pins.path.display(),
            socket = self.socket().display(),
            main = mariadb::database_section("main", &router, MAIN, &servers, &credentials, "primary"),
            strict = mariadb::database_section("strict", &router, STRICT, &servers, &credentials, "refuse"),
        )
    }

    /// The router's control socket.
    pub fn socket(&self) -> PathBuf {
        self.scratch.file("foobar.sock")
    }

    /// Starts `foobar run` in the router namespace.
    pub fn start_router(&mut self) -> Result<()> {
        let log = self.scratch.file("foobar.log");
        self.router = Some(crate::start_foobar(&self.router_ns, &self.config(), &log)?);
        Ok(())
    }

    /// The router's log so far.
    pub fn router_log(&self) -> String {
        std::fs::read_to_string(self.scratch.file("foobar.log")).unwrap_or_default()
    }

    /// Runs SQL as the application user through the router's `port` from the client
    /// namespace: whether it succeeded, and its rows (or error message).
    pub fn query(&self, port: u16, sql: &str) -> Result<(bool, String)> {
        mariadb::app_query(&self.client, &ROUTER.to_string(), port, sql, &[])
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

    /// The router's status over its control socket.
    pub fn status(&self) -> Result<foobar::ctl::NodeStatus> {
        foobar::ctl::query(&self.socket())
    }

    /// `foobar status` of the router, as text.
    pub fn status_text(&self) -> Result<String> {
        let socket = self.socket().display().to_string();
        self.router_ns
            .exec_direct(&crate::foobar_bin(), &["status", "--socket", &socket])
    }
}
