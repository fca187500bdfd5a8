//! What both listeners (the HTTP endpoint and the control socket) share so that clients who
//! connect and never finish cannot exhaust the agent: a cap on open connections, a header-read
//! timeout, an idle timeout, a bound on a whole exchange, and a small buffer per connection.
//!
//! Reaching the cap never locks out the scraper or the administrator: a new connection makes room
//! by closing the connection that has waited longest without a request being answered (an idle
//! keep-alive, or a client still dribbling its headers); only when every connection is in an
//! exchange does it close the oldest exchange, which a slow reader holds and a scrape never does.
//! A closed connection is dropped, not drained: the client that held it gets a reset.

use crate::metrics::Metrics;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How much a listener lets its clients hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The listener's name in logs and metrics: `http` or `control`.
    pub name: &'static str,
    /// Connections open at once. Far below the agent's descriptor limit, which its checks need.
    pub connections: usize,
    /// From a connection's first byte of a request to the end of its headers.
    pub header_read: Duration,
    /// A connection with no request being answered (idle keep-alive, or headers arriving slowly)
    /// is closed after this long.
    pub idle: Duration,
    /// A whole exchange (request to the last byte of the answer); a client reading slower than
    /// this is closed.
    pub exchange: Duration,
    /// hyper's read and write buffer per connection: the longest request head accepted and what
    /// is queued for a slow reader beyond the socket's own buffer.
    pub buffer_bytes: usize,
}

/// The HTTP endpoint: Prometheus and a few people with curl. An answer streamed to a slow reader
/// holds at most the buffer plus two chunks of the exposition.
pub const HTTP: Limits = Limits {
    name: "http",
    connections: 256,
    header_read: Duration::from_secs(10),
    idle: Duration::from_secs(30),
    exchange: Duration::from_secs(60),
    buffer_bytes: 16 * 1024,
};

/// The control socket: administrators and scripts; a move waits for the coordinator.
pub const CONTROL: Limits = Limits {
    name: "control",
    connections: 64,
    header_read: Duration::from_secs(10),
    idle: Duration::from_secs(30),
    exchange: Duration::from_secs(120),
    buffer_bytes: 16 * 1024,
};

/// How often the timeouts are looked at: a connection outlives its timeout by at most this.
const SWEEP: Duration = Duration::from_millis(250);

/// Why the listener closed a connection (the `reason` label: a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The cap was reached and a newer connection needed its place.
    Evicted,
    /// No request answered within the idle timeout.
    Idle,
    /// An exchange took longer than its bound.
    Exchange,
}

impl Closed {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Evicted => "evicted",
            Closed::Idle => "idle",
            Closed::Exchange => "exchange",
        }
    }
}

/// Something that accepts connections: a TCP or a Unix listener.
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The kernel's queue of connections not yet accepted. A client that connects faster than the
/// agent accepts (tens of thousands of idle connections opened at once) fills it, and then
/// every new connection, the scraper's too, waits for the SYN to be sent again a second later:
/// the usual `somaxconn`, as Go and nginx servers ask, rather than tokio's 1,024.
const BACKLOG: u32 = 4096;

/// Binds the HTTP endpoint's listener (with `SO_REUSEADDR`, as tokio does).
pub fn bind_tcp(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Serves `handle` on every connection `listener` accepts, within `limits`, until the process
/// exits.
pub async fn serve<L, H, F, B>(listener: L, limits: Limits, metrics: Arc<Metrics>, handle: H)
where
    L: Listener,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let table = Table::new(limits, metrics);
    tokio::spawn(sweep(Arc::downgrade(&table)));
    loop {
        let stream = match listener.next().await {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!("accept on the {} listener failed: {e}", limits.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (id, close) = table.open();
        let table = table.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let exchanges = table.clone();
            let service = hyper::service::service_fn(move |req| {
                let exchange = Exchange::begin(exchanges.clone(), id);
                let answer = handle(req);
                async move {
                    let response = answer.await;
                    Ok::<_, std::convert::Infallible>(response.map(|inner| Tracked {
                        inner,
                        _exchange: exchange,
                    }))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .max_buf_size(limits.buffer_bytes)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                // Dropping the connection closes its socket.
                () = close.notified() => {}
            }
            table.remove(id);
        });
    }
}

/// The connections a listener holds.
struct Table {
    limits: Limits,
    metrics: Arc<Metrics>,
    inner: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    next: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Whether a request is being answered.
    busy: bool,
    /// When it became idle or busy.
    since: Instant,
    /// Told when the listener closes it.
    close: Arc<Notify>,
}

impl Table {
    fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Table> {
        metrics.listener_connections(limits.name, 0);
        Arc::new(Table {
            limits,
            metrics,
            inner: Mutex::new(Slots::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, closing another first when at the cap.
    fn open(&self) -> (u64, Arc<Notify>) {
        let mut slots = self.lock();
        if slots.open.len() >= self.limits.connections {
            // Idle ones first (`busy` false sorts first), the oldest of them.
            let victim = slots
                .open
                .iter()
                .min_by_key(|(_, slot)| (slot.busy, slot.since))
                .map(|(id, _)| *id);
            if let Some(victim) = victim {
                self.close(&mut slots, victim, Closed::Evicted);
            }
        }
        let id = slots.next;
        slots.next += 1;
        let close = Arc::new(Notify::new());
        slots.open.insert(
            id,
            Slot {
                busy: false,
                since: Instant::now(),
                close: close.clone(),
            },
        );
        self.metrics
            .listener_connections(self.limits.name, slots.open.len());
        (id, close)
    }

    fn close(&self, slots: &mut Slots, id: u64, why: Closed) {
        if let Some(slot) = slots.open.remove(&id) {
            // A permit is stored if the task is not waiting yet: the close is never lost.
            slot.close.notify_one();
            self.metrics.listener_closed(self.limits.name, why);
            tracing::debug!(
                listener = self.limits.name,
                reason = why.as_str(),
                "closed a connection"
            );
        }
    }

    fn remove(&self, id: u64) {
        let mut slots = self.lock();
        slots.open.remove(&id);
        self.metrics
            .listener_connections(self.limits.name, slots.open.len());
    }

    fn mark(&self, id: u64, busy: bool) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.busy = busy;
            slot.since = Instant::now();
        }
    }

    /// Closes every connection past its timeout.
    fn expire(&self, now: Instant) {
        let mut slots = self.lock();
        let expired: Vec<(u64, Closed)> = slots
            .open
            .iter()
            .filter_map(|(id, slot)| {
                let age = now.saturating_duration_since(slot.since);
                match slot.busy {
                    false if age > self.limits.idle => Some((*id, Closed::Idle)),
                    true if age > self.limits.exchange => Some((*id, Closed::Exchange)),
                    _ => None,
                }
            })
            .collect();
        for (id, why) in expired {
            self.close(&mut slots, id, why);
        }
        self.metrics
            .listener_connections(self.limits.name, slots.open.len());
    }
}

async fn sweep(table: std::sync::Weak<Table>) {
    let mut every = tokio::time::interval(SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(table) = table.upgrade() else { return };
        table.expire(Instant::now());
    }
}

/// A request being answered, until its answer's body is dropped (sent or abandoned).
struct Exchange {
    table: Arc<Table>,
    id: u64,
}

impl Exchange {
    fn begin(table: Arc<Table>, id: u64) -> Exchange {
        table.mark(id, true);
        Exchange { table, id }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.table.mark(self.id, false);
    }
}

/// An answer's body that ends its [`Exchange`] when dropped.
struct Tracked<B> {
    inner: B,
    _exchange: Exchange,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const SMALL: Limits = Limits {
        name: "http",
        connections: 4,
        header_read: Duration::from_millis(400),
        idle: Duration::from_millis(600),
        exchange: Duration::from_millis(800),
        buffer_bytes: 8192,
    };

    /// Answers `/slow` with a body that never ends, anything else with "ok".
    async fn start() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let handle = |req: Request<Incoming>| async move {
            if req.uri().path() == "/slow" {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
                tokio::spawn(async move {
                    while tx.send(Bytes::from(vec![b'x'; 65536])).await.is_ok() {}
                });
                let frames = futures::stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
                });
                Response::new(http_body_util::BodyExt::boxed(
                    http_body_util::StreamBody::new(frames),
                ))
            } else {
                Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::from("ok"))))
            }
        };
        tokio::spawn(serve(listener, SMALL, Arc::new(Metrics::new()), handle));
        address
    }

    async fn get(address: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Whether the server has closed `stream` (end of file or a reset), within `within`.
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let address = start().await;
        let mut idle = Vec::new();
        for _ in 0..SMALL.connections {
            idle.push(TcpStream::connect(address).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The cap is reached: a scrape still gets its answer, and the oldest idle one went.
        assert!(get(address).await.ends_with("ok"));
        assert!(closed(&mut idle[0], Duration::from_millis(300)).await);
        assert!(!closed(&mut idle[SMALL.connections - 1], Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn a_client_dribbling_its_headers_is_closed() {
        let address = start().await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut gone = false;
        for _ in 0..20 {
            if slow.write_all(b"X-A: b\r\n").await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone = gone || closed(&mut slow, Duration::from_millis(500)).await;
        assert!(gone, "still open after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_is_closed_after_the_idle_timeout() {
        let address = start().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("ok"));
        assert!(!closed(&mut stream, SMALL.idle / 2).await);
        assert!(closed(&mut stream, SMALL.idle + SWEEP * 2).await);
    }

    #[tokio::test]
    async fn a_reader_slower_than_the_exchange_bound_is_closed() {
        let address = start().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        // Reads nothing while the bound passes, then finds the connection gone.
        tokio::time::sleep(SMALL.exchange + SWEEP * 2).await;
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => received += n,
                Err(_) => panic!("still streaming after {received} bytes"),
            }
        }
        // What it got is what sat in the buffers, not an endless stream.
        assert!(received < 16 << 20, "{received}");
    }
}
