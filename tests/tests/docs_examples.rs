//! Documentation that runs: every TOML example of the configuration reference, put together as
//! the reference presents it (one configuration, section by section), passes `foobar
//! check-config`, and the credentials file example loads. An example that drifts from what
//! foobar accepts fails here.

use anyhow::{ensure, Context, Result};
use foobar_tests::{foobar_bin, Scratch};
use std::process::Command;

/// The ```toml blocks of a Markdown file, in order.
fn toml_blocks(markdown: &str) -> Vec<String> {
    fenced_blocks(markdown, "toml")
}

/// The blocks of a Markdown file fenced as ```LANGUAGE, in order (indented ones too).
fn fenced_blocks(markdown: &str, language: &str) -> Vec<String> {
    let opening = format!("```{language}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l == opening => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// `foobar check-config --skip-files FILE`: whether it passed, and what it said.
fn check_config(file: &std::path::Path) -> Result<(bool, String)> {
    let out = Command::new(foobar_bin())
        .args(["check-config", "--skip-files"])
        .arg(file)
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn the_configuration_reference_examples_pass_check_config() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference = std::fs::read_to_string(root.join("docs/configuration.md"))?;
    let blocks = toml_blocks(&reference);
    ensure!(blocks.len() >= 4, "found {} TOML examples", blocks.len());
    let scratch = Scratch::new("docs-examples")?;
    // Sections (with a table header) make up one configuration; a block without one is the
    // credentials file.
    let (sections, others): (Vec<&String>, Vec<&String>) = blocks
        .iter()
        .partition(|b| b.lines().any(|l| l.trim_start().starts_with('[')));
    // `[announce]` and `[[vrrp]]` are the two ways to own the VIPs: each is checked with the
    // rest, without the other's tables.
    let whole = sections.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n");
    let owned_by = |way: &str| -> String {
        let other = if way == "[announce]" { "[[vrrp]]" } else { "[announce]" };
        let mut skipping = false;
        let mut kept = String::new();
        for line in whole.lines() {
            if line.trim_start().starts_with('[') {
                skipping = line.trim() == other;
            }
            if !skipping {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept
    };
    let config = scratch.file("reference.toml");
    std::fs::write(&config, owned_by("[announce]"))?;
    let (passed, said) = check_config(&config)?;
    ensure!(
        passed,
        "the reference's examples with [announce] fail check-config:\n{said}"
    );
    std::fs::write(&config, owned_by("[[vrrp]]"))?;
    let (passed, said) = check_config(&config)?;
    ensure!(passed, "the reference's examples fail check-config:\n{said}");
    ensure!(others.len() == 1, "unexpected examples: {others:?}");
    let credentials = scratch.file("monitor.toml");
    std::fs::write(&credentials, others[0])?;
    std::fs::set_permissions(&credentials, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    foobar::mysql::monitor::Credentials::load(&credentials).context("the credentials example")?;
    // The control: the same check refuses the configuration once an example goes wrong.
    let broken = std::fs::read_to_string(&config)?.replacen("vrid = 51", "vrid = 300", 1);
    std::fs::write(&config, broken)?;
    ensure!(!check_config(&config)?.0, "a broken example passed");
    Ok(())
}

#[test]
fn every_whole_configuration_in_the_docs_passes_check_config() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = Scratch::new("docs-whole")?;
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") && !path.ends_with("configuration.md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    for page in pages {
        for (i, block) in toml_blocks(&std::fs::read_to_string(&page)?).iter().enumerate() {
            if !block.lines().any(|l| l.trim() == "[node]") {
                continue;
            }
            let file = scratch.file(&format!("example{checked}.toml"));
            std::fs::write(&file, block)?;
            let (passed, said) = check_config(&file)?;
            ensure!(passed, "example {i} of {} fails check-config:\n{said}", page.display());
            checked += 1;
        }
    }
    ensure!(checked >= 1, "no whole configuration found in the docs");
    Ok(())
}

/// The BGP daemon configurations of the deployment guide parse: BIRD's with `bird -p`, FRR's
/// with `vtysh -C` (both check without running a daemon), and a broken one does not.
#[test]
fn the_bgp_daemon_examples_parse() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("docs/deployment.md"))?;
    let scratch = Scratch::new("docs-bgp")?;
    let parses = |language: &str, block: &str| -> Result<(bool, String)> {
        let file = scratch.file(&format!("{language}.conf"));
        std::fs::write(&file, block)?;
        let out = match language {
            "bird" => Command::new("bird").args(["-p", "-c"]).arg(&file).output()?,
            _ => Command::new("vtysh").args(["-C", "-f"]).arg(&file).output()?,
        };
        let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        Ok((out.status.success(), said))
    };
    for language in ["bird", "frr"] {
        let blocks = fenced_blocks(&guide, language);
        ensure!(!blocks.is_empty(), "no {language} example in deployment.md");
        for block in &blocks {
            let (ok, said) = parses(language, block)?;
            ensure!(ok, "the {language} example does not parse:\n{block}\n{said}");
        }
        // The control: the same check refuses a configuration with a wrong line.
        let broken = format!("{}\nthis is not a statement;\n", blocks[0]);
        ensure!(
            !parses(language, &broken)?.0,
            "a broken {language} configuration parsed"
        );
    }
    Ok(())
}
