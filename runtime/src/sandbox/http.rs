//! The wasi:http half of a plugin's grants: every outgoing request is matched against
//! `grants.http` before a connection is made; `https://` goes through `https` with the
//! plugin's TLS grant.

use std::sync::Arc;
use std::time::Duration;

use super::audit::Audit;
use super::grants::Grants;
use super::grants::HttpPattern;

/// The wasi:http half of a plugin's grants: every outgoing request is checked against
/// `grants.http` before a connection is made; a denied one is audited and fails in the plugin
/// with `HTTP-request-denied`. Hosts in grants are names, resolved by the host when it connects.
pub struct HttpGate {
    allow: Vec<HttpPattern>,
    /// From `grants.tls`, for `https://` (`None`: the system's roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    label: Arc<str>,
    audit: Arc<Audit>,
}

/// Connect timeout for plugin HTTP requests that set none (wasmtime's default is 10 minutes).
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxedIo = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendResult =
    wasmtime_wasi_http::Result<(http::Response<wasmtime_wasi_http::WasiBody>, BoxedIo)>;

impl HttpGate {
    /// The gate for one plugin instance.
    pub fn new(label: &Arc<str>, grants: &Grants, audit: &Arc<Audit>) -> HttpGate {
        HttpGate {
            allow: grants.http.clone(),
            tls: grants.tls.as_ref().map(super::TlsGrant::config),
            label: label.clone(),
            audit: audit.clone(),
        }
    }
}

impl wasmtime_wasi_http::WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _done: BoxedIo,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        if !self.allow.iter().any(|p| p.allows(&scheme, &host, port)) {
            self.audit.deny(
                &self.label,
                "http",
                &format!("{scheme}://{host}:{port}"),
                "not in grants.http",
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let mut options = options.unwrap_or_default();
        options.connect_timeout = Some(
            options
                .connect_timeout
                .map_or(HTTP_CONNECT_TIMEOUT, |t| t.min(HTTP_CONNECT_TIMEOUT)),
        );
        if scheme == "https" {
            let config = super::tls::client_config(self.tls.as_ref());
            let label = self.label.clone();
            return Box::new(super::https::send(request, options, config, label));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as BoxedIo))
        })
    }
}
