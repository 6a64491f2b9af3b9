//! The operator's console at `/`: the page, its script and its stylesheet, built from
//! `console/` by `cargo xtask build` and put into the binary by `runtime/build.rs`. The page
//! itself is public (it holds no data); everything it shows comes from the `/v1` routes, with
//! the same token rules as any other client.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/console/index.html"));
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/console/console.js"));
const STYLE: &str = include_str!(concat!(env!("OUT_DIR"), "/console/console.css"));

/// What every console file is sent with: no caching across versions of the binary is wanted
/// (the names carry no hash), and the page may not be framed.
fn send(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    send("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    send("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    send("text/css; charset=utf-8", STYLE)
}
