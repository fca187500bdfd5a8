//! `resmon-nemesis [--seed N] [--seconds S] [--groups G]`: the fault-injection run of
//! `resmon_e2e::nemesis`, as a benchmark that prints its figures. Needs root (namespaces).
//! Exits 1 when two nodes ever held one VIP or a group never came back.

#[derive(clap::Parser)]
#[command(name = "resmon-nemesis")]
struct Args {
    /// Seeds the schedule; a failing seed replays the same faults. Default: the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Groups (each a VIP, a service and an HTTP check).
    #[arg(long, default_value_t = 5)]
    groups: usize,
}

fn main() -> std::process::ExitCode {
    let args: Args = clap::Parser::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!("nemesis: seed {seed} (replay with --seed {seed})");
    let report = resmon_e2e::nemesis::run(&resmon_e2e::nemesis::Options {
        seed,
        duration: std::time::Duration::from_secs(args.seconds),
        groups: args.groups,
    });
    report.print();
    for (at, vip, holders) in report.overlaps.iter().take(10) {
        println!(
            "  two holders at {:.2} s: {vip} on {holders:?}",
            at.as_secs_f64()
        );
    }
    if report.overlap_total.is_zero() && report.never_back.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
