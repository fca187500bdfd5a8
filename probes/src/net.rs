//! Connection helpers shared by the network resource types.

use crate::resource::{Failure, Progress, Stage};
use crate::values::HostPort;
use resmon_policies::FailureReason;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Opens a TCP connection to `target`. A host name is resolved first, in [`Stage::Resolve`], and
/// its failure is `dns`, not a connection failure: the operator looks at the name service, not
/// at the server. Each address is tried in turn (as `TcpStream::connect` does), in
/// [`Stage::Connect`], so that a deadline passing then reads as `connect_timeout`.
pub async fn connect(target: &HostPort, progress: &Progress) -> Result<TcpStream, Failure> {
    connect_from(target, None, progress).await
}

/// [`connect`], from `source` when given (bound before connecting, as a check from the group's
/// own address must be).
pub async fn connect_from(
    target: &HostPort,
    source: Option<IpAddr>,
    progress: &Progress,
) -> Result<TcpStream, Failure> {
    let stream = match target.ip() {
        Some(ip) => {
            progress.stage(Stage::Connect);
            connect_to(target, source, SocketAddr::new(ip, target.port)).await?
        }
        None => connect_by_name(target, source, progress).await?,
    };
    progress.stage(Stage::Other);
    Ok(stream)
}

async fn connect_by_name(
    target: &HostPort,
    source: Option<IpAddr>,
    progress: &Progress,
) -> Result<TcpStream, Failure> {
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
        // An address of the other family cannot be reached from the source.
        if source.is_some_and(|s| s.is_ipv4() != address.is_ipv4()) {
            continue;
        }
        match connect_to(target, source, address).await {
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

/// One connection attempt; the failure names the address when `target` is a name, and the
/// source when one is bound (an address this node does not hold cannot be bound).
async fn connect_to(
    target: &HostPort,
    source: Option<IpAddr>,
    address: SocketAddr,
) -> Result<TcpStream, Failure> {
    let context = match (target.ip(), source) {
        (Some(_), None) => format!("connect {target}"),
        (None, None) => format!("connect {target} ({address})"),
        (Some(_), Some(s)) => format!("connect {target} from {s}"),
        (None, Some(s)) => format!("connect {target} ({address}) from {s}"),
    };
    let Some(source) = source else {
        return TcpStream::connect(address)
            .await
            .map_err(|e| Failure::from_io(&context, &e));
    };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| Failure::from_io(&context, &e))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
        Failure::new(
            FailureReason::Io,
            format!("{context}: cannot bind to {source}: {e}"),
        )
    })?;
    socket
        .connect(address)
        .await
        .map_err(|e| Failure::from_io(&context, &e))
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

/// A check's connection: plain, or TLS from the start or from an upgrade in the middle
/// (`STARTTLS`). The TLS state is boxed: inline, it would take every check's future, plain ones
/// too, over 1 KB (see `crate::banner::BannerClient::handshake`). An enum, not a `Box<dyn ..>`,
/// which would cost every plain check an allocation.
///
/// Shutting it down only flushes: a check's connection ends with a reset when dropped
/// ([`close_with_reset`]), so a half-close (which hyper makes once an answer ends the
/// connection) would only add a system call and a FIN to every check. A TLS `close_notify`,
/// where wanted, is sent on the TLS stream itself.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Forwards one `AsyncRead`/`AsyncWrite` call to whichever stream this is.
macro_rules! forward {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Conn::Plain($s) => $call,
            Conn::Tls($s) => $call,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        forward!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        forward!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // What was written must still be on its way; the close itself is the reset.
        forward!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }
}
