//! Request/reply: the answers a source that exports `reply` gives to the requests its
//! messages came from (wit/worlds.wit, `source-reply-api`).
//!
//! The source marks a request's message with header [`REQUEST`] holding its own token. On
//! poll the source task swaps the token for a host id, unique in the pipeline, and keeps the
//! token; the id rides in the same header through the pipeline, but no plugin sees it: stages
//! call plugins with the header taken off ([`hidden`]), put it back on what a transform makes
//! of the message ([`carry`]), and report a failure for good to the book instead of the
//! dead-letter channel. The `reply` destination ([`run_reply`]) files what reaches it under the
//! id. Once the batch is settled at every destination, the source task takes the gathered
//! answer out of the book and calls `reply(token, answer)`; a request still open at
//! `reply_timeout` is answered `timed-out` and its id forgotten, so what comes later is dropped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::flow::Batch;
use super::retry::Failure;
use crate::contract::{Answer, ErrorKind, Header, Message, WitError};

/// The header that marks a request's message (the source's token on poll; the host id after).
pub const REQUEST: &str = "patchbay-request";

/// What the pipeline gathered for each open request, by host id.
#[derive(Debug, Default)]
pub(super) struct Book {
    open: Mutex<HashMap<u64, Gathered>>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Gathered {
    messages: Vec<Message>,
    error: Option<WitError>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Gathered>> {
        match self.open.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A new request: its host id.
    pub(super) fn open(&self) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Gathered::default());
        id
    }

    /// A message reached `reply` for request `id` (dropped if the request is closed).
    fn answer(&self, id: u64, message: Message) {
        if let Some(g) = self.lock().get_mut(&id) {
            g.messages.push(message);
        }
    }

    /// A message of request `id` failed for good; the first failure is its answer.
    pub(super) fn fail(&self, id: u64, failure: &Failure) {
        if let Some(g) = self.lock().get_mut(&id)
            && g.error.is_none()
        {
            let kind = match failure.kind.as_str() {
                "invalid-data" => ErrorKind::InvalidData,
                "retryable" => ErrorKind::Retryable,
                _ => ErrorKind::Fatal,
            };
            g.error = Some(WitError {
                kind,
                message: failure.error.clone(),
            });
        }
    }

    /// Close request `id`: what it gathered, as its answer.
    pub(super) fn close(&self, id: u64) -> Answer {
        match self.lock().remove(&id) {
            Some(Gathered {
                error: Some(error), ..
            }) => Answer::Failed(error),
            Some(g) => Answer::Replied(g.messages),
            None => Answer::Replied(Vec::new()),
        }
    }

    /// Forget request `id` (timed out, or its source instance is gone).
    pub(super) fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// One source instance's open requests: the token each host id stands for, when it times
/// out, and which batch carried it.
pub(super) struct Requests {
    pub(super) book: Arc<Book>,
    timeout: Duration,
    open: HashMap<u64, (String, Instant)>,
    by_seq: BTreeMap<u64, Vec<u64>>,
}

impl Requests {
    pub(super) fn new(book: Arc<Book>, timeout: Duration) -> Self {
        Requests {
            book,
            timeout,
            open: HashMap::new(),
            by_seq: BTreeMap::new(),
        }
    }

    /// A polled batch `seq`: each request's token swapped for a new host id.
    pub(super) fn tag(&mut self, seq: u64, messages: &mut [Message]) {
        let deadline = Instant::now() + self.timeout;
        let mut ids = Vec::new();
        for m in messages {
            let Some(token) = take_request(m) else {
                continue;
            };
            let id = self.book.open();
            m.headers.push(Header {
                name: REQUEST.to_owned(),
                value: id.to_string(),
            });
            self.open.insert(id, (token, deadline));
            ids.push(id);
        }
        if !ids.is_empty() {
            self.by_seq.insert(seq, ids);
        }
    }

    /// Batch `seq` is settled everywhere: the answers of its requests still open.
    pub(super) fn settled(&mut self, seq: u64) -> Vec<(String, Answer)> {
        let ids = self.by_seq.remove(&seq).unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| {
                let answer = self.book.close(id);
                self.open.remove(&id).map(|(token, _)| (token, answer))
            })
            .collect()
    }

    /// The tokens of requests whose time is up; forgotten from now on.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<String> {
        let late: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter()
            .filter_map(|id| {
                self.book.forget(id);
                self.open.remove(&id).map(|(token, _)| token)
            })
            .collect()
    }

    /// The instance that holds these requests is gone: nobody can answer them now.
    pub(super) fn orphan(&mut self) {
        for id in self.open.keys() {
            self.book.forget(*id);
        }
        self.open.clear();
        self.by_seq.clear();
    }
}

/// The value of `m`'s request header, if it has one.
pub(super) fn request_of(m: &Message) -> Option<&str> {
    m.headers
        .iter()
        .find(|h| h.name == REQUEST)
        .map(|h| h.value.as_str())
}

/// The host id `m` carries, if any.
pub(super) fn id_of(m: &Message) -> Option<u64> {
    request_of(m).and_then(|v| v.parse().ok())
}

/// Take the request header off `m`, returning its value.
pub(super) fn take_request(m: &mut Message) -> Option<String> {
    let at = m.headers.iter().position(|h| h.name == REQUEST)?;
    let value = m.headers.remove(at).value;
    m.headers.retain(|h| h.name != REQUEST);
    Some(value)
}

/// The batch as plugins must see it: without request headers (borrowed when it has none).
pub(super) fn hidden(records: &[Message]) -> Cow<'_, [Message]> {
    if !records.iter().any(|m| request_of(m).is_some()) {
        return Cow::Borrowed(records);
    }
    Cow::Owned(
        records
            .iter()
            .map(|m| {
                let mut m = m.clone();
                take_request(&mut m);
                m
            })
            .collect(),
    )
}

/// Put `input`'s request header (or none) on what a transform made of it: a transform can
/// neither lose a request nor forge one.
pub(super) fn carry(input: &Message, outputs: &mut [Message]) {
    let request = request_of(input);
    for out in outputs {
        out.headers.retain(|h| h.name != REQUEST);
        if let Some(value) = request {
            out.headers.push(Header {
                name: REQUEST.to_owned(),
                value: value.to_owned(),
            });
        }
    }
}

/// The reply destination's task: files each message under its request, then reports the batch
/// done like any sink. Returns how many it filed through `written`.
pub(super) async fn run_reply(
    mut rx: mpsc::Receiver<Arc<Batch>>,
    done: mpsc::UnboundedSender<u64>,
    book: Option<Arc<Book>>,
    written: Arc<super::Counters>,
    position: usize,
) -> Result<(), super::PipelineFailure> {
    while let Some(batch) = rx.recv().await {
        let mut filed = 0;
        if let Some(book) = &book {
            for record in &batch.records {
                let mut message = record.clone();
                if let Some(id) = take_request(&mut message).and_then(|v| v.parse().ok()) {
                    book.answer(id, message);
                    filed += 1;
                }
            }
        }
        if let Some(counter) = written.written.get(position) {
            counter.fetch_add(filed, Ordering::Relaxed);
        }
        let _ = done.send(batch.seq);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)]) -> Message {
        Message {
            payload: b"{}".to_vec(),
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
    fn a_transform_can_neither_lose_nor_forge_a_request() {
        let input = message(&[(REQUEST, "7")]);
        let mut outputs = vec![message(&[]), message(&[(REQUEST, "8"), ("a", "b")])];
        carry(&input, &mut outputs);
        assert!(outputs.iter().all(|m| id_of(m) == Some(7)));
        assert_eq!(outputs[1].headers.len(), 2);
        let mut forged = vec![message(&[(REQUEST, "8")])];
        carry(&message(&[]), &mut forged);
        assert_eq!(id_of(&forged[0]), None);
    }

    #[test]
    fn plugins_see_no_request_header_and_the_first_failure_answers() {
        let batch = vec![message(&[("x", "1"), (REQUEST, "3")]), message(&[])];
        let seen = hidden(&batch);
        assert!(seen.iter().all(|m| request_of(m).is_none()));
        assert_eq!(seen[0].headers.len(), 1);
        assert!(matches!(hidden(&batch[1..]), Cow::Borrowed(_)));

        let book = Book::default();
        let id = book.open();
        book.answer(id, message(&[]));
        assert!(matches!(book.close(id), Answer::Replied(m) if m.len() == 1));
        let id = book.open();
        let bad = Failure::contract("x".into());
        book.fail(id, &bad);
        book.answer(id, message(&[]));
        assert!(matches!(book.close(id), Answer::Failed(e) if e.kind == ErrorKind::Fatal));
        // Closed or forgotten: later answers go nowhere.
        book.answer(id, message(&[]));
        assert!(matches!(book.close(id), Answer::Replied(m) if m.is_empty()));
    }
}
