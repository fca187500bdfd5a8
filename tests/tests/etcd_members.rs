//! etcd as users run it: three members, each in a namespace of its own, and three agents that
//! know all three endpoints. The observer in the hub samples every 50 ms who holds the VIP:
//! never two. Killing the leader and partitioning one member move nothing; losing quorum
//! longer than the fence window fences every owner (nothing runs, nothing runs twice), and the
//! group comes back with quorum.

use resmon_e2e::cluster::{Cluster, Observer, Sample};
use resmon_e2e::{event_time, unix_now, Agent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);
/// The shipped default, longer than the single-etcd tests' 2 s: a member cut off while it leads
/// costs the others an election (election timeout 500 ms here, up to twice that with its
/// random spread) on top of the agent noticing (a renewal unanswered for a quarter of the TTL)
/// and reaching another member, all within the fence window (TTL - fence_margin). With 2 s the
/// leader's cut fenced the owner; with 4 s, one run in four.
const TTL: &str = "5s";

fn start(cluster: &Cluster, node: &str) -> Agent {
    let extra = "failover_threshold = 100\nfailover_period = \"1h\"\nfailback = \"never\"";
    cluster.start_agent(
        node,
        &cluster.agent_config(node, TTL, &cluster.web_group(node, extra)),
    )
}

fn events_since(agent: &Agent, name: &str, since: f64) -> Vec<serde_json::Value> {
    agent
        .events_of(name, "")
        .into_iter()
        .filter(|e| event_time(e) >= since)
        .collect()
}

fn never_two(samples: &[Sample]) {
    let doubles: Vec<&Sample> = samples.iter().filter(|s| s.holders.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "two nodes held the VIP at once: {:?}",
        &doubles[..doubles.len().min(5)]
    );
}

/// What an agent logged since `since`, for a failure's message.
fn story(agent: &Agent, since: f64) -> String {
    agent
        .events()
        .iter()
        .filter(|e| event_time(e) >= since)
        .map(|e| {
            format!(
                "\n  {} {} {}",
                e["ts"].as_str().unwrap_or(""),
                e["event"].as_str().unwrap_or(""),
                e["why"].as_str().or(e["message"].as_str()).unwrap_or("")
            )
        })
        .collect()
}

/// Samples in which nobody answered on the VIP, as a duration.
fn unanswered(samples: &[Sample]) -> Duration {
    Duration::from_millis(50) * samples.iter().filter(|s| s.answer.is_none()).count() as u32
}

#[test]
fn three_members_lose_a_leader_a_partition_and_quorum_and_nothing_runs_twice() {
    let cluster = Arc::new(Cluster::with_members(3, 3));
    let mut agents: BTreeMap<String, Agent> = BTreeMap::new();
    for node in cluster.nodes.clone() {
        agents.insert(node.clone(), start(&cluster, &node));
    }
    cluster.wait_answer("n1", LONG);

    // 1. The leader is killed: the two others elect a new one; nothing moves.
    let observer = Observer::start(&cluster);
    let since = unix_now();
    let leader = cluster.leader().expect("a leader");
    cluster.kill_member(leader);
    std::thread::sleep(Duration::from_secs(6));
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    let samples = observer.finish();
    never_two(&samples);
    let moved: Vec<&Sample> = samples.iter().filter(|s| s.holders != ["n1"]).collect();
    assert!(
        moved.is_empty(),
        "the group moved when the etcd leader e{leader} died: {} samples, the first {:?}; n1: {}",
        moved.len(),
        moved.first(),
        story(&agents["n1"], since)
    );
    for agent in agents.values() {
        assert!(events_since(agent, "self_fenced", since).is_empty());
    }
    println!(
        "leader e{leader} killed: e{new_leader} leads; the VIP unanswered for {:?} of {:.1} s",
        unanswered(&samples),
        samples.last().unwrap().at.as_secs_f64()
    );
    cluster.start_member(leader);
    cluster.wait_healthy();

    // 2. The member each agent may be talking to is cut off, one at a time: the agents use
    //    the others; nothing moves.
    for k in 1..=3 {
        let observer = Observer::start(&cluster);
        let since = unix_now();
        cluster.cut_member(k);
        std::thread::sleep(Duration::from_secs(6));
        cluster.mend_member(k);
        cluster.wait_healthy();
        let samples = observer.finish();
        never_two(&samples);
        let moved: Vec<&Sample> = samples.iter().filter(|s| s.holders != ["n1"]).collect();
        assert!(
            moved.is_empty(),
            "the group moved when member e{k} was cut off: {} samples, the first {:?}; n1: {:?}",
            moved.len(),
            moved.first(),
            story(&agents["n1"], since)
        );
        for (node, agent) in &agents {
            let fenced = events_since(agent, "self_fenced", since);
            assert!(
                fenced.is_empty(),
                "{node} fenced with e{k} cut: {}",
                story(agent, since)
            );
        }
        println!(
            "member e{k} cut for 6 s: nothing moved; the VIP unanswered for {:?}",
            unanswered(&samples)
        );
    }

    // 3. Quorum lost (two members cut) for longer than the fence window: every owner fences,
    //    nothing runs anywhere, nothing runs twice; with quorum back, the group comes back.
    let observer = Observer::start(&cluster);
    let since = unix_now();
    let cut_at = Instant::now();
    cluster.cut_member(1);
    cluster.cut_member(2);
    agents["n1"].wait_for("n1 to fence", LONG, |a| {
        !events_since(a, "self_fenced", since).is_empty()
    });
    let fenced_after = cut_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        cluster.holders().is_empty(),
        "a node holds the VIP without quorum: {:?}",
        cluster.holders()
    );
    cluster.mend_member(1);
    cluster.mend_member(2);
    cluster.wait_healthy();
    let mended = Instant::now();
    let deadline = Instant::now() + LONG;
    while cluster.answer().is_none() {
        assert!(Instant::now() < deadline, "the group did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let back_after = mended.elapsed();
    let samples = observer.finish();
    never_two(&samples);
    println!(
        "quorum lost: n1 fenced {fenced_after:?} after the cut; the group answered again \
         {back_after:?} after quorum returned, from {:?}",
        cluster.answer()
    );
}
