//! The client side of the admin API: `patchbay status`.

use std::process::ExitCode;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A response from the admin API.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body, as text.
    pub body: String,
}

/// `METHOD URL` against the admin API with an optional bearer token and JSON body.
pub async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Answer> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL; write e.g. http://127.0.0.1:7400"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("`{url}`: the admin API speaks plain http:// (keep it on loopback)");
    }
    let host = uri.host().context("the admin URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| {
            format!("cannot reach the admin API at {host}:{port}; is `patchbay run --admin {host}:{port}` running?")
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin API handshake")?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, format!("{host}:{port}"));
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender
        .send_request(request)
        .await
        .context("admin API request")?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `patchbay status`: print the pipelines of a running instance.
pub async fn status(admin: &str, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let url = format!("{}/v1/pipelines", admin.trim_end_matches('/'));
    let answer = call("GET", &url, token, None).await?;
    if answer.status != 200 {
        anyhow::bail!("{url}: HTTP {}: {}", answer.status, answer.body.trim());
    }
    let status: serde_json::Value =
        serde_json::from_str(&answer.body).context("the admin API answered something not JSON")?;
    let empty = Vec::new();
    for p in status["pipelines"].as_array().unwrap_or(&empty) {
        let written: Vec<String> = p["written"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{v} to `{k}`")).collect())
            .unwrap_or_default();
        println!(
            "pipeline `{}` ({}): {} in, {} dropped, written {}, {} dead-lettered, {} retries, {} restarts",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["in"],
            p["dropped"],
            written.join(", "),
            p["dead_lettered"],
            p["retries"],
            p["restarts"],
        );
        if let Some(error) = p["error"].as_str() {
            println!("  error: {error}");
        }
    }
    for d in status["denied"].as_array().unwrap_or(&empty) {
        println!(
            "sandbox denied {} {} access{} to `{}`",
            d["count"],
            d["capability"].as_str().unwrap_or("?"),
            if d["count"].as_u64() == Some(1) {
                ""
            } else {
                "es"
            },
            d["plugin"].as_str().unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `patchbay reload`: ask a running instance to swap a plugin.
pub async fn reload(
    admin: &str,
    token: Option<&str>,
    plugin: &str,
    path: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let url = format!("{}/v1/plugins/{plugin}/reload", admin.trim_end_matches('/'));
    let body = match path {
        Some(p) => {
            // The server resolves paths on its own; send what this shell means.
            let absolute =
                std::path::absolute(p).with_context(|| format!("bad path `{}`", p.display()))?;
            serde_json::json!({ "path": absolute }).to_string()
        }
        None => "{}".to_owned(),
    };
    let answer = call("POST", &url, token, Some(body)).await?;
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    if answer.status == 200 {
        println!(
            "plugin `{}` swapped to version {} (sha256 {}, generation {}); stages switch at their next batch",
            json["plugin"].as_str().unwrap_or(plugin),
            json["version"].as_str().unwrap_or("?"),
            json["sha256"].as_str().unwrap_or("?"),
            json["generation"]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let reason = json["error"]
            .as_str()
            .map_or_else(|| answer.body.trim().to_owned(), str::to_owned);
        eprintln!(
            "error: reload of `{plugin}` refused (HTTP {}): {reason}; the running version keeps serving",
            answer.status
        );
        Ok(ExitCode::FAILURE)
    }
}
