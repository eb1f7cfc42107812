//! The SQL of replication control in each server flavor: MariaDB's (tested here against
//! MariaDB 10.11) and MySQL 8.0.23+'s (written from its manual, not tested here: no MySQL
//! package in the archive this project installs from).

use super::{
    gtid::Gtids,
    monitor::{Credentials, Flavor},
};
use std::{net::SocketAddr, time::Duration};

impl Flavor {
    /// Makes the server refuse writes from everyone but replication (MySQL's
    /// `super_read_only` also stops users with `SUPER`).
    pub fn fence(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SET GLOBAL read_only = 1",
            Flavor::MySql => "SET GLOBAL super_read_only = 1",
        }
    }

    /// Makes the server writable (MySQL turns `super_read_only` off with it).
    pub fn unfence(self) -> &'static str {
        "SET GLOBAL read_only = 0"
    }

    /// Stops every replication thread.
    pub fn stop_replication(self) -> &'static str {
        match self {
            Flavor::MariaDb => "STOP ALL SLAVES",
            Flavor::MySql => "STOP REPLICA",
        }
    }

    /// Starts every replication thread.
    pub fn start_replication(self) -> &'static str {
        match self {
            Flavor::MariaDb => "START ALL SLAVES",
            Flavor::MySql => "START REPLICA",
        }
    }

    /// Forgets the replication configuration (a promoted replica).
    pub fn forget_replication(self) -> &'static str {
        match self {
            Flavor::MariaDb => "RESET SLAVE ALL",
            Flavor::MySql => "RESET REPLICA ALL",
        }
    }

    /// Waits up to `limit` until the server has applied `gtids`; answers 0 when it has.
    pub fn wait_for(self, gtids: &Gtids, limit: Duration) -> String {
        match self {
            Flavor::MariaDb => format!("SELECT MASTER_GTID_WAIT('{gtids}', {:.3})", limit.as_secs_f64()),
            Flavor::MySql => format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET('{gtids}', {})",
                limit.as_secs().max(1)
            ),
        }
    }

    /// What the server holds (MariaDB: its position in every domain).
    pub fn holds(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT @@global.gtid_current_pos",
            Flavor::MySql => "SELECT @@global.gtid_executed",
        }
    }

    /// What the server wrote to its binary log, which its replicas must reach.
    pub fn written(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SELECT @@global.gtid_binlog_pos",
            Flavor::MySql => "SELECT @@global.gtid_executed",
        }
    }

    /// Points the server at `source` by GTID: a replica from what it applied, an old primary
    /// (`rejoining`) from what it holds, its own writes included (MariaDB tells them apart;
    /// MySQL's auto-positioning sends what the set lacks either way). The login goes in as
    /// SQL string literals: [`super::failover::replication_credentials`] refuses what would
    /// need quoting.
    pub fn change_source(self, source: SocketAddr, login: &Credentials, rejoining: bool) -> String {
        let (host, port, user, password) = (source.ip(), source.port(), &login.user, login.password());
        match self {
            Flavor::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST = '{host}', MASTER_PORT = {port}, MASTER_USER = '{user}', MASTER_PASSWORD = '{password}', MASTER_USE_GTID = {}",
                if rejoining { "current_pos" } else { "slave_pos" }
            ),
            Flavor::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '{host}', SOURCE_PORT = {port}, SOURCE_USER = '{user}', SOURCE_PASSWORD = '{password}', SOURCE_AUTO_POSITION = 1"
            ),
        }
    }

    /// Semi-synchronous replication's primary side on (a primary) or off (a replica), and its
    /// replica side on.
    pub fn semi_sync(self, primary: bool) -> [String; 2] {
        let on = if primary { "ON" } else { "OFF" };
        let (source, replica) = match self {
            Flavor::MariaDb => ("rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled"),
            Flavor::MySql => ("rpl_semi_sync_source_enabled", "rpl_semi_sync_replica_enabled"),
        };
        [
            format!("SET GLOBAL {source} = {on}"),
            format!("SET GLOBAL {replica} = ON"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flavor_speaks_its_own_replication_sql() {
        let login: Credentials = toml::from_str("user = \"repl\"\npassword = \"pw\"").unwrap();
        let source: SocketAddr = "10.0.0.2:3306".parse().unwrap();
        assert_eq!(
            Flavor::MariaDb.change_source(source, &login, true),
            "CHANGE MASTER TO MASTER_HOST = '10.0.0.2', MASTER_PORT = 3306, MASTER_USER = 'repl', MASTER_PASSWORD = 'pw', MASTER_USE_GTID = current_pos"
        );
        assert!(Flavor::MariaDb
            .change_source(source, &login, false)
            .ends_with("MASTER_USE_GTID = slave_pos"));
        assert_eq!(
            Flavor::MySql.change_source(source, &login, false),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.2', SOURCE_PORT = 3306, SOURCE_USER = 'repl', SOURCE_PASSWORD = 'pw', SOURCE_AUTO_POSITION = 1"
        );
        let set: Gtids = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".parse().unwrap();
        assert_eq!(
            Flavor::MySql.wait_for(&set, Duration::from_millis(2500)),
            "SELECT WAIT_FOR_EXECUTED_GTID_SET('3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5', 2)"
        );
        let pos: Gtids = "0-1-7".parse().unwrap();
        assert_eq!(
            Flavor::MariaDb.wait_for(&pos, Duration::from_millis(2500)),
            "SELECT MASTER_GTID_WAIT('0-1-7', 2.500)"
        );
        assert_eq!(
            Flavor::MySql.semi_sync(false)[0],
            "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
        );
        assert_eq!(Flavor::MariaDb.fence(), "SET GLOBAL read_only = 1");
        assert_eq!(Flavor::MySql.fence(), "SET GLOBAL super_read_only = 1");
    }
}
