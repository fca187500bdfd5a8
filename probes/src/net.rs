//! Connection helpers shared by the network resource types.

use crate::config::HostPort;
use crate::resource::{Failure, Progress, Stage};
use resmon_policies::FailureReason;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Opens a TCP connection to `target`. A host name is resolved first, in [`Stage::Resolve`], and
/// its failure is `dns`, not a connection failure: the operator looks at the name service, not
/// at the server. Each address is tried in turn (as `TcpStream::connect` does), in
/// [`Stage::Connect`], so that a deadline passing then reads as `connect_timeout`.
pub async fn connect(target: &HostPort, progress: &Progress) -> Result<TcpStream, Failure> {
    let stream = match target.ip() {
        Some(ip) => {
            progress.stage(Stage::Connect);
            connect_to(target, SocketAddr::new(ip, target.port)).await?
        }
        None => connect_by_name(target, progress).await?,
    };
    progress.stage(Stage::Other);
    Ok(stream)
}

async fn connect_by_name(target: &HostPort, progress: &Progress) -> Result<TcpStream, Failure> {
    progress.stage(Stage::Resolve);
    let addresses = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            Failure::new(
                FailureReason::Dns,
                format!("resolve {:?}: {e}", target.host),
            )
        })?;
    progress.stage(Stage::Connect);
    let mut last = None;
    for address in addresses {
        match connect_to(target, address).await {
            Ok(stream) => return Ok(stream),
            Err(failure) => last = Some(failure),
        }
    }
    Err(last.unwrap_or_else(|| {
        Failure::new(
            FailureReason::Dns,
            format!("resolve {:?}: no address", target.host),
        )
    }))
}

/// One connection attempt; the failure names the address when `target` is a name.
async fn connect_to(target: &HostPort, address: SocketAddr) -> Result<TcpStream, Failure> {
    TcpStream::connect(address).await.map_err(|e| {
        let context = match target.ip() {
            Some(_) => format!("connect {target}"),
            None => format!("connect {target} ({address})"),
        };
        Failure::from_io(&context, &e)
    })
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
