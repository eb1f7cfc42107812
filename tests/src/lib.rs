//! Test harness: network namespaces, veth links and processes that clean up after themselves
//! (even when a test fails), and running code inside a namespace.
//!
//! Every namespace a test makes is named `fbt<pid>-<name>`, so leftovers of a killed run are
//! recognisable; `cargo xtask test` removes such leftovers before it starts.

pub mod app;
pub mod classic;
pub mod collector;
pub mod dblab;
pub mod demo;
pub mod lab;
pub mod maps;
pub mod mariadb;
pub mod packet;
pub mod scalelab;
pub mod scrape;
pub mod testrun;
pub mod transfer;
pub mod weblab;

use anyhow::{bail, Context, Result};
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

/// Prefix of every namespace and pin directory the tests create: `$FOOBAR_NS_PREFIX`, or
/// `fbt<pid>`.
pub fn prefix() -> String {
    std::env::var("FOOBAR_NS_PREFIX").unwrap_or_else(|_| format!("fbt{}", std::process::id()))
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop (which also deletes the veth ends inside it).
pub struct Netns {
    /// Full name (`fbt<pid>-<short>`).
    pub name: String,
}

impl Netns {
    /// Creates `fbt<pid>-<short>` with loopback up.
    pub fn new(short: &str) -> Result<Self> {
        let name = format!("{}-{short}", prefix());
        let _ = sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace and returns whether it succeeded, with its stdout
    /// and stderr together (for commands expected to fail).
    pub fn exec_any(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// A command that runs in this network namespace but the host's mount namespace (unlike
    /// `ip netns exec`, which remounts /sys and so hides the host's bpffs pins).
    pub fn command(&self, program: &Path) -> Result<Command> {
        let netns = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe and touches only the child's namespaces.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Runs `program args` via [`Netns::command`], failing with its stderr on a non-zero exit.
    pub fn exec_direct(&self, program: &Path, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)?
            .args(args)
            .output()
            .with_context(|| format!("running {program:?} {args:?}"))?;
        if !out.status.success() {
            bail!(
                "{program:?} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawns a long-running program via [`Netns::command`]; killed when the guard drops.
    pub fn spawn(&self, program: &Path, args: &[&str], log: &Path) -> Result<ChildGuard> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .command(program)?
            .args(args)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawning {program:?} {args:?}"))?;
        Ok(ChildGuard::adopt(child, log))
    }

    /// Spawns a program that needs no bpffs (keepalived, HAProxy, nginx) through
    /// `ip netns exec`, its output appended to `log`, in a process group of its own: when the
    /// guard drops the whole group is killed, so no forked worker outlives it.
    pub fn spawn_system(&self, args: &[&str], log: &Path) -> Result<ChildGuard> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        let mut guard = ChildGuard::adopt(child, log);
        guard.group = true;
        Ok(guard)
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let handle = thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Starts `f` on a thread inside this namespace and returns its handle.
    pub fn thread<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))
}

/// Creates a veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up.
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    let tmp = format!("{}t", &a[..a.len().min(10)]);
    sh(&[
        "ip", "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", &tmp, "netns", &ns_b.name,
    ])?;
    ns_b.exec(&["ip", "link", "set", &tmp, "name", b])?;
    ns_a.exec(&["ip", "link", "set", a, "up"])?;
    ns_b.exec(&["ip", "link", "set", b, "up"])?;
    Ok(())
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The ifindex of `dev` in `ns`.
pub fn ifindex_of(ns: &Netns, dev: &str) -> Result<u32> {
    Ok(ns
        .exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])?
        .trim()
        .parse()?)
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
    log: PathBuf,
    /// The child leads a process group, killed as a whole.
    group: bool,
}

impl ChildGuard {
    /// Guards an already spawned child whose output goes to `log`.
    pub fn adopt(child: Child, log: &Path) -> Self {
        Self {
            child: Some(child),
            log: log.to_owned(),
            group: false,
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        if let Some(child) = &self.child {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        }
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits for the process to exit (up to `limit`), returning whether it exited successfully.
    pub fn wait(&mut self, limit: Duration) -> Result<bool> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("process did not exit within {limit:?}; log:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's combined output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `foobar` binary under test: `$FOOBAR_BIN`, or `foobar` next to the test's deps folder.
pub fn foobar_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FOOBAR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("."));
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("foobar"))
        .unwrap_or_else(|| PathBuf::from("foobar"))
}

/// Starts `foobar run` and waits until it says it is running (everything started).
pub fn start_foobar(ns: &Netns, config: &std::path::Path, log: &std::path::Path) -> Result<ChildGuard> {
    let config = config.display().to_string();
    let child = ns.spawn(&foobar_bin(), &["run", "--config", &config], log)?;
    wait_until(Duration::from_secs(10), "foobar to forward", || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("foobar is running"))
    })
    .with_context(|| child.log_text())?;
    Ok(child)
}

/// Runs `foobar ARGS` in `ns` (its network namespace only, as the daemon runs) expecting a
/// refusal: returns everything it printed once it exits with a failure. A `foobar` that exits
/// successfully, or is still running after `limit` (it accepted what it should refuse), fails
/// the test, and is killed.
pub fn foobar_refuses(ns: &Netns, args: &[&str], limit: Duration) -> Result<String> {
    command_refuses(ns, &foobar_bin(), args, limit)
}

/// [`foobar_refuses`] for any program (a wrapper such as `prlimit` or `setpriv` that runs
/// foobar in the end).
pub fn command_refuses(ns: &Netns, program: &Path, args: &[&str], limit: Duration) -> Result<String> {
    let mut child = ns
        .command(program)?
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting foobar {args:?}"))?;
    let began = Instant::now();
    while child.try_wait()?.is_none() {
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("foobar {args:?} was still running after {limit:?}: it accepted what it should refuse");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        bail!("foobar {args:?} exited successfully:\n{text}");
    }
    Ok(text)
}

/// A scratch directory for logs and configs, removed on drop.
pub struct Scratch {
    /// Its path.
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `/tmp/fbt<pid>-<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{}-{name}", prefix()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Path of a file inside.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // FOOBAR_KEEP_SCRATCH=1 keeps logs and configurations for a post-mortem.
        if std::env::var_os("FOOBAR_KEEP_SCRATCH").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A pin directory under /sys/fs/bpf for one data plane; detached and removed on drop.
pub struct PinDir {
    /// Its path.
    pub path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/fbt<pid>-<name>`.
    pub fn new(name: &str) -> Self {
        let path = PathBuf::from(format!("/sys/fs/bpf/{}-{name}", prefix()));
        let _ = foobar::dataplane::detach(&path);
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = foobar::dataplane::detach(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Detaches the BPF link pinned at `pin` (BPF_LINK_DETACH), as `bpftool link detach` does:
/// the program leaves the interface while the pin stays.
pub fn detach_pinned_link(pin: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    const BPF_LINK_DETACH: libc::c_long = 34;
    let fd = foobar::dataplane::open_pin(pin)?;
    let detach = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
    };
    // SAFETY: a valid BPF_LINK_DETACH attribute.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &detach as *const LinkDetach,
            std::mem::size_of::<LinkDetach>(),
        )
    };
    if rc != 0 {
        bail!("detaching {}: {}", pin.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

/// A TCP server on a thread inside a namespace. A connection that starts with an HTTP request
/// gets `hello from NAME`; any other first line is answered with the server's name, and
/// everything after it is echoed. `stop` closes the listener and every open connection.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    handle: Option<thread::JoinHandle<Result<Result<()>>>>,
}

impl EchoServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop2, accepted2, name) = (stop.clone(), accepted.clone(), name.to_string());
        let handle = ns.thread(move || -> Result<()> {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let mut conns: Vec<thread::JoinHandle<()>> = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let (name, stop3) = (name.clone(), stop2.clone());
                        conns.push(thread::spawn(move || serve_echo(stream, &name, &stop3)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                    Err(e) => return Err(e.into()),
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("echo server did not start")?;
        Ok(Self {
            stop,
            accepted,
            handle: Some(handle),
        })
    }

    /// Stops listening and closes every connection.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_echo(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    // The first line decides: an HTTP request gets one response; anything else is a hello
    // answered with the server's name, then every later byte is echoed.
    while first.is_empty() && !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut first) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
    let mut stream = reader.into_inner();
    if first.starts_with("GET ") || first.starts_with("HEAD ") {
        let body = format!("hello from {name}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
        return;
    }
    if stream.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A client connection to an [`EchoServer`] (through the VIP).
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    /// The name the server greeted with: which backend serves this connection.
    pub backend: String,
}

impl EchoClient {
    /// Connects (from the calling thread's namespace), says hello and reads the server's name.
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"hello\n")?;
        let mut reader = BufReader::new(stream);
        let mut backend = String::new();
        reader.read_line(&mut backend).context("reading the greeting")?;
        if backend.is_empty() {
            bail!("connection closed before the greeting");
        }
        Ok(Self {
            reader,
            backend: backend.trim().to_string(),
        })
    }

    /// Sets how long a read may wait.
    pub fn set_read_timeout(&mut self, limit: Duration) -> Result<()> {
        Ok(self.reader.get_ref().set_read_timeout(Some(limit))?)
    }

    /// Sends a line and returns the line that comes back (without its newline).
    pub fn exchange(&mut self, line: &str) -> Result<String> {
        self.reader.get_mut().write_all(format!("{line}\n").as_bytes())?;
        let mut back = String::new();
        self.reader.read_line(&mut back)?;
        if back.is_empty() {
            bail!("the connection closed (backend {})", self.backend);
        }
        Ok(back.trim_end_matches('\n').to_string())
    }

    /// Sends a line and checks it comes back unchanged.
    pub fn round_trip(&mut self, line: &str) -> Result<()> {
        let back = self.exchange(line)?;
        if back != line {
            bail!("sent {line:?}, got {back:?} (backend {})", self.backend);
        }
        Ok(())
    }
}
