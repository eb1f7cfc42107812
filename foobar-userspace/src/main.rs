//! The `foobar` command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use foobar::{config, ctl, daemon, dataplane, operate::Operation, stats};
use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

/// foobar: an XDP-accelerated edge appliance.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the data plane and run the control plane.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and the files it names (certificates, keys, credentials,
    /// document roots) as a start or reload would, and report every problem.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
        /// Do not look at the files it names (certificates, keys, credentials, document
        /// roots): for a configuration written for another host.
        #[arg(long)]
        skip_files: bool,
    },
    /// Read a password from standard input (one line) and print its bcrypt hash, for
    /// `[monitoring.basic_auth_users]`.
    HashPassword {
        /// bcrypt cost: each step doubles the work of every check (4..=31).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
        cost: u32,
    },
    /// Ask the running daemon to apply its configuration file again, all or nothing, and print
    /// the outcome. Exits 0 when applied, 1 when refused (every reason printed), 3 when the
    /// change needs a restart (the keys named).
    Reload {
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock")]
        socket: PathBuf,
    },
    /// Show the running daemon's state: VRRP state per instance, the current master, priorities,
    /// the last transition and its reason, advert counters and discards, VIP ownership.
    Status {
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock")]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runtime operations on an L4 backend of the running daemon (kept on reload, forgotten on
    /// restart): drain it, enable it again, or clear its failed health.
    Backend {
        /// What to do.
        #[command(subcommand)]
        action: BackendAction,
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock", global = true)]
        socket: PathBuf,
    },
    /// Runtime operations on a server of a web upstream pool of the running daemon (kept on
    /// reload, forgotten on restart): drain it, or enable it again.
    Upstream {
        /// What to do.
        #[command(subcommand)]
        action: UpstreamAction,
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock", global = true)]
        socket: PathBuf,
    },
    /// Runtime operations on a VRRP instance of the running daemon (kept on reload, forgotten
    /// on restart): step it down, or let it resume.
    Vrrp {
        /// What to do.
        #[command(subcommand)]
        action: VrrpAction,
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock", global = true)]
        socket: PathBuf,
    },
    /// Database operations on the running daemon: a planned switchover to another primary.
    Db {
        /// What to do.
        #[command(subcommand)]
        action: DbAction,
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock", global = true)]
        socket: PathBuf,
    },
    /// Drain the node (kept on reload, forgotten on restart): with `[announce]`, withdraw every
    /// VIP's announcement and keep forwarding what the routers still send; with VRRP, step
    /// every instance down. The node stays up and drained until `foobar undrain`.
    Drain {
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock")]
        socket: PathBuf,
    },
    /// End a drain: the node owns its VIPs again when it is fit to.
    Undrain {
        /// The daemon's control socket (`[node] control_socket`).
        #[arg(long, default_value = "/run/foobar/control.sock")]
        socket: PathBuf,
    },
    /// Print the data plane's counters from its pinned maps (services named after a
    /// configuration file when one is given).
    Stats {
        /// bpffs directory the data plane is pinned under.
        #[arg(long, default_value = "/sys/fs/bpf/foobar")]
        pin_dir: PathBuf,
        /// The configuration to name the services after.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach an empty XDP program to a veth peer so frames XDP transmits into it arrive.
    AttachPass {
        /// Interface.
        #[arg(long)]
        interface: String,
        /// bpffs directory to pin the link under.
        #[arg(long, default_value = "/sys/fs/bpf/foobar")]
        pin_dir: PathBuf,
    },
    /// Detach the data plane and remove its pinned state.
    Detach {
        /// bpffs directory the data plane is pinned under.
        #[arg(long, default_value = "/sys/fs/bpf/foobar")]
        pin_dir: PathBuf,
        /// Also withdraw the announcements this configuration's `[announce]` table holds
        /// (left by a foobar that did not stop cleanly) before detaching.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackendAction {
    /// No new flows to the backend (weight 0 until enabled); established flows stay.
    Drain {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// Undo a drain: the configured weight applies again.
    Enable {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// Forget the backend's failed checks: it is up, and its checks start over.
    ClearHealth {
        /// The `[[service]]` name.
        service: String,
        /// The backend's address.
        address: IpAddr,
    },
}

#[derive(Subcommand)]
enum UpstreamAction {
    /// No new proxied requests to the server; those in flight finish.
    Drain {
        /// The `[[web.upstream]]` name.
        upstream: String,
        /// The server, as the pool names it (address:port).
        server: SocketAddr,
    },
    /// Undo a drain.
    Enable {
        /// The `[[web.upstream]]` name.
        upstream: String,
        /// The server, as the pool names it (address:port).
        server: SocketAddr,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Move the primary without losing a write: the primary goes read-only, the target
    /// applies everything, is promoted, and the others replicate from it; prints the write
    /// pause. Run it on the edge that acts for the cluster (`foobar status` says which).
    Switchover {
        /// The `[[database]]` name.
        database: String,
        /// The replica to promote (address:port); by default the one that received the most.
        #[arg(long)]
        to: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum VrrpAction {
    /// Give up mastership at once (a priority-0 advert) and stay out of the election.
    StepDown {
        /// The `[[vrrp]]` name.
        instance: String,
    },
    /// Take part in the election again.
    Resume {
        /// The `[[vrrp]]` name.
        instance: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose reader goes away (`foobar status | head`) ends quietly, as other
        // command-line tools do, instead of failing on the broken pipe.
        // SAFETY: restores the default disposition; no handler code runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("foobar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_start(foobar::privileges::on_thread_start)
                .build()
                .context("starting the runtime")?;
            runtime.block_on(daemon::run(&config))?;
        }
        Command::CheckConfig { file, skip_files } => {
            let c = config::load_with(&file, !skip_files)?;
            println!("{}: ok ({} services)", file.display(), c.services.len());
        }
        Command::HashPassword { cost } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password")?;
            let password = password.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!password.is_empty(), "an empty password: type one, then Enter");
            println!("{}", foobar::metrics::access::hash_password(password, cost)?);
        }
        Command::Reload { socket } => {
            let outcome = ctl::reload(&socket)?;
            println!("{outcome}");
            return Ok(ExitCode::from(outcome.exit_code()));
        }
        Command::Status { socket, json } => {
            let status = ctl::query(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                ctl::print(&status);
            }
        }
        Command::Stats { pin_dir, config, json } => {
            let mut snapshot = stats::snapshot(&pin_dir)?;
            if let Some(path) = config {
                stats::name_services(&mut snapshot, &config::load_with(&path, false)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                stats::print(&snapshot);
            }
        }
        Command::Backend { action, socket } => {
            let op = match action {
                BackendAction::Drain { service, address } => Operation::Drain {
                    service,
                    backend: address,
                },
                BackendAction::Enable { service, address } => Operation::Enable {
                    service,
                    backend: address,
                },
                BackendAction::ClearHealth { service, address } => Operation::ClearHealth {
                    service,
                    backend: address,
                },
            };
            return operate(&socket, &op);
        }
        Command::Upstream { action, socket } => {
            let op = match action {
                UpstreamAction::Drain { upstream, server } => Operation::DrainUpstream { upstream, server },
                UpstreamAction::Enable { upstream, server } => Operation::EnableUpstream { upstream, server },
            };
            return operate(&socket, &op);
        }
        Command::Vrrp { action, socket } => {
            let op = match action {
                VrrpAction::StepDown { instance } => Operation::StepDown { instance },
                VrrpAction::Resume { instance } => Operation::Resume { instance },
            };
            return operate(&socket, &op);
        }
        Command::Db { action, socket } => {
            let DbAction::Switchover { database, to } = action;
            return operate(&socket, &Operation::Switchover { database, to });
        }
        Command::Drain { socket } => return operate(&socket, &Operation::DrainNode),
        Command::Undrain { socket } => return operate(&socket, &Operation::UndrainNode),
        Command::AttachPass { interface, pin_dir } => dataplane::attach_pass(&pin_dir, &interface)?,
        Command::Detach { pin_dir, config } => {
            // Announcements go first (the routers stop sending before nothing forwards); a
            // configuration that does not load does not keep the data plane attached.
            match config.map(|path| config::load_with(&path, false)) {
                Some(Ok(c)) => {
                    if let Some(a) = &c.announce {
                        let withdrawn = foobar::announce::withdraw_table(a.table)?;
                        println!("withdrew {withdrawn} announcement(s)");
                    }
                }
                Some(Err(e)) => eprintln!("foobar: announcements not withdrawn: {e}"),
                None => {}
            }
            dataplane::detach(&pin_dir)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends `op` to the daemon and prints its answer: exit 0 when done, 1 when refused.
fn operate(socket: &std::path::Path, op: &Operation) -> Result<ExitCode> {
    match ctl::operate(socket, op)? {
        Ok(done) => {
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("foobar: {op} refused: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Human-readable logs on a terminal, JSON lines otherwise; `RUST_LOG` filters. The access
/// and event logs also go to the push exporter when one runs.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let registry = tracing_subscriber::registry().with(filter).with(foobar::push::LogLayer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        registry.with(fmt).init();
    } else {
        registry.with(fmt.json()).init();
    }
}
