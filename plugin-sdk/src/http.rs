//! Outbound HTTP from a plugin, over `wasi:http/outgoing-handler`.
//!
//! The host sends the request only if the plugin's `grants.http` lists the destination; otherwise
//! [`send`] fails with [`HttpError::Denied`] and the runtime logs the denial. Requests block the
//! plugin's call until the response body is read, so keep `limits.call_timeout` above the
//! slowest answer you expect.
//!
//! ```no_run
//! use patchbay_sdk::http::{Method, Request, send};
//!
//! let response = send(
//!     &Request::new(Method::Post, "http://127.0.0.1:8080/ingest")
//!         .header("content-type", "application/json")
//!         .body(br#"{"n":1}"#.to_vec()),
//! )?;
//! assert!(response.status < 300);
//! # Ok::<(), patchbay_sdk::http::HttpError>(())
//! ```

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// HEAD
    Head,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(text: &str) -> Result<Method, String> {
        Ok(match text.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            _ => {
                return Err(format!(
                    "`{text}` is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
                ));
            }
        })
    }
}

/// An outgoing request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body (empty for none).
    pub body: Vec<u8>,
    /// Time allowed for connecting and for the first byte of the answer; `None` leaves the
    /// host's defaults.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = body;
        self
    }

    /// Set the connect and first-byte timeout.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }
}

/// A response, body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be understood.
    BadUrl(String),
    /// The host refused: the destination is not in the plugin's `grants.http`.
    Denied,
    /// The host refused the server's TLS certificate (an unknown CA, a wrong name, expired);
    /// the host's log names the server and the reason. Trying again does not help.
    Certificate,
    /// Anything else the host or the network reported (connection refused, timeout, TLS…).
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::BadUrl(why) => write!(f, "bad URL: {why}"),
            HttpError::Denied => f.write_str(
                "HTTP request denied by the sandbox: the destination is not in grants.http",
            ),
            HttpError::Certificate => f.write_str(
                "the server's TLS certificate was refused (the log above says why; a server \
                 signed by a private CA needs grants.tls = { ca = \"FILE.pem\" })",
            ),
            HttpError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HttpError {}

fn failed(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        ErrorCode::TlsCertificateError => HttpError::Certificate,
        other => HttpError::Failed(format!("{other:?}")),
    }
}

/// `scheme://authority/path?query` split into its parts.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HttpError::BadUrl(format!("`{url}` has no scheme (http:// or https://)")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(HttpError::BadUrl(format!(
                "`{url}`: scheme `{other}` is not http or https"
            )));
        }
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() {
        return Err(HttpError::BadUrl(format!("`{url}` has no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// Send a request and read the whole response.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let mut header_list: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    // A known length spares the server a chunked body.
    if !request.body.is_empty() && !header_list.iter().any(|(n, _)| n == "content-length") {
        header_list.push((
            "content-length".into(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    let headers = Fields::from_list(&header_list)
        .map_err(|e| HttpError::BadUrl(format!("bad header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method {
        Method::Get => WasiMethod::Get,
        Method::Post => WasiMethod::Post,
        Method::Put => WasiMethod::Put,
        Method::Patch => WasiMethod::Patch,
        Method::Delete => WasiMethod::Delete,
        Method::Head => WasiMethod::Head,
    };
    let bad = |what: &str| HttpError::BadUrl(format!("`{}`: bad {what}", request.url));
    outgoing.set_method(&method).map_err(|()| bad("method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| bad("host"))?;
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| bad("path"))?;
    let body = outgoing
        .body()
        .map_err(|()| HttpError::Failed("request body unavailable".into()))?;
    let options = request.timeout.map(|t| {
        let options = RequestOptions::new();
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        // A host may not support a timeout; the request then runs with its defaults.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        options
    });
    let pending = outgoing_handler::handle(outgoing, options).map_err(failed)?;
    {
        let stream = body
            .write()
            .map_err(|()| HttpError::Failed("request body stream unavailable".into()))?;
        for chunk in request.body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                // The request may have failed as a whole (denied, refused): say that, not
                // that the body stream closed.
                pending.subscribe().block();
                if let Some(Ok(Err(code))) = pending.get() {
                    return Err(failed(code));
                }
                return Err(HttpError::Failed(format!(
                    "sending the body: {}",
                    stream_error(e)
                )));
            }
        }
    }
    OutgoingBody::finish(body, None).map_err(failed)?;
    pending.subscribe().block();
    let incoming = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(failed(code)),
        Some(Err(())) | None => return Err(HttpError::Failed("no response".into())),
    };
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let body = incoming
        .consume()
        .map_err(|()| HttpError::Failed("response body unavailable".into()))?;
    let bytes = read_body(&body)?;
    IncomingBody::finish(body);
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|()| HttpError::Failed("response body stream unavailable".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => {
                return Err(HttpError::Failed(format!(
                    "reading the response body: {}",
                    stream_error(e)
                )));
            }
        }
    }
    Ok(bytes)
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".into(),
        StreamError::LastOperationFailed(error) => error.to_debug_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let (scheme, authority, path) = split_url("http://127.0.0.1:8080/a/b?c=1").unwrap();
        assert!(matches!(scheme, Scheme::Http));
        assert_eq!((authority, path), ("127.0.0.1:8080", "/a/b?c=1"));
        let (_, authority, path) = split_url("https://example.com").unwrap();
        assert_eq!((authority, path), ("example.com", "/"));
        assert!(split_url("example.com").is_err());
        assert!(split_url("ftp://example.com").is_err());
        assert!(split_url("http:///x").is_err());
    }
}
