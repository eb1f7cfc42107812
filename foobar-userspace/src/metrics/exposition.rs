//! The exposition formats: Prometheus text 0.0.4 and OpenMetrics 1.0.0, written from one list
//! of metric families. Every value is read at scrape time from where it lives (per-CPU maps,
//! the subsystems' counters, /proc), so families are built fresh for each scrape and encoded
//! here rather than kept in a registry of live metric objects.

use std::fmt::Write;

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; samples are named `NAME_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets with `_bucket{le}`, `_sum`, `_count`.
    Histogram,
}

/// One sample's value: a number, or a histogram.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A counter or gauge value.
    Number(f64),
    /// Cumulative (upper bound, count) pairs without +Inf, then the total count and sum.
    Histogram {
        /// Cumulative counts by upper bound.
        buckets: Vec<(f64, u64)>,
        /// Observations (the +Inf bucket).
        count: u64,
        /// Sum of the observations.
        sum: f64,
    },
}

/// A metric family: name (without `_total` for counters), help, kind and samples.
#[derive(Clone, Debug)]
pub struct Family {
    name: String,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, Value)>,
}

impl Family {
    /// An empty family.
    pub fn new(name: impl Into<String>, kind: Kind, help: &'static str) -> Self {
        Self {
            name: name.into(),
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample with these labels.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Self {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.samples.push((labels, Value::Number(value)));
        self
    }

    /// Adds a histogram sample with these labels.
    pub fn histogram(&mut self, labels: &[(&'static str, &str)], buckets: Vec<(f64, u64)>, count: u64, sum: f64) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.samples.push((labels, Value::Histogram { buckets, count, sum }));
    }

    /// The family with one sample and no labels.
    pub fn single(name: impl Into<String>, kind: Kind, help: &'static str, value: f64) -> Self {
        let mut f = Self::new(name, kind, help);
        f.sample(&[], value);
        f
    }
}

/// Which format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else Prometheus
    /// text (what Prometheus itself negotiates: it lists OpenMetrics first).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes the families (empty ones are left out).
pub fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let (kind, header_name, sample_name) = match (f.kind, format) {
            (Kind::Counter, Format::OpenMetrics) => ("counter", f.name.clone(), format!("{}_total", f.name)),
            (Kind::Counter, Format::Prometheus) => {
                ("counter", format!("{}_total", f.name), format!("{}_total", f.name))
            }
            (Kind::Gauge, _) => ("gauge", f.name.clone(), f.name.clone()),
            (Kind::Histogram, _) => ("histogram", f.name.clone(), f.name.clone()),
        };
        let _ = writeln!(out, "# HELP {header_name} {}", escape_help(f.help));
        let _ = writeln!(out, "# TYPE {header_name} {kind}");
        for (labels, value) in &f.samples {
            match value {
                Value::Number(v) => line(&mut out, &sample_name, labels, None, *v),
                Value::Histogram { buckets, count, sum } => {
                    let bucket = format!("{}_bucket", f.name);
                    for (le, n) in buckets {
                        line(&mut out, &bucket, labels, Some(number(*le)), *n as f64);
                    }
                    line(&mut out, &bucket, labels, Some("+Inf".into()), *count as f64);
                    line(&mut out, &format!("{}_count", f.name), labels, None, *count as f64);
                    line(&mut out, &format!("{}_sum", f.name), labels, None, *sum);
                }
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn line(out: &mut String, name: &str, labels: &[(&'static str, String)], le: Option<String>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.as_deref().map(|le| ("le", le)))
        {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A value as both formats accept it: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families() -> Vec<Family> {
        let mut requests = Family::new("foobar_web_requests", Kind::Counter, "Requests answered.");
        requests.sample(&[("site", "www \"x\""), ("class", "2xx")], 3.0);
        let mut latency = Family::new("foobar_web_request_duration_seconds", Kind::Histogram, "Latency.");
        latency.histogram(&[], vec![(0.005, 1), (0.01, 2)], 3, 0.0125);
        vec![
            requests,
            latency,
            Family::single("foobar_forwarding", Kind::Gauge, "Forwarding.", 1.0),
            Family::new("foobar_empty", Kind::Gauge, "Left out."),
        ]
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let text = encode(&families(), Format::Prometheus);
        assert!(text.contains("# TYPE foobar_web_requests_total counter\n"), "{text}");
        assert!(
            text.contains("foobar_web_requests_total{site=\"www \\\"x\\\"\",class=\"2xx\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("foobar_web_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("foobar_web_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("foobar_web_request_duration_seconds_sum 0.0125\n"));
        assert!(!text.contains("foobar_empty") && !text.contains("# EOF"));
    }

    #[test]
    fn openmetrics_names_families_without_total_and_ends_with_eof() {
        let text = encode(&families(), Format::OpenMetrics);
        assert!(
            text.contains("# TYPE foobar_web_requests counter\nfoobar_web_requests_total{"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
