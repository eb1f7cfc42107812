//! docs/benchmarks.md's result tables come from the JSON the benchmarks write: a run of
//! `cargo xtask bench NAME` keeps its results as docs/bench/NAME.json and renders them into the
//! block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. Nothing in those blocks is
//! typed by hand; a test keeps them in step with the JSON.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The results page.
const PAGE: &str = "docs/benchmarks.md";

/// Keeps `target/bench/NAME.json` as `docs/bench/NAME.json` and renders every block of the page.
pub fn publish(root: &Path, name: &str) -> Result<()> {
    let from = root.join("target/bench").join(format!("{name}.json"));
    let to_dir = root.join("docs/bench");
    std::fs::create_dir_all(&to_dir)?;
    std::fs::copy(&from, to_dir.join(format!("{name}.json"))).with_context(|| format!("copying {}", from.display()))?;
    refresh(root)
}

/// Renders every block of the page from docs/bench/*.json.
pub fn refresh(root: &Path) -> Result<()> {
    let path = root.join(PAGE);
    let page = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rendered = render_page(&page, |name| {
        let json = std::fs::read_to_string(root.join("docs/bench").join(format!("{name}.json"))).ok();
        if json.is_none() {
            eprintln!(
                "xtask: no docs/bench/{name}.json yet: its block stays as it is (run `cargo xtask bench {name}`)"
            );
        }
        json
    })?;
    if rendered != page {
        std::fs::write(&path, rendered)?;
        eprintln!("xtask: {PAGE} updated from docs/bench");
    }
    Ok(())
}

/// The page with every `<!-- bench:NAME -->` block replaced by NAME's results table; a block
/// whose JSON `json` cannot give stays as it is.
fn render_page(page: &str, json: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = page;
    while let Some(start) = rest.find("<!-- bench:") {
        let open_end = start + rest[start..].find("-->").context("unclosed block marker")? + 3;
        let name = rest[start + "<!-- bench:".len()..open_end - 3].trim().to_string();
        let close = format!("<!-- /bench:{name} -->");
        let Some(close_at) = rest[open_end..].find(&close).map(|i| open_end + i) else {
            bail!("{PAGE}: block {name} has no {close}");
        };
        match json(&name) {
            Some(text) => {
                out.push_str(&rest[..open_end]);
                out.push('\n');
                out.push_str(&table(&text).with_context(|| format!("docs/bench/{name}.json"))?);
                out.push_str(&close);
            }
            None => out.push_str(&rest[..close_at + close.len()]),
        }
        rest = &rest[close_at + close.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A benchmark's results as a Markdown table.
fn table(json: &str) -> Result<String> {
    let doc: serde_json::Value = serde_json::from_str(json)?;
    let mut out = String::from(
        "| result | value | unit | baseline | baseline value | ratio |\n| --- | ---: | --- | --- | ---: | ---: |\n",
    );
    for r in doc["results"].as_array().context("no results")? {
        let number = |key: &str| r[key].as_f64().with_context(|| format!("{key} missing"));
        let text = |key: &str| r[key].as_str().with_context(|| format!("{key} missing"));
        out += &format!(
            "| {} | {:.1} | {} | {} | {:.1} | {:.2} |\n",
            text("name")?,
            number("value")?,
            text("unit")?,
            text("baseline")?,
            number("baseline_value")?,
            number("ratio")?
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_rendered_from_their_json() {
        let json = r#"{"bench":"x","results":[{"name":"a","value":2.0,"unit":"ns","baseline":"b","baseline_value":1.0,"ratio":2.0}]}"#;
        let page = "intro\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nend\n";
        let out = render_page(page, |_| Some(json.to_string())).expect("renders");
        assert_eq!(
            out,
            "intro\n<!-- bench:x -->\n| result | value | unit | baseline | baseline value | ratio |\n| --- | ---: | --- | --- | ---: | ---: |\n| a | 2.0 | ns | b | 1.0 | 2.00 |\n<!-- /bench:x -->\nend\n"
        );
        assert_eq!(
            render_page(page, |_| None).expect("renders"),
            page,
            "a block without its JSON stays"
        );
    }

    #[test]
    fn the_benchmarks_page_is_in_step_with_docs_bench() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let page = std::fs::read_to_string(root.join(PAGE)).expect("the page");
        assert!(page.contains("<!-- bench:"), "the page has no generated block");
        let rendered = render_page(&page, |name| {
            let json = std::fs::read_to_string(root.join("docs/bench").join(format!("{name}.json")));
            assert!(json.is_ok(), "block {name} has no docs/bench/{name}.json");
            json.ok()
        })
        .expect("renders");
        assert!(
            rendered == page,
            "{PAGE} differs from docs/bench/*.json: run `cargo xtask bench-docs` (tables are never edited by hand)"
        );
    }
}
