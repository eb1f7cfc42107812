//! `cargo xtask bench xdp|failover|web|mysql|pktgen`: each benchmark measures foobar against a baseline measured
//! the same way in the same run, and writes `$FOOBAR_BENCH_OUT/NAME.json` with the same table
//! as Markdown in `NAME.md`.

mod failover;
mod mysql;
mod pktgen;
mod web;
mod xdp;

use anyhow::{bail, Result};
use std::path::PathBuf;

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
        "web" => web::run()?,
        "mysql" => mysql::run()?,
        "pktgen" => pktgen::run()?,
        _ => bail!("usage: foobar-bench xdp|failover|web|mysql|pktgen"),
    };
    let out_dir = PathBuf::from(std::env::var("FOOBAR_BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    write(&out_dir, &name, &rows)
}

/// Writes `NAME.json` and `NAME.md` into `out_dir`.
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
    let mut table = String::from(
        "| result | value | unit | baseline | baseline value | ratio |\n| --- | ---: | --- | --- | ---: | ---: |\n",
    );
    for r in rows {
        table += &format!(
            "| {} | {:.1} | {} | {} | {:.1} | {:.2} |\n",
            r.name,
            r.value,
            r.unit,
            r.baseline,
            r.baseline_value,
            r.ratio()
        );
    }
    std::fs::write(out_dir.join(format!("{name}.md")), &table)?;
    let path = out_dir.join(format!("{name}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({"bench": name, "results": results}))?,
    )?;
    print!("{table}");
    println!("wrote {}", path.display());
    Ok(())
}
