//! `respond = "pipeline"`: the HTTP response is what the pipeline computed. GET, DELETE and
//! PATCH are taken besides POST and PUT (a GET's record has an empty payload), and each record
//! carries the headers `http-method`, `http-path` and (when there is one) `http-query`, for
//! the pipeline to route and map by. Each record of a
//! request carries the request's number as its token (header `patchbay-request`); the host
//! answers each record through `reply`, and once every record of the request is answered the
//! response is made of the answers:
//!
//! - messages that reached `reply`: their payloads (one message: its payload; several: one per
//!   line), status from the first one's header `http-status` (default 200), `content-type` from
//!   its header `content-type` (default `application/json`);
//! - nothing reached `reply` (dropped, or sent only to other sinks): `204 No Content`;
//! - a stage refused a record (`invalid-data`): `422` with `{"error": reason}`; the pipeline
//!   could not process it (`fatal`, or `retryable` once the retries ran out): `502`;
//! - no answer within the pipeline's `reply_timeout`: `504`.

use patchbay_sdk::{Answer, Error, ErrorKind, Message};

use super::request::Reply;

/// What the answers of one request's records add up to so far.
#[derive(Default)]
pub(super) struct Gathering {
    /// Records answered.
    pub(super) got: usize,
    messages: Vec<Message>,
    failure: Option<Error>,
    timed_out: bool,
}

/// A response: status, content type, body.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: String,
    pub(super) body: Vec<u8>,
}

impl Gathering {
    /// Add the answer of one record.
    pub(super) fn add(&mut self, answer: Answer) {
        self.got += 1;
        match answer {
            Answer::Replied(messages) => self.messages.extend(messages),
            Answer::Failed(error) => {
                self.failure.get_or_insert(error);
            }
            Answer::TimedOut => self.timed_out = true,
        }
    }

    /// The response to the request, from everything gathered.
    pub(super) fn response(self) -> Response {
        let error = |status: u16, message: String| {
            let reply = Reply::error(status, message);
            Response {
                status,
                content_type: "application/json".into(),
                body: reply.body.into_bytes(),
            }
        };
        if let Some(failure) = self.failure {
            return match failure.kind {
                ErrorKind::InvalidData => error(422, failure.message),
                _ => error(502, failure.message),
            };
        }
        if self.timed_out {
            return error(
                504,
                "the pipeline gave no answer within its reply_timeout".into(),
            );
        }
        let Some(first) = self.messages.first() else {
            return Response {
                status: 204,
                content_type: String::new(),
                body: Vec::new(),
            };
        };
        let header = |name: &str| {
            first
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.trim().to_owned())
        };
        let status = header("http-status")
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (200..=599).contains(s))
            .unwrap_or(200);
        let content_type = header("content-type")
            .filter(|c| !c.is_empty() && !c.contains(['\r', '\n']))
            .unwrap_or_else(|| "application/json".into());
        let mut body = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                body.push(b'\n');
            }
            body.extend_from_slice(&m.payload);
        }
        Response {
            status,
            content_type,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_sdk::Header;

    fn message(payload: &str, headers: &[(&str, &str)]) -> Message {
        Message {
            payload: payload.as_bytes().to_vec(),
            key: None,
            headers: headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            timestamp: None,
        }
    }

    #[test]
    fn answers_become_responses() {
        let mut g = Gathering::default();
        g.add(Answer::Replied(vec![message(
            "<a/>",
            &[("http-status", "201"), ("content-type", "application/xml")],
        )]));
        let r = g.response();
        assert_eq!(
            (r.status, r.content_type.as_str()),
            (201, "application/xml")
        );
        assert_eq!(r.body, b"<a/>");

        let mut g = Gathering::default();
        g.add(Answer::Replied(vec![message("1", &[]), message("2", &[])]));
        let r = g.response();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"1\n2"[..]));

        let mut g = Gathering::default();
        g.add(Answer::Replied(Vec::new()));
        assert_eq!(g.response().status, 204);

        let mut g = Gathering::default();
        g.add(Answer::Replied(vec![message("1", &[])]));
        g.add(Answer::Failed(Error::invalid_data("no `id`")));
        let r = g.response();
        assert_eq!(r.status, 422);
        assert_eq!(r.body, br#"{"error":"no `id`"}"#);

        let mut g = Gathering::default();
        g.add(Answer::Failed(Error::fatal("down")));
        assert_eq!(g.response().status, 502);
        let mut g = Gathering::default();
        g.add(Answer::TimedOut);
        assert_eq!(g.response().status, 504);
    }
}
