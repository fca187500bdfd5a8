//! The packages: `scripts/package` builds a .deb and an .rpm (the test script runs it first); the .deb installs with `dpkg -i`,
//! its `resmon validate` and its binary work on its own config, a local change to the conffile
//! survives an upgrade, and a purge leaves nothing behind; lintian reports no error; `rpm -qpl`
//! lists the expected files; the installed binary is the one the end-to-end tests ran. Installs on this machine: run as root (CI is).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The packages `scripts/package` built into `dir` (the test script builds them before the
/// tests: a build inside `cargo test` would wait on cargo's own lock).
fn package(dir: &str) -> (PathBuf, PathBuf) {
    let dir = root().join(dir);
    let find = |ext: &str| {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| {
                panic!(
                    "no .{ext} in {}: run ./scripts/test (or ./scripts/package)",
                    dir.display()
                )
            })
    };
    (find("deb"), find("rpm"))
}

const FILES: &[&str] = &[
    "/usr/bin/resmon",
    "/etc/resmon/resmon.toml",
    "/usr/share/resmon/dashboards/resmon-overview.json",
    "/usr/share/resmon/dashboards/resmon-resource.json",
    "/usr/share/resmon/dashboards/provisioning.yaml",
    "/usr/share/resmon/prometheus-scrape.yml",
    "/usr/share/man/man1/resmon.1.gz",
    "/usr/share/bash-completion/completions/resmon",
    "/usr/share/doc/resmon/manual/configuration.md",
];

#[test]
fn the_deb_installs_runs_upgrades_and_purges_cleanly_and_the_rpm_lists_its_files() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "installing packages needs root (CI runs as root)"
    );
    let (deb, rpm) = package("target/packaging");

    let listing = run(Command::new("rpm").arg("-qpl").arg(&rpm));
    for f in FILES
        .iter()
        .chain(&["/usr/lib/systemd/system/resmon.service"])
    {
        assert!(
            listing.lines().any(|l| l == *f),
            "{f} not in the rpm:\n{listing}"
        );
    }
    let config_files = run(Command::new("rpm")
        .arg("-qp")
        .arg("--configfiles")
        .arg(&rpm));
    assert!(
        config_files.contains("/etc/resmon/resmon.toml"),
        "{config_files}"
    );

    let lintian = Command::new("lintian")
        .arg(&deb)
        .output()
        .expect("lintian (installed by the test script)");
    let report = String::from_utf8_lossy(&lintian.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));

    let _ = Command::new("dpkg").args(["--purge", "resmon"]).output();
    run(Command::new("dpkg").arg("-i").arg(&deb));
    for f in FILES {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    assert!(
        Path::new("/lib/systemd/system/resmon.service").exists()
            || Path::new("/usr/lib/systemd/system/resmon.service").exists()
    );
    run(Command::new("getent").args(["passwd", "resmon"]));
    // The config may hold secrets: root:resmon, 0640.
    let conf = run(Command::new("stat").args(["-c", "%a %U:%G", "/etc/resmon/resmon.toml"]));
    assert_eq!(
        conf.trim(),
        "640 root:resmon",
        "the shipped config's mode and owner"
    );
    // The shipped binary is the tested one: the package installs target/release/resmon byte
    // for byte, and the test script runs the end-to-end suite against that file.
    let shipped = std::fs::read("/usr/bin/resmon").unwrap();
    let built = std::fs::read(root().join("target/release/resmon")).unwrap();
    assert!(
        shipped == built,
        "/usr/bin/resmon differs from target/release/resmon (the binary the tests ran)"
    );
    let validated = run(Command::new("/usr/bin/resmon").args([
        "validate",
        "--config",
        "/etc/resmon/resmon.toml",
    ]));
    assert!(validated.contains("ok (0 groups"), "{validated}");

    // The installed binary runs on the installed config (its default listen address).
    let mut agent = Command::new("/usr/bin/resmon")
        .args(["run", "--config", "/etc/resmon/resmon.toml"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok((200, _)) = resmon_e2e::http_get("127.0.0.1:9477", "/healthz") {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    assert!(healthy, "the installed agent did not answer /healthz");
    assert!(status.success());

    // Upgrade: a local change to the conffile survives.
    let mut conf = std::fs::read_to_string("/etc/resmon/resmon.toml").unwrap();
    conf.push_str("\n# local change\n");
    std::fs::write("/etc/resmon/resmon.toml", &conf).unwrap();
    let (newer, _) = package("target/packaging/rev2");
    run(Command::new("dpkg")
        .args(["-i", "--force-confold"])
        .arg(&newer));
    assert!(std::fs::read_to_string("/etc/resmon/resmon.toml")
        .unwrap()
        .contains("# local change"));
    let version = run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "resmon"]));
    assert!(version.ends_with("-2"), "{version}");

    run(Command::new("dpkg").args(["--purge", "resmon"]));
    for f in [
        "/usr/bin/resmon",
        "/etc/resmon/resmon.toml",
        "/var/lib/resmon",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    assert!(
        !Command::new("getent")
            .args(["passwd", "resmon"])
            .status()
            .unwrap()
            .success(),
        "user left after purge"
    );
}
