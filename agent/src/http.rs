//! The HTTP endpoint (read-only): `/metrics`, `/healthz`, `/api/v1/status`,
//! `/api/v1/events`.

use crate::runtime::Views;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::time::Duration;

/// What every answer carries: whole, or (the metrics) streamed as it is encoded.
type Body = BoxBody<Bytes, std::convert::Infallible>;

/// A heartbeat older than this makes `/healthz` answer 503.
const STALL: Duration = Duration::from_secs(2);

/// Serves until the process exits, within [`crate::listen::HTTP`].
pub async fn serve(listener: tokio::net::TcpListener, views: Views) {
    let metrics = views.sink.metrics_handle();
    let handle = move |req: Request<Incoming>| {
        let views = views.clone();
        // Encoding 10,000 resources' metrics takes tens of milliseconds of CPU: do it on a
        // blocking thread so that no check on the runtime waits behind a scrape.
        async move {
            tokio::task::spawn_blocking(move || respond(&req, &views))
                .await
                .unwrap_or_else(|_| {
                    plain(StatusCode::INTERNAL_SERVER_ERROR, "the handler panicked\n")
                })
        }
    };
    crate::listen::serve(listener, crate::listen::HTTP, metrics, handle).await;
}

fn respond(req: &Request<Incoming>, views: &Views) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let wants_openmetrics = req
                .headers()
                .get(ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let content_type = if wants_openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            with_content_type(
                Response::new(metrics_stream(views, wants_openmetrics)),
                StatusCode::OK,
                content_type,
            )
        }
        "/healthz" => {
            let (scheduler, age) = views.heartbeats.oldest();
            if age > STALL {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "scheduler stalled: {scheduler} last proved it runs {:.1}s ago\n",
                        age.as_secs_f64()
                    ),
                )
            } else {
                plain(StatusCode::OK, "ok\n")
            }
        }
        "/api/v1/status" => json(
            &views
                .status
                .snapshot(views.coordinator.view(), views.maintenance.snapshot()),
        ),
        "/api/v1/events" => json(&views.sink.recent()),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /api/v1/status or /api/v1/events\n",
        ),
    }
}

/// The metrics, encoded chunk by chunk on a blocking thread (a scrape of 10,000 resources is
/// tens of milliseconds of CPU, which no check on the runtime should wait behind) and sent as
/// they come: with two chunks in flight at most, a scrape holds about 200 KB instead of the
/// whole 10 MB text. A client that goes away stops the encoding.
fn metrics_stream(views: &Views, openmetrics: bool) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let metrics = views.sink.metrics_handle();
    metrics.heartbeat_age(views.heartbeats.oldest().1);
    tokio::task::spawn_blocking(move || {
        for chunk in metrics.encode_chunks(openmetrics) {
            if tx.blocking_send(Bytes::from(chunk)).is_err() {
                return;
            }
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    StreamBody::new(frames).boxed()
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(text) => body(StatusCode::OK, "application/json", text),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode: {e}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    body(status, "text/plain; charset=utf-8", text.to_string())
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    with_content_type(
        Response::new(Full::new(Bytes::from(text)).boxed()),
        status,
        content_type,
    )
}

fn with_content_type(
    mut response: Response<Body>,
    status: StatusCode,
    content_type: &'static str,
) -> Response<Body> {
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::runtime::threads::Heartbeats;
    use crate::runtime::Shared;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// A stalled scheduler leaves this endpoint answering (it runs on the main runtime, a
    /// stalled check thread does not hold it): what it answers must say so.
    #[tokio::test]
    async fn a_stalled_scheduler_shows_in_healthz_and_in_the_metrics() {
        let mut views = Shared::new(Arc::new(Metrics::new()), "test".into()).views();
        let five_seconds_ago = std::time::Instant::now() - Duration::from_secs(5);
        views.heartbeats = Arc::new(Heartbeats::last_beaten_at(0, five_seconds_ago));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, views));

        let health = get(address, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(
            health.contains("scheduler stalled: the main runtime last proved it runs 5."),
            "{health}"
        );
        let metrics = get(address, "/metrics").await;
        let age: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("resmon_heartbeat_age_seconds "))
            .unwrap_or_else(|| panic!("no heartbeat age in {metrics}"))
            .parse()
            .unwrap();
        assert!((5.0..10.0).contains(&age), "{age}");
    }
}
