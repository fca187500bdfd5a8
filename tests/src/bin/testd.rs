//! `resmon-testd`: a small daemon the end-to-end tests supervise as a `process` resource.
//!
//! `resmon-testd [--listen ADDR] [--ignore-term] [--stop-delay MS] [--exit-after MS]
//! [--banner TEXT] [--http]`: listens on ADDR (answering each connection with TEXT and closing
//! it; with `--http`, reading the request first and answering `200 OK` with TEXT as the body),
//! ignores SIGTERM or takes MS milliseconds to stop on it when asked, and exits with status 3
//! after MS milliseconds when asked.

use std::io::Write;
use std::time::Duration;

/// A small daemon for the end-to-end tests to supervise: it listens, answers, and misbehaves
/// when asked.
#[derive(clap::Parser)]
#[command(name = "resmon-testd")]
struct Args {
    /// Listens here (host:port) and answers each connection with the banner, then closes it;
    /// without it, only sleeps.
    #[arg(long)]
    listen: Option<String>,
    /// Ignores SIGTERM, as a hung service would.
    #[arg(long)]
    ignore_term: bool,
    /// On SIGTERM, goes on serving this many milliseconds before it exits, as a service that
    /// takes seconds to stop.
    #[arg(long)]
    stop_delay: Option<u64>,
    /// Exits with status 3 after this many milliseconds.
    #[arg(long)]
    exit_after: Option<u64>,
    /// What each connection is answered with.
    #[arg(
        long,
        default_value = "hello\r\n",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    banner: String,
    /// Reads the request first and answers `HTTP/1.0 200 OK` with the banner as the body.
    #[arg(long)]
    http: bool,
}

fn main() {
    let Args {
        listen,
        ignore_term,
        stop_delay,
        exit_after,
        banner,
        http,
    } = clap::Parser::parse();
    // SAFETY: setting signal dispositions before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if ignore_term {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    if let Some(ms) = stop_delay {
        // SIGTERM blocked here, before any thread starts, so that every thread inherits the
        // mask and only the waiting thread takes it.
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.thread_block().expect("block SIGTERM");
        std::thread::spawn(move || {
            let _ = set.wait();
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(0);
        });
    }
    if let Some(ms) = exit_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(3);
        });
    }
    match listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(&addr).unwrap_or_else(|e| {
                eprintln!("resmon-testd: cannot listen on {addr}: {e}");
                std::process::exit(1);
            });
            let answer = if http {
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{banner}",
                    banner.len()
                )
            } else {
                banner
            };
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                if http {
                    // Read the request head, so that closing does not reset the connection.
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match std::io::Read::read(&mut conn, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                }
                let _ = conn.write_all(answer.as_bytes());
            }
        }
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}
