//! `resmon-exchange-setup DIR`: writes what `examples/exchange.toml` needs under DIR (a test CA,
//! and dovecot, postfix and nginx configs on the example's fixed loopback ports), with the same
//! code the end-to-end tests use.

/// Writes the test CA and the dovecot, postfix and nginx configs that `examples/exchange.toml`
/// needs under DIR, and prints the command that runs each server.
#[derive(clap::Parser)]
#[command(name = "resmon-exchange-setup")]
struct Args {
    /// Where the CA and the servers' configs go.
    #[arg(default_value = "/tmp/resmon-exchange")]
    dir: std::path::PathBuf,
}

fn main() {
    let Args { dir } = clap::Parser::parse();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "resmon-exchange-setup: cannot create {}: {e}",
            dir.display()
        );
        std::process::exit(1);
    }
    let pki = resmon_e2e::servers::TestPki::new(&dir);
    let dovecot = resmon_e2e::servers::dovecot_config_on(&dir, &pki, [24143, 24993, 24110, 24995]);
    let postfix = resmon_e2e::servers::postfix_config_on(&dir, &pki, 24025, 24465);
    let nginx = resmon_e2e::servers::nginx_config_on(&dir, &pki, 24080, 24443);
    for server in [dovecot, postfix, nginx] {
        println!("{}", server.command.join(" "));
    }
}
