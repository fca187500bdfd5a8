//! The `resmon` command line. This file: the commands and their arguments, `run`, `simulate`
//! and the generated docs; `validate` checks a config (and, with `--cluster`, compares it with
//! the live nodes); `status` shows the running agent; `control` has the commands that steer it
//! through its control socket.

mod control;
mod status;
mod validate;

use control::{control, events, maintenance, move_group, node};

use crate::config::{self, DEFAULT_CONFIG_PATH};
use clap::{Parser, Subcommand, ValueEnum};
pub use status::render_table;
use std::path::PathBuf;
use std::process::ExitCode;

/// resmon: keeps a machine's services alive with the semantics of a failover-cluster resource
/// monitor.
#[derive(Debug, Parser)]
#[command(name = "resmon", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (SIGHUP reloads the config, SIGTERM exits without
    /// stopping the services it keeps unless `stop_on_exit = true`).
    Run {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check a config file: print every error and warning with its file, line and key, and exit
    /// non-zero if there is an error.
    Validate {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Also compare it with the live nodes of its cluster (read from etcd): versions, key
        /// schemas, and every group's definition; a group defined differently is an error.
        #[arg(long)]
        cluster: bool,
    },
    /// Print what the controller would do for a scripted series of failures, step by step,
    /// without touching anything (the script format is in `resmon simulate --help`).
    #[command(long_about = SIMULATE_HELP)]
    Simulate {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The script file, `-` for standard input.
        script: PathBuf,
    },
    /// Bring a group (`GROUP`) or a resource (`GROUP/RESOURCE`) online; clears a failure.
    Online(ControlArgs),
    /// Take a group or a resource offline as an administrator (`offline_by_admin`: never
    /// restarted, never failed over); dependents go offline first.
    Offline(ControlArgs),
    /// Clear a failed resource (`GROUP/RESOURCE`): forget its failures and let it come online.
    Clear(ControlArgs),
    /// Move a group to another node of the cluster (`--to NODE`, or the best other possible
    /// owner): its owner takes it offline and lets go, the other node takes it.
    Move {
        /// The group.
        group: String,
        /// The node to move it to.
        #[arg(long)]
        to: Option<String>,
        /// The config file (to find the control socket).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Put the node, a group (`GROUP`) or a resource (`GROUP/RESOURCE`) in maintenance (`on`)
    /// or take it out (`off`): still checked and exported, but nothing of it is started,
    /// stopped, restarted or failed over, and the node takes no group while it is in
    /// maintenance; kept across agent restarts. Leaving it looks at what runs before acting.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        action: String,
        /// `GROUP` or `GROUP/RESOURCE`; without it, the whole node.
        target: Option<String>,
        /// The config file (to find the control socket).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Drain a node (`drain [NODE]`: it takes no group and moves those it holds to other nodes,
    /// two at a time, each an orderly move) or resume it (`resume [NODE] [--failback]`);
    /// held in etcd. NODE defaults to this node.
    Node {
        /// What to do.
        #[command(subcommand)]
        action: NodeAction,
        /// The config file (to find the control socket).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, global = true)]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// List the agent's recent events.
    Events {
        /// The config file (to find the control socket).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The control socket, instead of reading it from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Write the man page and shell completions into DIR (used to build the packages).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write `resmon.1`, `resmon.bash`, `_resmon` and `resmon.fish`.
        dir: PathBuf,
    },
    /// Show the running agent's groups and resources.
    Status {
        /// The config file (to find the agent's listen address).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The agent's address, instead of reading it from the config.
        #[arg(long)]
        address: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `resmon node` actions.
#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Pause the node and move its groups to other nodes.
    Drain {
        /// The node; this one when left out.
        node: Option<String>,
    },
    /// Let the node take groups again.
    Resume {
        /// The node; this one when left out.
        node: Option<String>,
        /// Move the groups it held when it was paused back to it.
        #[arg(long)]
        failback: bool,
    },
}

const SIMULATE_HELP: &str =
    "Print what the controller would do for a scripted series of failures, \
step by step, without touching anything: the same policy code the agent runs, in a world where \
every operation succeeds at once unless the script says otherwise.

Script lines: TIME [GROUP/]RESOURCE EVENT [REASON], for example
  0s    smtp fails                 (is_alive fails)
  5s    smtp looks_alive_fails
  10s   store signal exited        (the failure signal fires)
  20s   store online_fails spawn   (its online fails until `online_ok`)
  30s   smtp admin_offline         (also admin_online, admin_clear)
  2h    tick                       (time passes; retry timers fire)

With node lines the script plays a cluster: groups go where the placement rules say
(preferred and possible owners, capacities, anti-affinity, colocation), a failover goes to
another node or says why it cannot, and a group with nowhere to go waits and says why:
  0s    node n1 up storage_groups=4  (a node and its capacities)
  60s   node n1 down                 (its groups go to the other nodes)";

/// Arguments of `online`, `offline` and `clear`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// `GROUP` or `GROUP/RESOURCE`.
    pub target: String,
    /// The config file (to find the control socket).
    #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The control socket, instead of reading it from the config.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The API's JSON.
    Json,
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => {
            let runtime = match build_runtime(tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let signals = runtime.block_on(async { Signals::install() });
            let signals = match signals {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot install signal handlers: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::server::run(
                config,
                signals.reloads,
                signals.shutdown,
            )) {
                Ok(()) => {
                    // Tasks still waiting on processes are not awaited: exit now.
                    runtime.shutdown_background();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config, cluster } => validate::validate(&config, cluster),
        Command::GenerateDocs { dir } => generate_docs(&dir),
        Command::Simulate { config, script } => simulate(&config, &script),
        Command::Online(args) => control(args, "online"),
        Command::Offline(args) => control(args, "offline"),
        Command::Clear(args) => control(args, "clear"),
        Command::Move {
            group,
            to,
            config,
            socket,
        } => move_group(&group, to.as_deref(), &config, socket),
        Command::Maintenance {
            action,
            target,
            config,
            socket,
        } => maintenance(&action, target.as_deref(), &config, socket),
        Command::Node {
            action,
            config,
            socket,
        } => node(action, &config, socket),
        Command::Events {
            config,
            socket,
            output,
        } => events(&config, socket, output),
        Command::Status {
            config,
            address,
            output,
        } => status::status(&config, address, output),
    }
}

/// `resmon run`'s triggers: SIGHUP reloads, SIGTERM or SIGINT stops.
struct Signals {
    reloads: futures::stream::BoxStream<'static, ()>,
    shutdown: futures::future::BoxFuture<'static, ()>,
}

impl Signals {
    /// Installs the handlers; inside a runtime.
    fn install() -> std::io::Result<Signals> {
        use futures::FutureExt;
        use tokio::signal::unix::{signal, SignalKind};
        let hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let reloads = futures::stream::unfold(hup, |mut hup| async move {
            hup.recv().await.map(|()| ((), hup))
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        Ok(Signals {
            reloads: Box::pin(reloads),
            shutdown: shutdown.boxed(),
        })
    }
}

fn build_runtime(
    mut builder: tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn generate_docs(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page)?;
        std::fs::write(dir.join("resmon.1"), page)?;
        for (shell, file) in [
            (clap_complete::Shell::Bash, "resmon.bash"),
            (clap_complete::Shell::Zsh, "_resmon"),
            (clap_complete::Shell::Fish, "resmon.fish"),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "resmon", &mut out);
            std::fs::write(dir.join(file), out)?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write into {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn simulate(path: &std::path::Path, script: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(loaded) => loaded.config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let text = if script == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(script)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", script.display());
            return ExitCode::FAILURE;
        }
    };
    match crate::simulate::simulate(&config, &text) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}:{e}", script.display());
            ExitCode::FAILURE
        }
    }
}

/// `1 group`, `2 groups`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
