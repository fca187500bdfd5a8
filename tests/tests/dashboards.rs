//! The shipped Grafana dashboards: their JSON type-checks against Grafana's own dashboard schema
//! (npm `@grafana/schema`, checked by TypeScript; the test script installs both under
//! `target/grafana-schema`), and every panel query, run against a real Prometheus that has
//! scraped a running agent, returns data.

use resmon_e2e::servers::{self, TestPki};
use resmon_e2e::{free_port, http_get, testd, Agent};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            ));
        }
    }
    assert!(
        out.len() >= 2,
        "an overview and a resource detail dashboard"
    );
    out
}

#[test]
fn dashboards_type_check_against_grafanas_schema() {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/grafana-schema");
    let tsc = schema.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "{} is missing: run ./scripts/test, which installs @grafana/schema and typescript there",
        tsc.display()
    );
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, json) in dashboards() {
        let file = schema.join(format!("{name}.ts"));
        std::fs::write(
            &file,
            format!("import {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {};\n", serde_json::to_string_pretty(&json).unwrap()),
        )
        .unwrap();
        files.push(file);
    }
    let out = std::process::Command::new(&tsc)
        .current_dir(&schema)
        .args([
            "--noEmit",
            "--strict",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--target",
            "es2020",
            "--skipLibCheck",
        ])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The check can fail: a misspelt panel key is caught.
    let bad = schema.join("misspelt.ts");
    std::fs::write(
        &bad,
        "import { Dashboard } from '@grafana/schema';\nexport const d: Dashboard = { schemaVersion: 39, panels: [{ type: 'stat', gridPosition: { h: 1, w: 1, x: 0, y: 0 } }] };\n",
    )
    .unwrap();
    let out = std::process::Command::new(&tsc)
        .current_dir(&schema)
        .args([
            "--noEmit",
            "--strict",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--skipLibCheck",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("gridPosition"));
}

#[test]
fn every_panel_query_returns_data_from_a_prometheus_that_scraped_the_agent() {
    let base = tempfile::tempdir().unwrap();
    let pki = TestPki::new(base.path());
    let nginx = servers::nginx(base.path(), &pki);
    let closed = free_port();
    // Something of every kind: a process that keeps exiting (restarts, failure signals), a port
    // nothing listens on (check failures), an HTTPS check (certificate expiry), a disk.
    let body = format!(
        r#"[[groups]]
name = "web"

[[groups.resources]]
name = "flaky"
type = "process"
command = ["{testd}", "--exit-after", "700"]
restart_threshold = 1000
restart_period = "1m"
flap_damping = {{ suppress = 1000000, reuse = 500000 }}

[[groups.resources]]
name = "https"
type = "http"
url = "https://localhost:{https}/"
tls_options = {{ ca_file = {ca:?} }}
is_alive_interval = "1s"
check_timeout = "1s"

[[groups.resources]]
name = "root"
type = "disk"
path = "/"
canary = false
is_alive_interval = "1s"

[[groups.resources]]
name = "nothing"
type = "tcp"
address = "127.0.0.1:{closed}"
restart_threshold = 1000
restart_period = "1m"
"#,
        testd = testd(),
        https = nginx.port("https"),
        ca = pki.ca.display().to_string(),
    );
    let agent = Agent::start(&body);
    agent.wait_state("web", "https", "online", Duration::from_secs(20));

    let prom_port = free_port();
    let prom_dir = base.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: resmon\n    static_configs:\n      - targets: ['{}']\n", agent.address),
    )
    .unwrap();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(prom_dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package) is installed by the test script");
    let guard = KillOnDrop(&mut prometheus);
    let address = format!("127.0.0.1:{prom_port}");
    // Enough scrapes for rate() and increase() over their windows to have two points.
    std::thread::sleep(Duration::from_secs(12));

    let mut empty = Vec::new();
    let mut checked = 0;
    for (name, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$group", ".*")
                    .replace("$resource", ".*");
                let (code, body) =
                    http_get(&address, &format!("/api/v1/query?query={}", encode(&expr))).unwrap();
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                checked += 1;
                let results = answer["data"]["result"].as_array().map_or(0, |r| r.len());
                if code != 200 || answer["status"] != "success" || results == 0 {
                    empty.push(format!("{name}: {}: {expr}: {body}", panel["title"]));
                }
            }
        }
    }
    drop(guard);
    assert!(checked >= 15);
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
