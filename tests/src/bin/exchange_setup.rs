//! `resmon-exchange-setup [--cluster] DIR`: writes what `examples/exchange.toml` (or, with
//! `--cluster`, `examples/exchange-cluster.toml`) needs under DIR: a test CA, and dovecot,
//! postfix and nginx configs on the example's addresses and ports, with the same code the
//! end-to-end tests use.

use resmon_e2e::servers::{self, TestPki};

/// Writes the test CA and the dovecot, postfix and nginx configs that `examples/exchange.toml`
/// needs under DIR (with `--cluster`: those of `examples/exchange-cluster.toml`, each virtual
/// server's and the MTA's under a directory of their own, on their addresses), and prints the
/// command that runs each server.
#[derive(clap::Parser)]
#[command(name = "resmon-exchange-setup")]
struct Args {
    /// The two virtual servers and the MTA of `examples/exchange-cluster.toml`.
    #[arg(long)]
    cluster: bool,
    /// Where the CA and the servers' configs go.
    dir: Option<std::path::PathBuf>,
}

fn main() {
    let Args { cluster, dir } = clap::Parser::parse();
    let dir = dir.unwrap_or_else(|| {
        if cluster {
            "/tmp/resmon-exchange-cluster".into()
        } else {
            "/tmp/resmon-exchange".into()
        }
    });
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "resmon-exchange-setup: cannot create {}: {e}",
            dir.display()
        );
        std::process::exit(1);
    }
    let pki = TestPki::new(&dir);
    let made = if cluster {
        servers::exchange_cluster(&dir, &pki)
    } else {
        vec![
            servers::dovecot_config_on(&dir, &pki, [24143, 24993, 24110, 24995]),
            servers::postfix_config_on(&dir, &pki, 24025, 24465),
            servers::nginx_config_on(&dir, &pki, 24080, 24443),
        ]
    };
    for server in made {
        println!("{}", server.command.join(" "));
    }
}
