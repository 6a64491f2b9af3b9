//! `https://` requests of plugins (wasi:http) with the plugin's own TLS grant: the server
//! verified against `grants.tls.ca` (or the system's roots, as for `wasi:tls`), the granted
//! client certificate presented, and a failed handshake logged with the host and the reason.
//!
//! wasmtime-wasi-http's `default_send_request` takes no TLS configuration (it always uses the
//! webpki roots and no client certificate), so this sends the request itself: tokio's TCP,
//! tokio-rustls with the plugin's configuration, hyper's HTTP/1.1 client, as that function
//! does. Plain `http://` still goes through `default_send_request`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::tls::handshake_failure;

type BoxedIo = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Bound on the wait for a response's first byte when the plugin sets none (wasmtime's
/// default is 10 minutes; the plugin's call deadline bounds it anyway).
const FIRST_BYTE: Duration = Duration::from_secs(600);

/// Send `request` (scheme https) over TLS configured by `config`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
    config: Option<Arc<rustls::ClientConfig>>,
    label: Arc<str>,
) -> Result<(http::Response<WasiBody>, BoxedIo), Error> {
    let uri = request.uri();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let connect_timeout = options.connect_timeout.unwrap_or(FIRST_BYTE);
    let address = format!("{host}:{port}");
    let tcp = match tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(address.as_str()),
    )
    .await
    {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let config = config.ok_or(Error::TlsProtocolError)?;
    // An IPv6 literal comes bracketed in the URI.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(bare).map_err(|_| Error::HttpRequestUriInvalid)?;
    let stream = match tokio::time::timeout(
        connect_timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Err(_) => return Err(Error::ConnectionTimeout),
        Ok(Err(e)) => {
            let (_, certificate) = handshake_failure(&label, &host, &e);
            return Err(match certificate {
                true => Error::TlsCertificateError,
                false => Error::Tls(e),
            });
        }
        Ok(Ok(stream)) => stream,
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // Only the path goes on the request line (the authority is in the Host header).
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let first_byte = options.first_byte_timeout.unwrap_or(FIRST_BYTE);
    let mut conn = Box::pin(conn);
    // The connection is driven while the response is awaited, then by the caller with the
    // response body.
    let response = tokio::select! {
        r = tokio::time::timeout(first_byte, sender.send_request(request)) => {
            r.map_err(|_| Error::ConnectionReadTimeout)??
        }
        c = &mut conn => {
            c?;
            return Err(Error::ConnectionTerminated);
        }
    };
    let io: BoxedIo = Box::new(async move { conn.await.map_err(Error::from) });
    Ok((
        response.map(|body| body.map_err(Error::from).boxed_unsync()),
        io,
    ))
}
