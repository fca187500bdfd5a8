//! A short seeded fault-injection run (`resmon_e2e::nemesis`): 3 agents with played watchdogs,
//! 3 etcd members, 5 groups, about 90 s of random faults. Never two holders of one VIP, and
//! every group back at the end. `RESMON_NEMESIS_SEED` replays a schedule.

#[test]
fn random_faults_never_put_a_group_on_two_nodes() {
    let seed = std::env::var("RESMON_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261206);
    let report = resmon_e2e::nemesis::run(&resmon_e2e::nemesis::Options {
        seed,
        duration: std::time::Duration::from_secs(90),
        groups: 5,
    });
    report.print();
    assert!(
        report.overlap_total.is_zero(),
        "two nodes held one VIP for {:?} (seed {seed}): {:?}",
        report.overlap_total,
        &report.overlaps[..report.overlaps.len().min(10)]
    );
    assert!(
        report.never_back.is_empty(),
        "never came back (seed {seed}): {:?}",
        report.never_back
    );
    assert!(
        report.faults.values().sum::<usize>() >= 5,
        "{:?}",
        report.faults
    );
}
