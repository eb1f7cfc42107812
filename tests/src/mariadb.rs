//! Real MariaDB servers (Debian's mariadb-server) inside namespaces: a data directory made by
//! `mariadb-install-db`, `mariadbd` with binary logs and GTIDs, and SQL run as root over the
//! server's Unix socket (which lives in the file system, so the host reaches every namespace).

use crate::{ChildGuard, Netns};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// Password of the lab's replication user `repl`.
pub const REPL_PASSWORD: &str = "repl-secret";
/// The application's user and password (all rights on `appdb`).
pub const APP_USER: (&str, &str) = ("app", "app-secret");
/// The router's monitor user and password.
pub const MONITOR_USER: (&str, &str) = ("monitor", "monitor-secret");

/// One MariaDB server.
pub struct MariaDb {
    /// Its address (it listens on port 3306).
    pub addr: String,
    /// `@@server_id`.
    pub server_id: u32,
    dir: PathBuf,
    /// Started with `--read-only` (a replica's setting survives restarts).
    read_only: bool,
    /// How it replicates.
    mode: Mode,
    process: Option<ChildGuard>,
}

/// How a server replicates.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Binary log with GTIDs; `semi_sync`: semi-synchronous replication enabled at start.
    Replication {
        /// Semi-synchronous replication.
        semi_sync: bool,
    },
    /// A Galera member (runs as the `mysql` user, whom rsync state transfers need).
    Galera {
        /// `gcomm://` addresses of every member.
        peers: String,
        /// The next start bootstraps a new cluster (only the very first).
        bootstrap: bool,
    },
}

impl MariaDb {
    /// Copies the data directory `template` (made by [`install`]) under `dir`, makes a TLS
    /// certificate, and starts the server in `ns` on `addr:3306`.
    pub fn start(ns: &Netns, dir: &Path, addr: &str, server_id: u32, template: &Path, mode: Mode) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        crate::sh(&["cp", "-a", &template.display().to_string(), &data.display().to_string()])?;
        // TLS for clients that ask (the router passes it through untouched).
        crate::weblab::self_signed(dir, "tls", "ec", &[addr])?;
        let mut server = Self {
            addr: addr.to_owned(),
            server_id,
            dir: dir.to_owned(),
            read_only: false,
            mode,
            process: None,
        };
        server.run(ns)?;
        Ok(server)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Starts `mariadbd` (again) and waits until it answers.
    pub fn run(&mut self, ns: &Netns) -> Result<()> {
        let log = self.dir.join("mariadbd.log");
        let args = [
            "mariadbd".to_string(),
            "--no-defaults".into(),
            format!("--datadir={}", self.data_dir().display()),
            format!("--socket={}", self.socket().display()),
            format!("--pid-file={}", self.dir.join("mysqld.pid").display()),
            format!("--tmpdir={}", self.dir.display()),
            format!("--bind-address={}", self.addr),
            "--port=3306".into(),
            format!("--server-id={}", self.server_id),
            "--binlog-format=ROW".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=32M".into(),
            "--innodb-log-file-size=8M".into(),
            "--performance-schema=0".into(),
            "--max-connect-errors=10".into(),
            format!("--read-only={}", u8::from(self.read_only)),
            format!("--ssl-cert={}", self.dir.join("tls.crt").display()),
            format!("--ssl-key={}", self.dir.join("tls.key").display()),
        ];
        let mut args = args.to_vec();
        match &mut self.mode {
            Mode::Replication { semi_sync } => args.extend([
                "--user=root".into(),
                format!("--log-bin={}", self.dir.join("data").join("binlog").display()),
                "--log-slave-updates".into(),
                "--gtid-strict-mode=1".into(),
                // The primary side on the primary alone: a replica with it on waits for
                // acknowledgements when it applies (foobar moves it on failover).
                format!(
                    "--rpl-semi-sync-master-enabled={}",
                    u8::from(*semi_sync && !self.read_only)
                ),
                format!("--rpl-semi-sync-slave-enabled={}", u8::from(*semi_sync)),
            ]),
            Mode::Galera { peers, bootstrap } => {
                crate::sh(&["chown", "-R", "mysql:mysql", &self.dir.display().to_string()])?;
                args.extend([
                    "--user=mysql".into(),
                    "--innodb-autoinc-lock-mode=2".into(),
                    "--wsrep-on=ON".into(),
                    "--wsrep-provider=/usr/lib/galera/libgalera_smm.so".into(),
                    "--wsrep-cluster-name=foobar-test".into(),
                    format!("--wsrep-node-address={}", self.addr),
                    format!("--wsrep-cluster-address=gcomm://{peers}"),
                    "--wsrep-sst-method=rsync".into(),
                    // A member cut off is out of the primary component in seconds.
                    "--wsrep-provider-options=evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT3S;evs.inactive_check_period=PT0.5S;evs.install_timeout=PT3S".into(),
                ]);
                if std::mem::take(bootstrap) {
                    args.push("--wsrep-new-cluster".into());
                }
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = ns.spawn_system(&args, &log)?;
        let socket = self.socket();
        let answered = crate::wait_until(Duration::from_secs(20), "mariadbd to answer", || {
            Command::new("mariadb-admin")
                .arg(format!("--socket={}", socket.display()))
                .arg("ping")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if let Err(e) = answered {
            bail!("{e}: {}", process.log_text());
        }
        self.process = Some(process);
        Ok(())
    }

    /// Kills the server at once (SIGKILL), as a crash.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(process) = self.process.take() {
            process.signal(nix::sys::signal::Signal::SIGKILL)?;
            drop(process);
        }
        Ok(())
    }

    /// Runs SQL as root over the Unix socket; the rows as tab-separated lines.
    pub fn sql(&self, statements: &str) -> Result<String> {
        self.sql_as(&["-N", "-B"], statements)
    }

    /// Runs SQL as root with the client options `format`; its output.
    fn sql_as(&self, format: &[&str], statements: &str) -> Result<String> {
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("-uroot")
            .args(format)
            .args(["-e", statements])
            .output()
            .context("running mariadb")?;
        if !out.status.success() {
            bail!(
                "{} on server {}: {}",
                statements,
                self.server_id,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Its replication status (`SHOW SLAVE STATUS`) by column; empty when it replicates from
    /// nobody.
    pub fn replica_status(&self) -> Result<std::collections::HashMap<String, String>> {
        let text = self.sql_as(&["--vertical"], "SHOW SLAVE STATUS")?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// Waits until this Galera member is synced with its cluster.
    pub fn wait_synced(&self) -> Result<()> {
        let mut last = String::new();
        crate::wait_until(Duration::from_secs(60), "a Galera member to be synced", || {
            last = self
                .sql("SHOW STATUS LIKE 'wsrep_local_state_comment'")
                .unwrap_or_else(|e| e.to_string());
            last.ends_with("Synced")
        })
        .with_context(|| format!("db{}: {last}", self.server_id))
    }

    /// Makes this server the primary of a fresh cluster: the replication, monitor and
    /// application users and the `appdb.t` table.
    pub fn init_primary(&self) -> Result<()> {
        let (app, app_pw) = APP_USER;
        let (mon, mon_pw) = MONITOR_USER;
        self.sql(&format!(
            "CREATE USER 'repl'@'%' IDENTIFIED BY '{REPL_PASSWORD}';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
             CREATE USER '{mon}'@'%' IDENTIFIED BY '{mon_pw}';
             GRANT SLAVE MONITOR, BINLOG MONITOR, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, REPLICATION MASTER ADMIN, RELOAD ON *.* TO '{mon}'@'%';
             CREATE DATABASE appdb;
             CREATE TABLE appdb.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64));
             CREATE TABLE appdb.visits (id INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
             CREATE USER '{app}'@'%' IDENTIFIED BY '{app_pw}';
             GRANT ALL ON appdb.* TO '{app}'@'%';"
        ))
        .map(|_| ())
    }

    /// Makes this server a read-only GTID replica of `primary` (read-only after restarts too).
    pub fn replicate_from(&mut self, primary: &MariaDb) -> Result<()> {
        self.read_only = true;
        self.sql(&format!(
            "SET GLOBAL read_only = 1; SET GLOBAL rpl_semi_sync_master_enabled = 0;
             CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = 3306, MASTER_USER = 'repl',
               MASTER_PASSWORD = '{REPL_PASSWORD}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;
             START SLAVE;",
            primary.addr
        ))
        .map(|_| ())
    }
}

/// `mariadb-install-db` into `data`, with root reachable over the socket without a password.
pub fn install(data: &Path) -> Result<()> {
    // Its own temporary directory: bootstraps running at once in /tmp trip over each other.
    let tmp = data.with_extension("tmp");
    std::fs::create_dir_all(&tmp)?;
    crate::sh(&[
        "mariadb-install-db",
        "--no-defaults",
        &format!("--datadir={}", data.display()),
        &format!("--tmpdir={}", tmp.display()),
        "--user=root",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ])
    .map(|_| ())
}

/// Starts a primary in `namespaces[0]` and GTID replicas of it in the others (server ids 1, 2,
/// ...; data directories under `dir`), with the lab's users, and waits until the replicas
/// have copied the primary.
pub fn cluster(dir: &Path, namespaces: &[(&Netns, String)], semi_sync: bool) -> Result<Vec<MariaDb>> {
    let template = dir.join("mariadb-template");
    install(&template)?;
    let mut servers = Vec::new();
    for (i, (ns, addr)) in namespaces.iter().enumerate() {
        let data = dir.join(format!("db{}", i + 1));
        let mode = Mode::Replication { semi_sync };
        servers.push(MariaDb::start(ns, &data, addr, i as u32 + 1, &template, mode)?);
    }
    let (primary, replicas) = servers.split_first_mut().context("a cluster needs a server")?;
    primary.init_primary()?;
    for replica in replicas.iter_mut() {
        replica.replicate_from(primary)?;
        crate::wait_until(Duration::from_secs(20), "a replica to copy the primary", || {
            replica
                .sql("SELECT COUNT(*) FROM mysql.user WHERE user = 'app'")
                .is_ok_and(|n| n == "1")
        })?;
    }
    Ok(servers)
}

/// Starts a Galera cluster: the first member bootstraps it with the lab's users, the others
/// join by rsync state transfer; waits until every member is synced.
pub fn galera_cluster(dir: &Path, namespaces: &[(&Netns, String)]) -> Result<Vec<MariaDb>> {
    let template = dir.join("mariadb-template");
    install(&template)?;
    let peers: Vec<&str> = namespaces.iter().map(|(_, a)| a.as_str()).collect();
    let mut servers: Vec<MariaDb> = Vec::new();
    for (i, (ns, addr)) in namespaces.iter().enumerate() {
        let data = dir.join(format!("db{}", i + 1));
        let mode = Mode::Galera {
            peers: peers.join(","),
            bootstrap: i == 0,
        };
        let server = MariaDb::start(ns, &data, addr, i as u32 + 1, &template, mode)?;
        if i == 0 {
            server.init_primary()?;
        }
        server.wait_synced()?;
        servers.push(server);
    }
    Ok(servers)
}

/// Writes a monitor credentials file for [`MONITOR_USER`] with `password`, file mode `mode`.
pub fn write_credentials(path: &Path, password: &str, mode: u32) -> Result<()> {
    write_login(path, MONITOR_USER.0, password, mode)
}

/// Writes a credentials file (`user`, `password`) with file mode `mode`.
pub fn write_login(path: &Path, user: &str, password: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("user = \"{user}\"\npassword = \"{password}\"\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A `[[database]]` section routing `address`'s `ports` (read-write, read-only) to `servers`
/// (port 3306 each), checked every 200 ms (fall 2).
pub fn database_section(
    name: &str,
    address: &str,
    (rw, ro): (u16, u16),
    servers: &[String],
    credentials: &Path,
    when_no_replica: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}:3306\"")).collect();
    format!(
        r#"
[[database]]
name = "{name}"
address = "{address}"
read_write_port = {rw}
read_only_port = {ro}
servers = [{servers}]
credentials = "{credentials}"
max_lag_s = 5
when_no_replica = "{when_no_replica}"
drain_timeout_ms = 1000
handshake_timeout_ms = 1000
monitor = {{ interval_ms = 200, timeout_ms = 1000, rise = 1, fall = 2 }}
"#,
        servers = servers.join(", "),
        credentials = credentials.display()
    )
}

/// Runs `sql` with the `mariadb` client as the application user against `host:port` from
/// inside `ns` (`extra` adds client options, e.g. `--ssl`): whether it succeeded, and its rows
/// (tab-separated) or its error message.
pub fn app_query(ns: &Netns, host: &str, port: u16, sql: &str, extra: &[&str]) -> Result<(bool, String)> {
    let (user, password) = APP_USER;
    let password = format!("-p{password}");
    let port = port.to_string();
    let mut args = vec![
        "mariadb",
        "-h",
        host,
        "-P",
        &port,
        "-u",
        user,
        &password,
        "--connect-timeout=5",
        "-N",
        "-B",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-e", sql]);
    let (ok, out) = ns.exec_any(&args)?;
    Ok((ok, out.trim().to_owned()))
}
