//! Connection helpers shared by the network resource types.

use crate::config::HostPort;
use crate::resource::{Failure, Progress, Stage};
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens a TCP connection to `target`, in [`Stage::Connect`] so that a deadline passing now
/// reads as `connect_timeout`.
pub async fn connect(target: &HostPort, progress: &Progress) -> Result<TcpStream, Failure> {
    progress.stage(Stage::Connect);
    let connected = match target.ip() {
        Some(ip) => TcpStream::connect(std::net::SocketAddr::new(ip, target.port)).await,
        None => TcpStream::connect((target.host.as_str(), target.port)).await,
    };
    let stream = connected.map_err(|e| Failure::from_io(&format!("connect {target}"), &e))?;
    progress.stage(Stage::Other);
    Ok(stream)
}

/// Turns Nagle off before a TLS handshake, whose flights may go out in several small writes.
/// Plain exchanges write once per answer received, which Nagle never delays, so they are
/// spared the system call (10,000 checks a second count them).
pub fn before_tls(stream: TcpStream) -> TcpStream {
    let _ = stream.set_nodelay(true);
    stream
}

/// Makes the coming close send a reset instead of a FIN. Best effort: a failure only costs a
/// `TIME_WAIT` entry. (A zero linger never blocks, unlike the linger tokio deprecates.)
pub fn close_with_reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
