//! `cargo xtask bench xdp|failover|db-failover|web|mysql|pktgen|scaleout`: each benchmark measures foobar against a
//! baseline measured the same way in the same run, and writes `$FOOBAR_BENCH_OUT/NAME.json`
//! (xtask renders it into docs/benchmarks.md). Peers are named with the versions their own
//! binaries report.

mod dbfailover;
mod failover;
mod mysql;
mod pktgen;
mod scaleout;
mod web;
mod xdp;

use anyhow::{bail, Context, Result};
use std::{path::PathBuf, process::Command};

/// One row of the results.
pub struct Row {
    name: String,
    value: f64,
    unit: &'static str,
    baseline: String,
    baseline_value: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        if self.baseline_value > 0.0 {
            self.value / self.baseline_value
        } else {
            0.0
        }
    }
}

fn main() -> Result<()> {
    let name = std::env::args().nth(1).unwrap_or_default();
    let rows = match name.as_str() {
        "xdp" => xdp::run()?,
        "failover" => failover::run()?,
        "db-failover" => dbfailover::run()?,
        "web" => web::run()?,
        "mysql" => mysql::run()?,
        "pktgen" => pktgen::run()?,
        "scaleout" => scaleout::run()?,
        _ => bail!("usage: foobar-bench xdp|failover|db-failover|web|mysql|pktgen|scaleout"),
    };
    let out_dir = PathBuf::from(std::env::var("FOOBAR_BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    write(&out_dir, &name, &rows)
}

/// Writes `NAME.json` into `out_dir` and prints the rows.
fn write(out_dir: &std::path::Path, name: &str, rows: &[Row]) -> Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "value": r.value, "unit": r.unit,
                "baseline": r.baseline, "baseline_value": r.baseline_value, "ratio": r.ratio(),
            })
        })
        .collect();
    for r in rows {
        println!(
            "{:<48} {:>14.1} {:<14} {:>14.1}  {:>6.2}  {}",
            r.name,
            r.value,
            r.unit,
            r.baseline_value,
            r.ratio(),
            r.baseline
        );
    }
    let path = out_dir.join(format!("{name}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({"bench": name, "results": results}))?,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A peer program's name and version as its binary reports it (`nginx -v`: `nginx/1.22.1`;
/// `haproxy -v`: `HAProxy version 2.6.12-1+deb12u2 ...`; `keepalived --version`:
/// `Keepalived v2.2.7 ...`): "NAME X.Y.Z".
pub fn peer_version(name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let version = version_in(&text).with_context(|| format!("no version in {args:?}: {text}"))?;
    Ok(format!("{name} {version}"))
}

/// The first dotted version number in `text`, up to three parts.
fn version_in(text: &str) -> Option<String> {
    let word = text
        .split(|c: char| c.is_whitespace() || c == '/')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| w.split('.').count() >= 2 && w.split('.').all(|p| p.starts_with(|c: char| c.is_ascii_digit())))?;
    Some(
        word.split('.')
            .take(3)
            .map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>())
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_as_the_peers_print_them() {
        for (text, version) in [
            ("nginx version: nginx/1.22.1\n", "1.22.1"),
            (
                "HAProxy version 2.6.12-1+deb12u2 2025/06/04 - https://haproxy.org/\n",
                "2.6.12",
            ),
            ("Keepalived v2.2.7 (01/16,2022)\n", "2.2.7"),
            (
                "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu\n",
                "10.11.19",
            ),
        ] {
            assert_eq!(super::version_in(text).as_deref(), Some(version), "{text}");
        }
    }
}
