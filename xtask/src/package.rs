//! `cargo xtask package`: the Debian package, `target/package/foobar_<version>_amd64.deb`,
//! assembled with dpkg-deb from a release build and `foobar-userspace/package/` (the unit,
//! the maintainer scripts, the example configuration, the changelog), then checked: the
//! example configuration passes `check-config`, the unit passes `systemd-analyze verify`, and
//! lintian reports no error. Prints the unit's `systemd-analyze security` exposure.

use crate::toolchain;
use anyhow::{bail, Context, Result};
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// The package's version: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds, assembles and checks the package; returns its path.
pub fn package(root: &Path) -> Result<PathBuf> {
    toolchain::ensure_os_packages(&[
        "dpkg-deb",
        "strip",
        "objdump",
        "gzip",
        "help2man",
        "lintian",
        "systemd-analyze",
    ])?;
    // The binary alone (with the XDP program it embeds), optimised.
    toolchain::ensure()?;
    crate::cargo(
        root,
        &["build", "--release", "--package", "foobar-userspace", "--bin", "foobar"],
        &[],
    )?;
    let sources = root.join("foobar-userspace/package");
    let changelog = fs::read_to_string(sources.join("changelog")).context("reading the package changelog")?;
    let expected = format!("foobar ({VERSION})");
    if !changelog.starts_with(&expected) {
        bail!("foobar-userspace/package/changelog must start with an entry for {expected} (the workspace version)");
    }
    let out = root.join("target/package");
    let stage = out.join(format!("foobar_{VERSION}_amd64"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let binary = stage.join("usr/sbin/foobar");
    fs::create_dir_all(binary.parent().context("binary path")?)?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "-o"])
        .arg(&binary)
        .arg(root.join("target/release/foobar")))?;
    let doc = Path::new("usr/share/doc/foobar");
    let mut files: Vec<(PathBuf, PathBuf, u32)> = vec![
        (
            sources.join("foobar.service"),
            "lib/systemd/system/foobar.service".into(),
            0o644,
        ),
        (sources.join("foobar.toml"), "etc/foobar/foobar.toml".into(), 0o644),
        (sources.join("foobar.toml"), doc.join("examples/foobar.toml"), 0o644),
        (
            sources.join("rt_protos.conf"),
            "etc/iproute2/rt_protos.d/foobar.conf".into(),
            0o644,
        ),
        (
            sources.join("60-foobar-dsr-backend.conf"),
            doc.join("examples/60-foobar-dsr-backend.conf"),
            0o644,
        ),
        (sources.join("copyright"), doc.join("copyright"), 0o644),
        (sources.join("postinst"), "DEBIAN/postinst".into(), 0o755),
        (sources.join("prerm"), "DEBIAN/prerm".into(), 0o755),
        (sources.join("postrm"), "DEBIAN/postrm".into(), 0o755),
    ];
    for entry in fs::read_dir(root.join("docs")).context("listing docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().context("doc name")?.to_owned();
            files.push((path, doc.join(name), 0o644));
        }
    }
    for (from, to, mode) in &files {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().context("destination")?)?;
        fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(*mode))?;
    }
    gzip(&changelog, &stage.join(doc).join("changelog.gz"))?;
    // The manual page, from the binary's own --help.
    let manual = Command::new("help2man")
        .args(["--no-info", "--section=8", "--version-string", VERSION])
        .args([
            "--name",
            "XDP edge appliance: load balancing, VRRP, TLS web tier, MySQL routing",
        ])
        .arg("--include")
        .arg(sources.join("foobar.8.include"))
        .arg(&binary)
        .env("SOURCE_DATE_EPOCH", "1796000000")
        .output()
        .context("running help2man")?;
    if !manual.status.success() {
        bail!("help2man failed: {}", String::from_utf8_lossy(&manual.stderr));
    }
    gzip(
        &String::from_utf8(manual.stdout)?,
        &stage.join("usr/share/man/man8/foobar.8.gz"),
    )?;
    fs::write(
        stage.join("DEBIAN/conffiles"),
        "/etc/foobar/foobar.toml\n/etc/iproute2/rt_protos.d/foobar.conf\n",
    )?;
    fs::write(stage.join("DEBIAN/control"), control(&stage, &binary)?)?;
    fs::write(stage.join("DEBIAN/md5sums"), md5sums(&stage)?)?;
    for dir in walk(&stage)?.into_iter().filter(|p| p.is_dir()) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("foobar_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    check(&stage, &binary, &deb)?;
    eprintln!("xtask: {}", deb.display());
    Ok(deb)
}

/// Writes `text` gzip-compressed (no name or time stamp) to `dest`, mode 0644.
fn gzip(text: &str, dest: &Path) -> Result<()> {
    use std::io::Write;
    fs::create_dir_all(dest.parent().context("destination")?)?;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child.stdin.take().context("gzip's stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed for {}", dest.display());
    }
    fs::write(dest, out.stdout)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The control file: dependencies from the binary's glibc symbol versions.
fn control(stage: &Path, binary: &Path) -> Result<String> {
    let symbols = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .context("running objdump")?;
    let text = String::from_utf8_lossy(&symbols.stdout);
    let glibc = text
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches('(').trim_end_matches(')').strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .context("no GLIBC_ symbol versions in the binary")?;
    let installed_kib: u64 = walk(stage)?
        .iter()
        .filter(|p| p.is_file() && !p.starts_with(stage.join("DEBIAN")))
        .map(|p| fs::metadata(p).map(|m| m.len().div_ceil(1024)).unwrap_or(0))
        .sum();
    Ok(format!(
        "Package: foobar
Version: {VERSION}
Architecture: amd64
Maintainer: foobar developers <foobar@foobar.com>
Installed-Size: {installed_kib}
Depends: libc6 (>= {}.{}), libgcc-s1, adduser
Section: net
Priority: optional
Homepage: https://www.foobar.com/
Description: XDP edge appliance: L4 load balancing, VRRP, TLS web tier, MySQL routing
 foobar runs the edge of a highly available web stack on each edge machine:
 Maglev load balancing of the virtual IP's services in XDP with a connection
 table and direct server return, VIP ownership elected with VRRPv3
 (keepalived-compatible) or announced over BGP through BIRD or FRR (every
 edge active), health checks, a TLS web tier serving static files
 and proxying to the application, read-write / read-only routing to MySQL or
 MariaDB, Prometheus metrics, a status page and push export.
",
        glibc.0, glibc.1
    ))
}

/// `md5sum` lines for every file outside DEBIAN/, paths relative to the root.
fn md5sums(stage: &Path) -> Result<String> {
    let mut relative: Vec<PathBuf> = walk(stage)?
        .into_iter()
        .filter(|p| p.is_file() && !p.starts_with(stage.join("DEBIAN")))
        .map(|p| p.strip_prefix(stage).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    relative.sort();
    let out = Command::new("md5sum")
        .args(&relative)
        .current_dir(stage)
        .output()
        .context("running md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        }
        out.push(path);
    }
    Ok(out)
}

/// The package's checks: the example configuration, the unit, lintian; the unit's exposure.
fn check(stage: &Path, binary: &Path, deb: &Path) -> Result<()> {
    let example = stage.join("etc/foobar/foobar.toml");
    run(Command::new(binary)
        .arg("check-config")
        .arg("--skip-files")
        .arg(&example))?;
    // systemd-analyze looks for the unit's programs and the units it refers to under --root:
    // a root with this host's units, the staged unit and the staged binary.
    let verify_root = stage.with_file_name("verify-root");
    if verify_root.exists() {
        fs::remove_dir_all(&verify_root)?;
    }
    let units = verify_root.join("usr/lib/systemd");
    fs::create_dir_all(&units)?;
    fs::create_dir_all(verify_root.join("usr/sbin"))?;
    std::os::unix::fs::symlink("usr/lib", verify_root.join("lib"))?;
    run(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(&units))?;
    let unit = units.join("system/foobar.service");
    fs::copy(stage.join("lib/systemd/system/foobar.service"), &unit)?;
    fs::copy(binary, verify_root.join("usr/sbin/foobar"))?;
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", verify_root.display()))
        .arg(&unit)
        .output()
        .context("running systemd-analyze verify")?;
    let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    if !verify.status.success() || said.contains("foobar.service") {
        bail!("systemd-analyze verify refuses the unit:\n{said}");
    }
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let said = String::from_utf8_lossy(&lintian.stdout);
    eprint!("{said}");
    if !lintian.status.success() {
        bail!(
            "lintian reports errors:\n{said}{}",
            String::from_utf8_lossy(&lintian.stderr)
        );
    }
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(format!("--root={}", verify_root.display()))
        .arg(&unit)
        .output()
        .context("running systemd-analyze security")?;
    let report = String::from_utf8_lossy(&security.stdout);
    match report.lines().find(|l| l.contains("Overall exposure level")) {
        Some(line) => eprintln!("xtask: {}", line.trim_start_matches(|c: char| !c.is_alphanumeric())),
        None => eprintln!(
            "xtask: systemd-analyze security printed no exposure level:\n{report}{}",
            String::from_utf8_lossy(&security.stderr)
        ),
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
