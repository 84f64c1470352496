//! The CLI's side of the API: HTTP/1.1 over the agent's Unix socket.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// What a URL path segment may not hold raw (RFC 3986 `pchar` keeps `:` and `@`), as the
/// WHATWG URL standard's path-segment set, plus the brackets of IPv6 addresses.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%')
    .add(b'[')
    .add(b']');

/// A path segment with the characters a URL path may not hold raw percent-encoded.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Why a request to the agent failed, for the CLI's exit code: the agent could not be reached
/// (or did not answer in time), refused the request (4xx), or failed at it (5xx).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the xdplb agent at {socket} (is `xdplb run` running?): {why}")]
    Unreachable { socket: String, why: String },
    #[error("the xdplb agent at {socket} did not answer within {timeout:?} (--timeout)")]
    Timeout { socket: String, timeout: Duration },
    /// The agent refused the request: an answer of 4xx, with its message.
    #[error("{0}")]
    Refused(String),
    /// The agent failed at the request: an answer of 5xx, with its message.
    #[error("{0}")]
    Failed(String),
}

impl CallError {
    /// The error an answer of `status` (not a success) with `body` stands for.
    pub fn from_answer(status: StatusCode, body: &[u8]) -> Self {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        if status.is_client_error() {
            CallError::Refused(message)
        } else {
            CallError::Failed(message)
        }
    }
}

/// The agent's API socket, and how long one request may take.
#[derive(Copy, Clone, Debug)]
pub struct Endpoint<'a> {
    pub socket: &'a Path,
    pub timeout: Duration,
}

/// Sends one request; returns the status and the body. Fails if the agent cannot be reached or
/// has not answered within the endpoint's timeout.
pub async fn request(
    endpoint: Endpoint<'_>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let Endpoint { socket, timeout } = endpoint;
    match tokio::time::timeout(timeout, exchange(socket, method, path, body)).await {
        Ok(answer) => answer,
        Err(_) => Err(CallError::Timeout {
            socket: socket.display().to_string(),
            timeout,
        }
        .into()),
    }
}

async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|err| CallError::Unreachable {
            socket: socket.display().to_string(),
            why: err.to_string(),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the agent")?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "xdplb")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender
        .send_request(request)
        .await
        .context("talking to the agent")?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// Sends a request and decodes a successful JSON answer; an error answer becomes an error with
/// the agent's message.
pub async fn call<T: DeserializeOwned>(
    endpoint: Endpoint<'_>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<T> {
    let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let (status, bytes) = request(endpoint, method, path, body).await?;
    if !status.is_success() {
        return Err(CallError::from_answer(status, &bytes).into());
    }
    let bytes = if bytes.is_empty() {
        Bytes::from_static(b"null")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "unexpected answer from the agent: {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_keep_what_a_path_may_hold_and_encode_the_rest() {
        assert_eq!(segment("198.19.0.1:80"), "198.19.0.1:80");
        assert_eq!(segment("[fd00::1]:80"), "%5Bfd00::1%5D:80");
        assert_eq!(segment("a/b c%?#"), "a%2Fb%20c%25%3F%23");
    }
}
