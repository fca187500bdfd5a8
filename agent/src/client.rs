//! The agent's own HTTP client, for the command line: one request over a fresh HTTP/1
//! connection, to the TCP endpoint (`resmon status`) or the control socket (`resmon online`,
//! `offline`, `clear`, `move`, `events`).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};

/// A request to the agent's control socket: the status code and the body.
pub async fn control(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the agent's control socket {}: {e}",
            socket.display()
        )
    })?;
    exchange(stream, method, "resmon", path).await
}

/// A GET to the agent's TCP endpoint at `address`; the body of a 2xx answer.
pub async fn get(address: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    match exchange(stream, Method::GET, address, path).await? {
        (status, body) if status.is_success() => Ok(body),
        (status, body) => Err(format!("HTTP {status}: {body}")),
    }
}

/// One request with an empty body on `stream`; the answer's status and body.
async fn exchange<S>(
    stream: S,
    method: Method,
    host: &str,
    path: &str,
) -> Result<(StatusCode, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
