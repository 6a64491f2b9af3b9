//! `GET /v1/dead-letters`: the entries of the pipelines' dead-letter files, filtered and paged,
//! for an operator (and the console) to see what failed and why without reading files.
//!
//! Query: `pipeline`, `stage` (`transform` | `sink`), `kind` (the error kind: `invalid-data`,
//! `fatal`, `retryable`, `trap`…), `plugin`; `offset` (default 0) and `limit` (default 100, at
//! most 1000). The answer: `{"total": N, "offset": O, "limit": L, "entries": [...]}`, each entry
//! as stored (pipeline.dead_letter) plus `id`, `PIPELINE:N`: the entry's number in its
//! pipeline's file, from 1. A pipeline whose dead letters go to a sink plugin has no file here.
//!
//! `POST /v1/dead-letters/replay` with `{"ids": ["PIPELINE:N", …]}` (at most 1000): takes those
//! entries out of the file and sends each back through its pipeline from the stage that failed
//! it, with fresh instances beside the running ones (as `patchbay dlq replay` does); one that
//! fails again is stored again at the end of the file. Answers `{"replays": [{"pipeline",
//! "replayed", "delivered", "dead_lettered_again"}]}`. Ids are positions: they change after a
//! replay, so a page lists again before choosing again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, unauthorized};
use crate::assemble::ReplayError;

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
        let Some(channel) = p.dead_letters.clone() else {
            continue;
        };
        let read = tokio::task::spawn_blocking(move || channel.entries()).await;
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

/// Most entries one replay request may name.
const MAX_REPLAY: usize = 1000;

/// The body of `POST /v1/dead-letters/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    ids: Vec<String>,
}

/// Group `PIPELINE:N` ids by pipeline, or say which one is malformed.
fn group(ids: &[String]) -> Result<BTreeMap<String, BTreeSet<usize>>, String> {
    let mut groups: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for id in ids {
        let parsed = id
            .rsplit_once(':')
            .and_then(|(p, n)| Some((p, n.parse::<usize>().ok().filter(|&n| n > 0)?)));
        let Some((pipeline, n)) = parsed else {
            return Err(format!(
                "id `{id}` is not PIPELINE:N (N from 1); take ids from GET /v1/dead-letters"
            ));
        };
        groups.entry(pipeline.to_owned()).or_default().insert(n);
    }
    Ok(groups)
}

pub(super) async fn replay(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let Some(replayer) = admin.replayer.clone() else {
        return refuse(
            StatusCode::NOT_IMPLEMENTED,
            "replay is served by `patchbay run --admin`; on a cluster node use `patchbay dlq \
             replay` with the pipeline file"
                .to_owned(),
        );
    };
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("body: {e}; send {{\"ids\": [\"PIPELINE:N\", …]}}"),
            );
        }
    };
    if request.ids.is_empty() || request.ids.len() > MAX_REPLAY {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{} ids given; name 1 to {MAX_REPLAY} entries",
                request.ids.len()
            ),
        );
    }
    let groups = match group(&request.ids) {
        Ok(g) => g,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let mut done = Vec::new();
    for (pipeline, numbers) in &groups {
        match replayer.replay(pipeline, numbers).await {
            Ok(replay) => done.push(replay),
            Err(e) => {
                let (status, message) = match e {
                    ReplayError::Unknown(m) => (StatusCode::NOT_FOUND, m),
                    ReplayError::Refused(m) => (StatusCode::CONFLICT, m),
                    ReplayError::Failed(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
                };
                let body = json!({ "error": message, "replays": done });
                return (status, Json(body)).into_response();
            }
        }
    }
    Json(json!({ "replays": done })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_group_by_pipeline_and_malformed_ones_are_named() {
        let ids = ["a:2", "b:1", "a:1", "x:y:3"].map(String::from);
        let groups = group(&ids).unwrap();
        assert_eq!(groups["a"], BTreeSet::from([1, 2]));
        assert_eq!(groups["x:y"], BTreeSet::from([3]));
        assert_eq!(
            group(&["a:0".to_owned()]).unwrap_err(),
            "id `a:0` is not PIPELINE:N (N from 1); take ids from GET /v1/dead-letters"
        );
        assert!(group(&["a".to_owned()]).is_err());
    }
}
