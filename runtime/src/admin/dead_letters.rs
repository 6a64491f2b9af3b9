//! `GET /v1/dead-letters`: the entries of the pipelines' dead-letter files, filtered and paged,
//! for an operator (and the console) to see what failed and why without reading files.
//!
//! Query: `pipeline`, `stage` (`transform` | `sink`), `kind` (the error kind: `invalid-data`,
//! `fatal`, `retryable`, `trap`…), `plugin`; `offset` (default 0) and `limit` (default 100, at
//! most 1000). The answer: `{"total": N, "offset": O, "limit": L, "entries": [...]}`, each entry
//! as stored (pipeline.dead_letter) plus `id`, `PIPELINE:N`: the entry's number in its
//! pipeline's file, from 1. A pipeline whose dead letters go to a sink plugin has no file here.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, unauthorized};
use crate::pipeline::dead_letter;

/// Most entries one page may hold.
const MAX_LIMIT: usize = 1000;

/// The query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    pipeline: Option<String>,
    stage: Option<String>,
    kind: Option<String>,
    plugin: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(super) async fn list(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let Query(filter) = match filter {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("{e}; the query takes pipeline, stage, kind, plugin, offset and limit"),
            );
        }
    };
    let limit = filter.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is out of range; give 1 to {MAX_LIMIT}"),
        );
    }
    if let Some(stage) = &filter.stage
        && stage != "transform"
        && stage != "sink"
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("stage `{stage}` is neither `transform` nor `sink`"),
        );
    }
    let pipelines = admin.pipelines();
    if let Some(name) = &filter.pipeline
        && !pipelines.iter().any(|p| &p.name == name)
    {
        let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "no pipeline `{name}`; the pipelines are: {}",
                names.join(", ")
            ),
        );
    }
    let mut matching: Vec<Value> = Vec::new();
    for p in &pipelines {
        if filter.pipeline.as_ref().is_some_and(|name| name != &p.name) {
            continue;
        }
        let Some(path) = p.dead_letters.clone() else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let read = tokio::task::spawn_blocking(move || dead_letter::read(&path)).await;
        let entries = match read {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        for (i, entry) in entries.iter().enumerate() {
            let keep = filter
                .stage
                .as_ref()
                .is_none_or(|s| *s == entry.stage.to_string())
                && filter.kind.as_ref().is_none_or(|k| *k == entry.error_kind)
                && filter.plugin.as_ref().is_none_or(|n| *n == entry.plugin);
            if !keep {
                continue;
            }
            let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
            if let Value::Object(fields) = &mut value {
                fields.insert("id".into(), Value::String(format!("{}:{}", p.name, i + 1)));
            }
            matching.push(value);
        }
    }
    let total = matching.len();
    let offset = filter.offset.unwrap_or(0).min(total);
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    Json(json!({ "total": total, "offset": offset, "limit": limit, "entries": page }))
        .into_response()
}
