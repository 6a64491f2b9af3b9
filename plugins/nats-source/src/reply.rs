//! `reply = true`: the pipeline's answer to a request goes to the request's reply subject
//! (the inbox a `nats req` waits on): each message that reached `reply`, or an empty message
//! with the NATS service error headers for a failure or a timeout.

use patchbay_proto_nats as nats;
use patchbay_sdk::{Answer, Error, ErrorKind, Replies};

use super::NatsSource;

impl Replies for NatsSource {
    fn reply(&mut self, inbox: String, answer: Answer) -> Result<(), Error> {
        let mut out = Vec::new();
        let error = |code: &str, reason: &str, out: &mut Vec<u8>| {
            let reason = reason.replace(['\r', '\n'], " ");
            let headers = nats::header_block([
                ("Nats-Service-Error", reason.as_str()),
                ("Nats-Service-Error-Code", code),
            ]);
            nats::publish(out, &inbox, None, &headers, b"");
        };
        match answer {
            Answer::Replied(messages) if messages.is_empty() => {
                nats::publish(&mut out, &inbox, None, &[], b"");
            }
            Answer::Replied(messages) => {
                for m in messages {
                    let headers = nats::header_block(
                        m.headers
                            .iter()
                            .filter(|h| nats::check_header(&h.name, &h.value).is_ok())
                            .map(|h| (h.name.as_str(), h.value.as_str())),
                    );
                    nats::publish(&mut out, &inbox, None, &headers, &m.payload);
                }
            }
            Answer::Failed(e) if e.kind == ErrorKind::InvalidData => {
                error("422", &e.message, &mut out)
            }
            Answer::Failed(e) => error("502", &e.message, &mut out),
            Answer::TimedOut => error(
                "504",
                "the pipeline gave no answer within its reply_timeout",
                &mut out,
            ),
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::retryable(format!(
                "nats {}: not connected; the requester at `{inbox}` gets no answer",
                self.link.addr()
            )));
        };
        conn.send(&out).map_err(|e| self.lost(&e))
    }
}
