//! The data rules: one answer per message in batches of every size, empty and large batches,
//! many calls in a row, odd payloads, and the packed call agreeing with the typed one.

use super::*;

/// `{"seq":N,"name":"item-N",…}`, with a key and a header on every other message.
pub(super) fn default_samples() -> Vec<Vec<u8>> {
    (0..16u64)
        .map(|n| {
            format!(
                r#"{{"seq":{n},"name":"item-{n}","price":{n}.5,"tags":["a","b"],"note":"ünïcödé"}}"#
            )
            .into_bytes()
        })
        .collect()
}

pub(super) fn message(n: usize, payload: Vec<u8>) -> Message {
    Message {
        payload,
        key: n.is_multiple_of(2).then(|| format!("k{n}").into_bytes()),
        headers: if n % 2 == 1 {
            vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }]
        } else {
            Vec::new()
        },
        timestamp: Some(1_700_000_000_000 + n as u64),
    }
}

pub(super) fn batch(samples: &[Vec<u8>], len: usize) -> Vec<Message> {
    (0..len)
        .map(|n| message(n, samples[n % samples.len()].clone()))
        .collect()
}

/// What a data call returned, reduced to what the rules are about.
pub(super) struct Answer {
    count: usize,
    /// Errors by kind, for rule 10's check on sinks.
    errors: Vec<WitError>,
}

pub(super) async fn call(
    instance: &mut Instance,
    function: &str,
    batch: &[Message],
) -> Result<Answer, Trap> {
    if function == "process" {
        let outcomes = instance.process(batch).await?;
        let errors = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Fail(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        Ok(Answer {
            count: outcomes.len(),
            errors,
        })
    } else {
        let results = instance.write(batch).await?;
        let errors = results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect();
        Ok(Answer {
            count: results.len(),
            errors,
        })
    }
}

/// Call `function` with each batch on one fresh instance; check one answer per message.
pub(super) async fn counts(
    subject: &Subject<'_>,
    function: &str,
    batches: &[Vec<Message>],
) -> Verdict {
    let largest = batches.iter().map(Vec::len).max().unwrap_or(0);
    let mut instance = match subject.ready_for(largest).await {
        Ok(i) => i,
        Err(why) => return Verdict::Fail(why),
    };
    let started = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        match call(&mut instance, function, b).await {
            Ok(answer) if answer.count == b.len() => {}
            Ok(answer) => {
                return Verdict::Fail(format!(
                    "call {} of {}: {} answer{} for {} message{}",
                    i + 1,
                    batches.len(),
                    answer.count,
                    plural(answer.count),
                    b.len(),
                    plural(b.len())
                ));
            }
            Err(trap) => {
                return Verdict::Fail(format!(
                    "call {} of {} ({} messages): {}",
                    i + 1,
                    batches.len(),
                    b.len(),
                    trapped(&trap)
                ));
            }
        }
    }
    let messages: usize = batches.iter().map(Vec::len).sum();
    Verdict::Pass(format!(
        "{} call{}, {messages} messages, {:.0?}",
        batches.len(),
        plural(batches.len()),
        started.elapsed()
    ))
}

/// Rule 23: the same batches through the packed call on one fresh instance and through the
/// typed call on another give the same answers. One instance at a time: a connector's two
/// instances would share its client id, and a broker lets only one connect under it.
pub(super) async fn packed_agrees(
    subject: &Subject<'_>,
    role: Role,
    samples: &[Vec<u8>],
) -> Verdict {
    let mut odd = batch(samples, 100);
    for payload in [Vec::new(), vec![0xff, 0xfe, 0x00], (0..=255u8).collect()] {
        odd.push(message(odd.len(), payload));
    }
    let batches = [batch(samples, 1), batch(samples, 7), odd, Vec::new()];
    let packed = match answers(subject, role, &batches, false).await {
        Ok(a) => a,
        Err(why) => return Verdict::Fail(why),
    };
    let typed = match answers(subject, role, &batches, true).await {
        Ok(a) => a,
        Err(why) => return Verdict::Fail(why),
    };
    for (i, ((p, t), b)) in packed.iter().zip(&typed).zip(&batches).enumerate() {
        let differs = match (p, t) {
            (Ok(p), Ok(t)) => first_difference(p, t),
            // Both trapped: they agree (the trap is another rule's failure).
            (Err(_), Err(_)) => None,
            (Err(trap), Ok(_)) => Some(format!("only the packed call {trap}")),
            (Ok(_), Err(trap)) => Some(format!("only the typed call {trap}")),
        };
        if let Some(why) = differs {
            return Verdict::Fail(format!(
                "batch {} ({} message{}): {why}",
                i + 1,
                b.len(),
                plural(b.len())
            ));
        }
    }
    let messages: usize = batches.iter().map(Vec::len).sum();
    Verdict::Pass(format!(
        "{} batches, {messages} messages, the same answers",
        batches.len()
    ))
}

/// Each batch's answers (as text) on one instance, packed or typed; a trapped call gives its
/// trap and the next batch goes to a fresh instance.
pub(super) async fn answers(
    subject: &Subject<'_>,
    role: Role,
    batches: &[Vec<Message>],
    typed: bool,
) -> Result<Vec<Result<Vec<String>, String>>, String> {
    let mut instance = None;
    let mut out = Vec::new();
    for b in batches {
        let mut current = match instance.take() {
            Some(i) => i,
            None => {
                let mut i = subject.ready().await?;
                if typed {
                    i.use_typed_calls();
                }
                i
            }
        };
        let answer = if role == Role::Transform {
            current
                .process(b)
                .await
                .map(|a| a.iter().map(|o| format!("{o:?}")).collect())
        } else {
            current
                .write(b)
                .await
                .map(|a| a.iter().map(|r| format!("{r:?}")).collect())
        };
        match answer {
            Ok(a) => {
                out.push(Ok(a));
                instance = Some(current);
            }
            Err(trap) => out.push(Err(trapped(&trap))),
        }
    }
    Ok(out)
}

/// Where two lists of answers first differ, if they do.
pub(super) fn first_difference(packed: &[String], typed: &[String]) -> Option<String> {
    if packed.len() != typed.len() {
        return Some(format!(
            "{} packed answers, {} typed",
            packed.len(),
            typed.len()
        ));
    }
    let i = packed.iter().zip(typed).position(|(p, t)| p != t)?;
    let cut = |v: &str| v.chars().take(200).collect::<String>();
    Some(format!(
        "answer {}: packed {}, typed {}",
        i + 1,
        cut(&packed[i]),
        cut(&typed[i])
    ))
}

pub(super) async fn data_checks(
    subject: &Subject<'_>,
    function: &'static str,
    samples: &[Vec<u8>],
    check: &mut impl FnMut(u32, &'static str, Verdict),
) {
    let (one_per, empty, large, repeated, odd_payloads) = if function == "process" {
        (
            "`process` returns one outcome per message, in batches of 1, 7 and 100",
            "`process` accepts an empty batch and returns no outcome",
            "`process` takes a large batch (4,096 messages)",
            "`process` keeps its word over 1,000 calls in a row",
            "`process` handles empty and non-UTF-8 payloads without trapping",
        )
    } else {
        (
            "`write` returns one result per message, in batches of 1, 7 and 100",
            "`write` accepts an empty batch and returns no result",
            "`write` takes a large batch (4,096 messages)",
            "`write` keeps its word over 1,000 calls in a row",
            "`write` answers empty and non-UTF-8 payloads with `ok` or `invalid-data`, never a trap",
        )
    };
    let sizes = [1, 7, 100].map(|n| batch(samples, n));
    check(6, one_per, counts(subject, function, &sizes).await);
    check(7, empty, counts(subject, function, &[Vec::new()]).await);
    check(
        6,
        large,
        counts(subject, function, &[batch(samples, 4096)]).await,
    );
    let many: Vec<Vec<Message>> = (0..1000).map(|_| batch(samples, 3)).collect();
    check(6, repeated, counts(subject, function, &many).await);

    let odd: [(&str, Vec<u8>); 4] = [
        ("an empty payload", Vec::new()),
        ("invalid UTF-8", vec![0xff, 0xfe, 0x00, 0xc3, 0x28]),
        ("a lone surrogate in JSON", b"{\"a\":\"\\ud800\"}".to_vec()),
        ("binary bytes", (0..=255u8).collect()),
    ];
    let mut verdict = Verdict::Pass(String::new());
    let mut seen = Vec::new();
    for (what, payload) in odd {
        let mut instance = match subject.ready().await {
            Ok(i) => i,
            Err(why) => {
                verdict = Verdict::Fail(why);
                break;
            }
        };
        match call(&mut instance, function, &[message(0, payload)]).await {
            Ok(answer) if answer.count != 1 => {
                verdict = Verdict::Fail(format!(
                    "{} answer{} for {what}",
                    answer.count,
                    plural(answer.count)
                ));
                break;
            }
            Ok(answer) => {
                // Rule 10: a payload the plugin cannot use is invalid data, for both roles.
                if let Some(e) = answer
                    .errors
                    .iter()
                    .find(|e| e.kind != ErrorKind::InvalidData)
                {
                    verdict = Verdict::Fail(format!(
                        "{what} got a `{}` error, not `invalid-data`: {}",
                        e.kind, e.message
                    ));
                    break;
                }
                seen.push(if answer.errors.is_empty() {
                    format!("{what}: ok")
                } else {
                    format!("{what}: {}", answer.errors[0].kind)
                });
            }
            Err(trap) => {
                verdict = Verdict::Fail(format!("{what}: {}", trapped(&trap)));
                break;
            }
        }
    }
    if let Verdict::Pass(_) = verdict {
        verdict = Verdict::Pass(seen.join("; "));
    }
    check(10, odd_payloads, verdict);
}
