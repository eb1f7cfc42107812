//! Reading a node's metrics as a monitoring system does: fetched over HTTP with curl and parsed
//! by the reference parser (the Python `prometheus_client` library's Prometheus-text parser, or
//! its strict OpenMetrics parser; Debian's python3-prometheus-client).

use crate::Netns;
use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, Stdio},
};

/// One parsed sample.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The family's name as the parser reports it.
    pub family: String,
    /// counter, gauge, histogram, ...
    pub kind: String,
    /// The sample's own name (`..._total`, `..._bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

const PARSER: &str = r#"
import json, sys
text = sys.stdin.read()
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(text):
    for s in family.samples:
        print(json.dumps([family.name, family.type, s.name, s.labels, s.value]))
"#;

/// `GET url` from inside `ns`, asking for OpenMetrics or Prometheus text; the content type
/// and body.
pub fn fetch(ns: &Netns, url: &str, openmetrics: bool) -> Result<(String, String)> {
    let accept = if openmetrics {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    } else {
        "Accept: text/plain"
    };
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-H",
        accept,
        "-w",
        "\n%{content_type}",
        url,
    ])?;
    let (body, content_type) = out.rsplit_once('\n').context("no content type")?;
    Ok((content_type.to_owned(), body.to_owned()))
}

/// Parses an exposition with the reference parser; fails with the parser's complaint.
pub fn parse(text: &str, openmetrics: bool) -> Result<Vec<Sample>> {
    // Debian's python3, which python3-prometheus-client installs into.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER, if openmetrics { "openmetrics" } else { "prometheus" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3 (with prometheus_client)")?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the parser refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (family, kind, name, labels, value): (String, String, String, BTreeMap<String, String>, f64) =
                serde_json::from_str(line).with_context(|| format!("parser output {line}"))?;
            Ok(Sample {
                family,
                kind,
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
