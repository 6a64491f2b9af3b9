//! `GET /v1/events`: the pipelines' live counters as server-sent events, so that a page (the
//! console) shows them rising without polling. One `status` event a second, its data the JSON
//! of `GET /v1/pipelines`; the first at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::{Admin, unauthorized};

/// How often the counters go out.
const EVERY: Duration = Duration::from_secs(1);

pub(super) async fn stream(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let ticks = tokio::time::interval(EVERY);
    let events = futures_util::stream::unfold((admin, ticks), |(admin, mut ticks)| async move {
        ticks.tick().await;
        let event = Event::default()
            .event("status")
            .json_data(admin.status_json());
        Some((event, (admin, ticks)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
