//! The HTTP endpoint (read-only): `/metrics`, `/healthz`, `/api/v1/status`,
//! `/api/v1/events`.

use crate::runtime::Shared;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// A heartbeat older than this makes `/healthz` answer 503.
const STALL: Duration = Duration::from_secs(2);

/// Serves until the process exits; one task per connection.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!("accept on the HTTP endpoint failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                // Encoding 10,000 resources' metrics takes tens of milliseconds of CPU: do it on
                // a blocking thread so that no check on the runtime waits behind a scrape.
                async move {
                    let response = tokio::task::spawn_blocking(move || respond(&req, &shared))
                        .await
                        .unwrap_or_else(|_| {
                            plain(StatusCode::INTERNAL_SERVER_ERROR, "the handler panicked\n")
                        });
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
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
            let metrics = shared.sink.metrics();
            if wants_openmetrics {
                body(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode_openmetrics(),
                )
            } else {
                body(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.encode_text(),
                )
            }
        }
        "/healthz" => {
            let age = shared.heartbeat_age();
            if age > STALL {
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "scheduler stalled: last heartbeat {:.1}s ago\n",
                        age.as_secs_f64()
                    ),
                )
            } else {
                plain(StatusCode::OK, "ok\n")
            }
        }
        "/api/v1/status" => json(&shared.status.snapshot(shared.coordinator.view())),
        "/api/v1/events" => json(&shared.sink.recent()),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /api/v1/status or /api/v1/events\n",
        ),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string(value) {
        Ok(text) => body(StatusCode::OK, "application/json", text),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode: {e}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", text.to_string())
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
