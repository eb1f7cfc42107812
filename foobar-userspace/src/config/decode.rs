//! Decoding the file into the typed tree with every decoding problem found in one run: serde
//! stops at the first wrong type or unknown key, so each problem is recorded with the key's
//! path and value, then the value is replaced by a placeholder of the expected type (or the
//! entry blanked out) — padded with spaces, so every later position stays where it is — and
//! decoding starts again. Syntax errors, and a required key that is missing, end the search.

use super::{file::Config, Range};
use toml_edit::{ImDocument, Item, TableLike, Value};

/// At most this many decoding problems are reported from one file.
const MAX_PROBLEMS: usize = 64;

/// What decoding found: the tree (when one could be built), the problems, and the entries that
/// were patched to get on, which later checks should not complain about.
pub struct Decoded {
    /// The typed tree of what was left once every problem was patched.
    pub config: Option<Config>,
    /// Every decoding problem, with its place.
    pub problems: Vec<(Range<usize>, String)>,
    /// The entries patched (placeholder or blanked): their byte ranges and key names.
    pub patched: Vec<(Range<usize>, String)>,
}

impl Decoded {
    /// Whether a later problem at `span` naming things in `reason` is about a patched entry.
    pub fn about_patched(&self, span: &Range<usize>, reason: &str) -> bool {
        self.patched
            .iter()
            .any(|(range, name)| range.contains(&span.start) || reason.contains(name.as_str()))
    }
}

/// Decodes `text`, collecting every problem.
pub fn decode(text: &str) -> Decoded {
    let mut work = text.to_string();
    let mut out = Decoded {
        config: None,
        problems: Vec::new(),
        patched: Vec::new(),
    };
    while out.problems.len() < MAX_PROBLEMS {
        let e = match toml::from_str::<Config>(&work) {
            Ok(config) => {
                out.config = Some(config);
                break;
            }
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let reason = plain(e.message());
        let entry = (!reason.starts_with("missing field"))
            .then(|| ImDocument::parse(work.clone()).ok())
            .flatten()
            .and_then(|doc| locate(doc.as_table(), "", span.start));
        let Some(entry) = entry else {
            out.problems.push((span, reason));
            break;
        };
        let value = text[entry.value.clone()].trim();
        let value = if value.chars().count() > 60 {
            format!("{}…", value.chars().take(60).collect::<String>())
        } else {
            value.to_string()
        };
        out.problems.push((span, format!("{} = {value}: {reason}", entry.path)));
        let name = entry.path.rsplit(['.', ']']).next().unwrap_or_default().to_string();
        // A wrong value gets a placeholder of the expected type where one fits in its place (a
        // required key stays present); an unknown key goes. Inside an inline table an entry
        // cannot be blanked without breaking the syntax.
        let placeholder = placeholder(&reason).filter(|p| p.len() <= entry.value.len());
        match placeholder {
            Some(p) if !reason.starts_with("unknown field") => {
                let pad = " ".repeat(entry.value.len() - p.len());
                work.replace_range(entry.value.clone(), &format!("{p}{pad}"));
                out.patched.push((entry.value, name));
            }
            _ if entry.inline => break,
            _ => {
                blank(&mut work, entry.whole.clone());
                out.patched.push((entry.whole, name));
            }
        }
    }
    out
}

/// A value of the type `reason` says was expected.
fn placeholder(reason: &str) -> Option<String> {
    let expected = reason.rsplit("expected ").next()?;
    if let Some(variants) = expected.strip_prefix("one of ") {
        // `unknown variant `x`, expected one of `tcp`, `udp``: the first variant.
        let first = variants.split('`').nth(1)?;
        return Some(format!("\"{first}\""));
    }
    let value = if expected.starts_with("an integer") || expected.starts_with("a non-negative integer") {
        "0"
    } else if expected.starts_with("an IPv4 or IPv6 address") {
        "\"::\""
    } else if expected.starts_with("ADDRESS:PORT") {
        "\"[::]:0\""
    } else if expected.starts_with("a string") || expected.starts_with("a borrowed string") {
        "\"\""
    } else if expected.starts_with("a boolean") {
        "false"
    } else if expected.starts_with("a sequence") {
        "[]"
    } else {
        return None;
    };
    Some(value.to_string())
}

/// One `key = value` entry of the file.
struct Entry {
    /// Its path, `service[1].backend[0].address`.
    path: String,
    /// From the key to the end of the value.
    whole: Range<usize>,
    /// The value.
    value: Range<usize>,
    /// Inside an inline table.
    inline: bool,
}

/// The innermost `key = value` entry of `table` (at `prefix`) that contains byte `at`.
fn locate(table: &dyn TableLike, prefix: &str, at: usize) -> Option<Entry> {
    for (name, item) in table.iter() {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        match item {
            Item::Table(t) => {
                if let Some(e) = locate(t, &path, at) {
                    return Some(e);
                }
            }
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    if let Some(e) = locate(t, &format!("{path}[{i}]"), at) {
                        return Some(e);
                    }
                }
            }
            Item::Value(v) => {
                let (Some(k), Some(v_span)) = (key_span, v.span()) else {
                    continue;
                };
                if !(k.start..v_span.end).contains(&at) {
                    continue;
                }
                if let Value::InlineTable(t) = v {
                    if let Some(mut e) = locate(t, &path, at) {
                        e.inline = true;
                        return Some(e);
                    }
                }
                return Some(Entry {
                    path,
                    whole: k.start..v_span.end,
                    value: v_span,
                    inline: false,
                });
            }
            Item::None => {}
        }
    }
    None
}

/// Replaces `range` of `text` with spaces, byte for byte, keeping line breaks (and so every
/// position, whatever characters stood there).
fn blank(text: &mut String, range: Range<usize>) {
    let replaced: String = text[range.clone()]
        .chars()
        .map(|c| {
            if c == '\n' {
                "\n".to_string()
            } else {
                " ".repeat(c.len_utf8())
            }
        })
        .collect();
    text.replace_range(range, &replaced);
}

/// serde's wording, with the allowed range or format spelled out.
fn plain(message: &str) -> String {
    let mut out = message.trim().replace('\n', "; ");
    for (word, allowed) in [
        ("expected u8", "expected an integer 0..=255"),
        ("expected u16", "expected an integer 0..=65535"),
        ("expected u32", "expected an integer 0..=4294967295"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("invalid IP address syntax", "expected an IPv4 or IPv6 address"),
        (
            "invalid socket address syntax",
            "expected ADDRESS:PORT (an IPv6 address in brackets: [::1]:443)",
        ),
    ] {
        if out.contains(word) {
            out = out.replace(word, allowed);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::GOOD;

    #[test]
    fn every_wrong_type_and_unknown_key_in_one_run() {
        let bad = GOOD
            .replace("port = 443", "port = \"https\"")
            .replace("address = \"10.0.0.2\"", "address = \"10.0.0.300\"")
            .replace("weight = 50", "wieght = 50");
        let decoded = decode(&bad);
        let reasons: Vec<&str> = decoded.problems.iter().map(|(_, r)| r.as_str()).collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("service[0].port = \"https\": invalid type")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r
                    .starts_with("service[0].backend[0].address = \"10.0.0.300\": expected an IPv4 or IPv6 address")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("wieght")), "{reasons:?}");
        assert_eq!(decoded.problems.len(), 3, "{reasons:?}");
        assert!(decoded.config.is_some(), "the rest decodes");
    }

    #[test]
    fn blanking_keeps_every_position_whatever_the_characters() {
        let bad = GOOD.replace(
            "name = \"edge1\"",
            "name = \"edge1\"\n\"nöte\" = \"épée ✓\"\nvrid_typo = 1",
        );
        let decoded = decode(&bad);
        let reasons: Vec<&str> = decoded.problems.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].starts_with("node.nöte = \"épée ✓\": unknown field"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("node.vrid_typo = 1: unknown field"),
            "{reasons:?}"
        );
    }

    #[test]
    fn out_of_range_says_the_range() {
        let bad = format!("{GOOD}\n[[vrrp]]\nname = \"v\"\nvrid = 300\ninterface = \"eth0\"\npriority = 100\nvips = [\"192.0.2.1\"]\n");
        let decoded = decode(&bad);
        assert!(
            decoded
                .problems
                .iter()
                .any(|(_, r)| r.starts_with("vrrp[0].vrid = 300:") && r.contains("0..=255")),
            "{:?}",
            decoded.problems
        );
    }
}
