//! Reading one HTTP/1.1 request out of a connection's buffer and the answers to it: the head
//! checked (method, path, token, sizes, admission against `max_pending_bytes`), the body cut
//! into records by `split`. No sockets here: `lib.rs` reads and writes them.

use patchbay_sdk::json::Value;

use super::*;

/// An answer to a request.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: String,
    pub(super) extra: &'static str,
}

impl Reply {
    pub(super) fn error(status: u16, message: impl Into<String>) -> Reply {
        let body = Value::Object(
            [("error".to_owned(), Value::String(message.into()))]
                .into_iter()
                .collect(),
        )
        .to_string();
        Reply {
            status,
            body,
            extra: "",
        }
    }

    pub(super) fn write(&self, out: &mut Vec<u8>, keep_alive: bool) {
        respond(
            out,
            self.status,
            "application/json",
            self.body.as_bytes(),
            self.extra,
            keep_alive,
        );
    }
}

/// Write one HTTP/1.1 response (no body and no length for a 204).
pub(super) fn respond(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &str,
    keep_alive: bool,
) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = if status == 204 {
        format!("HTTP/1.1 204 {reason}\r\nconnection: {connection}\r\n{extra}\r\n")
    } else {
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: {connection}\r\n{extra}\r\n",
            body.len()
        )
    };
    out.extend_from_slice(head.as_bytes());
    if status != 204 {
        out.extend_from_slice(body);
    }
}

/// What reading a connection's buffer gave.
pub(super) enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    /// A request to answer now, without records; `close` ends the connection after it.
    Answer { reply: Reply, close: bool },
    /// A request refused before its body was read: answer now, then read `body` bytes more
    /// and throw them away.
    Skip {
        reply: Reply,
        keep_alive: bool,
        body: usize,
    },
    /// A request with its records.
    Records {
        records: Vec<Message>,
        keep_alive: bool,
    },
}

impl HttpSource {
    /// Parse the first request in `input`, consuming it when it is whole.
    pub(super) fn parse(&mut self, input: &mut Vec<u8>, reserved: &mut usize) -> Parsed {
        let in_flight = self.in_flight;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let head_len = match request.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
                return Parsed::Answer {
                    reply: Reply::error(431, format!("request head over {MAX_HEAD} bytes")),
                    close: true,
                };
            }
            Ok(httparse::Status::Partial) => return Parsed::Incomplete,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Answer {
                    reply: Reply::error(431, "more than 64 headers"),
                    close: true,
                };
            }
            Err(e) => {
                return Parsed::Answer {
                    reply: Reply::error(400, format!("not an HTTP request: {e}")),
                    close: true,
                };
            }
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let http10 = request.version == Some(0);
        let keep_alive = match header("connection") {
            Some(c) if c.eq_ignore_ascii_case("close") => false,
            Some(c) if c.eq_ignore_ascii_case("keep-alive") => true,
            _ => !http10,
        };
        if header("transfer-encoding").is_some_and(|t| !t.eq_ignore_ascii_case("identity")) {
            return Parsed::Answer {
                reply: Reply::error(411, "send the body with a content-length, not chunked"),
                close: true,
            };
        }
        let length = match header("content-length").map(|l| l.parse::<usize>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return Parsed::Answer {
                    reply: Reply::error(400, "content-length is not a number"),
                    close: true,
                };
            }
        };
        if length > self.max_body {
            // The body is not read: the connection closes after the answer.
            return Parsed::Answer {
                reply: Reply::error(
                    413,
                    format!(
                        "body of {length} bytes is over the limit of {} bytes (max_body)",
                        self.max_body
                    ),
                ),
                close: true,
            };
        }
        if *reserved == 0 && length > 0 {
            // Admit the body before it is read, so the bodies in memory stay within bounds.
            let taken = self.pending_bytes + self.reserved;
            if taken > 0 && taken + length > self.max_pending_bytes {
                let mut reply = Reply::error(
                    503,
                    format!(
                        "{taken} bytes wait for delivery (max_pending_bytes {}); retry later",
                        self.max_pending_bytes
                    ),
                );
                reply.extra = "retry-after: 1\r\n";
                let here = length.min(input.len() - head_len);
                input.drain(..head_len + here);
                return Parsed::Skip {
                    reply,
                    keep_alive,
                    body: length - here,
                };
            }
            *reserved = length;
            self.reserved += length;
        }
        if input.len() < head_len + length {
            return Parsed::Incomplete;
        }
        let method = request.method.unwrap_or_default().to_owned();
        let target = request.path.unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (path, query) = (path.to_owned(), query.to_owned());
        let authorization = header("authorization");
        let forwarded: Vec<(String, String)> = self
            .forward_headers
            .iter()
            .filter_map(|name| header(name).map(|v| (name.clone(), v)))
            .collect();
        let key = self.key_header.as_deref().and_then(header);
        let body = input[head_len..head_len + length].to_vec();
        input.drain(..head_len + length);
        self.reserved -= std::mem::take(reserved);

        let answer = |reply: Reply| Parsed::Answer {
            reply,
            close: !keep_alive,
        };
        if !self.path_matches(&path) {
            return answer(Reply::error(
                404,
                format!("no such path `{path}`; records go to `{}`", self.path),
            ));
        }
        // Request/reply serves reads and deletes too (an API); ingress takes bodies only.
        let (accepted, allow) = if self.respond_pipeline {
            (
                &["POST", "PUT", "GET", "DELETE", "PATCH"][..],
                "allow: GET, POST, PUT, PATCH, DELETE\r\n",
            )
        } else {
            (&["POST", "PUT"][..], "allow: POST, PUT\r\n")
        };
        if !accepted.contains(&method.as_str()) {
            let mut reply = Reply::error(
                405,
                format!("{method} is not accepted; use {}", accepted.join(" or ")),
            );
            reply.extra = allow;
            return answer(reply);
        }
        if let Some(token) = &self.token {
            let given = authorization.as_deref().and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            });
            if given.map(str::trim) != Some(token.as_str()) {
                let mut reply = Reply::error(401, "a valid bearer token is required");
                reply.extra = "www-authenticate: Bearer\r\n";
                return answer(reply);
            }
        }
        let payloads = match self.cut(body) {
            Ok(p) => p,
            Err(e) => return answer(Reply::error(400, e)),
        };
        if in_flight > 0 && in_flight + payloads.len() > self.max_pending {
            let mut reply = Reply::error(
                503,
                format!(
                    "{in_flight} records wait for delivery (max_pending {}); retry later",
                    self.max_pending
                ),
            );
            reply.extra = "retry-after: 1\r\n";
            return answer(reply);
        }
        let records = payloads
            .into_iter()
            .map(|payload| {
                let mut m = Message::new(payload);
                for (name, value) in &forwarded {
                    m = m.with_header(name.clone(), value.clone());
                }
                if let Some(key) = &key {
                    m = m.with_key(key.clone().into_bytes());
                }
                if self.respond_pipeline {
                    m = m
                        .with_header("http-method", method.clone())
                        .with_header("http-path", path.clone());
                    if !query.is_empty() {
                        m = m.with_header("http-query", query.clone());
                    }
                }
                m
            })
            .collect();
        Parsed::Records {
            records,
            keep_alive,
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        self.path == "/"
            || path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The body cut into record payloads, as `split` says.
    fn cut(&self, body: Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
        match self.split {
            Split::None => Ok(vec![body]),
            Split::Lines => Ok(body
                .split(|b| *b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .map(<[u8]>::to_vec)
                .collect()),
            Split::JsonArray => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(items)) => Ok(items
                    .into_iter()
                    .map(|v| v.to_string().into_bytes())
                    .collect()),
                Ok(_) => Err("the body is JSON but not an array (split = \"json-array\")".into()),
                Err(e) => Err(format!("the body is not a JSON array: {e}")),
            },
        }
    }
}

/// Whether `input` holds a whole request head.
pub(super) fn has_head(input: &[u8]) -> bool {
    input.windows(4).any(|w| w == b"\r\n\r\n")
}
