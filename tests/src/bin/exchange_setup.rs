//! `resmon-exchange-setup DIR`: writes what `examples/exchange.toml` needs under DIR (a test CA,
//! and dovecot, postfix and nginx configs on the example's fixed loopback ports), with the same
//! code the end-to-end tests use.

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/resmon-exchange".into()),
    );
    std::fs::create_dir_all(&dir).expect("create the directory");
    let pki = resmon_e2e::servers::TestPki::new(&dir);
    let dovecot = resmon_e2e::servers::dovecot_config_on(&dir, &pki, [24143, 24993, 24110, 24995]);
    let postfix = resmon_e2e::servers::postfix_config_on(&dir, &pki, 24025, 24465);
    let nginx = resmon_e2e::servers::nginx_config_on(&dir, &pki, 24080, 24443);
    for server in [dovecot, postfix, nginx] {
        println!("{}", server.command.join(" "));
    }
}
