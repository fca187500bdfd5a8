//! The `resmon` command line: `run`, `validate`, `simulate`, `status`; `control` has the
//! commands that steer the running agent through its control socket; `validate` compares a
//! config with the live nodes of its cluster (`validate --cluster`).

mod control;
mod validate;

use control::{control, events, maintenance, move_group, node};

use crate::config::{self, DEFAULT_CONFIG_PATH};
use crate::status::{AgentStatus, CheckStatus};
use clap::{Parser, Subcommand, ValueEnum};
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
        Command::Validate { config, cluster } => validate(&config, cluster),
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
        } => status(&config, address, output),
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

fn validate(path: &std::path::Path, cluster: bool) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            let c = &loaded.config;
            for g in &c.groups {
                for r in &g.resources {
                    println!("{}/{}: {}", g.name, r.name, budget(r));
                }
                if let Some(cluster) = &c.cluster {
                    println!("{}: {}", g.name, fence_time(g, cluster.fence_margin()));
                }
            }
            let resources: usize = c.groups.iter().map(|g| g.resources.len()).sum();
            println!(
                "{}: ok ({}, {}, {})",
                path.display(),
                plural(c.groups.len(), "group"),
                plural(resources, "resource"),
                plural(loaded.warnings.len(), "warning")
            );
            if cluster {
                return validate::cluster(c);
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {}", path.display(), plural(errors.0.len(), "error"));
            ExitCode::FAILURE
        }
    }
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

/// What `validate` says of a resource: how fast a failure is seen, and what happens then.
/// The worst case of a fence of `g`: its slowest terminate that waits on a service's own stop
/// (validation already refused one that does not fit in the margin).
fn fence_time(g: &crate::config::GroupConfig, margin: std::time::Duration) -> String {
    let d = |x: std::time::Duration| resmon_probes::HumanDuration(x).to_string();
    let slowest = g
        .resources
        .iter()
        .filter(|r| r.private.terminate_waits())
        .filter_map(|r| Some((r.props.terminate_timeout.duration()?, r)))
        .max_by_key(|(t, _)| *t);
    match slowest {
        Some((t, r)) => format!(
            "a fence ends within {} (terminate_timeout of {}), inside fence_margin {}",
            d(t),
            r.name,
            d(margin)
        ),
        None => format!(
            "a fence only signals processes and removes addresses, inside fence_margin {}",
            d(margin)
        ),
    }
}

fn budget(r: &crate::config::ResourceConfig) -> String {
    use resmon_policies::RestartAction;
    let d = |x: std::time::Duration| resmon_probes::HumanDuration(x).to_string();
    let p = &r.props;
    let policy = p.restart_policy(r.private.provides_failure_signal());
    let mut detection = format!(
        "a failure is seen within {} (is_alive_interval {} + check_timeout {})",
        d(p.is_alive_interval + p.check_timeout),
        d(p.is_alive_interval),
        d(p.check_timeout)
    );
    if policy.polls_looks_alive() && p.looks_alive_interval < p.is_alive_interval {
        detection = format!(
            "a failure is seen within {} (looks_alive_interval {} + check_timeout {}, then is_alive at once)",
            d(p.looks_alive_interval + p.check_timeout * 2),
            d(p.looks_alive_interval),
            d(p.check_timeout)
        );
    }
    if policy.provides_failure_signal {
        detection = format!("{detection}, at once through its failure signal");
    }
    let next = match p.restart_action {
        RestartAction::NoRestart => {
            "no restart: a failure stays failed until an administrator acts".to_string()
        }
        action => format!(
            "{} restarts per {}, then {}, retry after {}",
            p.restart_threshold,
            d(p.restart_period),
            if action == RestartAction::RestartThenFailover {
                "failover"
            } else {
                "no failover"
            },
            d(p.retry_period_on_failure)
        ),
    };
    format!("{detection}; {next}")
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

fn status(path: &std::path::Path, address: Option<String>, output: Output) -> ExitCode {
    let address = match address {
        Some(a) => a,
        None => match config::load(path) {
            Ok(loaded) => loaded.config.agent.listen.to_string(),
            Err(errors) => {
                eprintln!(
                    "{errors}\n(pass --address to reach the agent without reading the config)"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match build_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let body = match runtime.block_on(crate::client::get(&address, "/api/v1/status")) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: cannot reach the agent at {address}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if output == Output::Json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<AgentStatus>(&body) {
        Ok(status) => {
            print!("{}", render_table(&status, crate::events::unix_now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: the agent at {address} answered something that is not its status: {e}"
            );
            ExitCode::FAILURE
        }
    }
}

fn ago(now: f64, t: f64) -> String {
    human((now - t).max(0.0))
}

fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

fn last_check(name: &str, c: &CheckStatus, now: f64) -> Option<String> {
    let at = c.last_at?;
    let result = match (c.last_ok, c.last_reason) {
        (Some(true), _) => "ok".to_string(),
        (_, Some(reason)) => reason.to_string(),
        _ => "?".into(),
    };
    let ms = c.last_duration_seconds.unwrap_or(0.0) * 1000.0;
    Some(format!("{name} {result} {ms:.0}ms {} ago", ago(now, at)))
}

/// The table `resmon status` prints.
pub fn render_table(status: &AgentStatus, now: f64) -> String {
    let mut rows = vec![[
        "GROUP",
        "RESOURCE",
        "TYPE",
        "STATE",
        "SINCE",
        "RESTARTS",
        "LAST CHECK",
        "NEXT CHECK",
    ]
    .map(String::from)
    .to_vec()];
    for g in &status.groups {
        for r in &g.resources {
            let last = [("is_alive", &r.is_alive), ("looks_alive", &r.looks_alive)]
                .into_iter()
                .filter(|(_, c)| c.last_at.is_some())
                .max_by(|a, b| {
                    a.1.last_at
                        .partial_cmp(&b.1.last_at)
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .and_then(|(name, c)| last_check(name, c, now))
                .unwrap_or_else(|| "-".into());
            // Coming online by checking: the last failed attempt says why it is not yet.
            let last = r.online_attempt.as_ref().map_or(last, |a| {
                format!(
                    "online attempt {} {} {} ago",
                    a.attempt,
                    a.reason,
                    ago(now, a.at)
                )
            });
            let next = [r.looks_alive.next_at, r.is_alive.next_at]
                .into_iter()
                .flatten()
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
                .map_or("-".into(), |t| format!("in {}", human((t - now).max(0.0))));
            let mut state = r.state.to_string();
            if let Some(p) = r.pending {
                state = format!("{state} ({p})");
            }
            if r.needs_admin {
                state.push_str(" (needs admin)");
            }
            if r.unmanaged {
                state.push_str(" (maintenance)");
            }
            if r.damped_until.is_some_and(|at| at > now) {
                state.push_str(&format!(" (damped, penalty {})", r.damping_penalty));
            }
            // Waiting out its restart delay, or its retry period.
            if let Some(at) = r.restart_at {
                state.push_str(&format!(" (restart in {})", human((at - now).max(0.0))));
            } else if let Some(at) = r.retry_at {
                state.push_str(&format!(" (retry in {})", human((at - now).max(0.0))));
            }
            rows.push(vec![
                g.name.clone(),
                r.name.clone(),
                r.r#type.to_string(),
                state,
                ago(now, r.since),
                format!("{}/{}", r.restarts_in_period, r.restart_threshold),
                last,
                next,
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let c = &status.cluster;
    let connected = if c.connected {
        "connected"
    } else {
        "NOT CONNECTED"
    };
    let nodes = if c.nodes.is_empty() {
        "-".to_string()
    } else {
        c.nodes.join(", ")
    };
    let mut out = format!(
        "node {}, resmon {}, {} coordinator {connected}, nodes: {nodes}\n",
        status.node, status.version, c.coordinator
    );
    if !c.paused.is_empty() {
        out.push_str(&format!("paused (drained): {}\n", c.paused.join(", ")));
    }
    if let Some(why) = &c.refused {
        out.push_str(&format!("REFUSED: {why}\n"));
    }
    if c.skew.versions_differ() {
        out.push_str(&format!(
            "versions differ: {} (finish the rolling upgrade)\n",
            c.skew.versions_text()
        ));
    }
    for difference in &c.skew.differences {
        out.push_str(&format!("config differs: {difference}\n"));
    }
    if status.maintenance.node {
        out.push_str("this node is in maintenance\n");
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    // Owners cluster-wide, also of the groups that run elsewhere.
    for (group, owner) in &c.owners {
        out.push_str(&format!(
            "group {group}: owner {}\n",
            owner.as_deref().unwrap_or("none")
        ));
    }
    out
}

/// `1 group`, `2 groups`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{CheckStatus, GroupStatus, ResourceStatus};

    #[test]
    fn the_table_says_when_a_failed_resource_restarts_or_retries() {
        let resource =
            |name: &str, restart_at: Option<f64>, retry_at: Option<f64>| ResourceStatus {
                name: name.into(),
                r#type: "tcp".into(),
                state: resmon_policies::State::Failed,
                since: 100.0,
                cause: "is_alive_failed:refused".into(),
                pending: None,
                depends_on: Vec::new(),
                restarts_total: 1,
                restarts_in_period: 1,
                restart_threshold: 3,
                retry_at,
                restart_at,
                needs_admin: false,
                looks_alive: CheckStatus::default(),
                is_alive: CheckStatus::default(),
                online_attempt: None,
                unmanaged: false,
                damping_penalty: 0,
                damped_until: None,
                restart_window_frees_at: None,
            };
        let status = AgentStatus {
            node: "n1".into(),
            version: "0".into(),
            groups: vec![GroupStatus {
                name: "g".into(),
                mode: resmon_policies::GroupMode::Active,
                owner: Some("n1".into()),
                resources: vec![
                    resource("web", Some(130.0), None),
                    resource("db", None, Some(700.0)),
                ],
            }],
            cluster: Default::default(),
            maintenance: Default::default(),
        };
        let table = render_table(&status, 100.0);
        assert!(table.contains("failed (restart in 30s)"), "{table}");
        assert!(table.contains("failed (retry in 10m)"), "{table}");
        assert!(!table.contains("paused") && !table.contains("maintenance"));

        let mut status = status;
        status.cluster.paused = vec!["n2".into()];
        status.maintenance.node = true;
        let table = render_table(&status, 100.0);
        assert!(table.contains("paused (drained): n2\n"), "{table}");
        assert!(table.contains("this node is in maintenance\n"), "{table}");
        assert!(!table.contains("differ"), "{table}");

        status.cluster.skew.versions = [
            ("0.1.0".to_string(), vec!["n2".to_string()]),
            ("0.2.0".to_string(), vec!["n1".to_string()]),
        ]
        .into();
        status.cluster.skew.differences = vec!["group \"g\" is defined differently: x".into()];
        let table = render_table(&status, 100.0);
        assert!(
            table.contains(
                "versions differ: 0.1.0 on n2; 0.2.0 on n1 (finish the rolling upgrade)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains("config differs: group \"g\" is defined differently: x\n"),
            "{table}"
        );
    }
}
