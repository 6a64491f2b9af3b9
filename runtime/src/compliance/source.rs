//! The source rules: polling within `max`, checkpoints that never go back, `end-of-stream`
//! that sticks, acks of delivered checkpoints.

use super::*;

pub(super) async fn source_checks(
    subject: &Subject<'_>,
    check: &mut impl FnMut(u32, &'static str, Verdict),
) {
    // Rule 11: at most `max` messages per poll.
    let mut instance = match subject.ready().await {
        Ok(i) => i,
        Err(why) => {
            check(
                11,
                "`poll(max)` returns at most `max` messages",
                Verdict::Fail(why),
            );
            return;
        }
    };
    let mut verdict = Verdict::Pass(String::new());
    let mut got = Vec::new();
    'maxes: for max in [0u32, 1, 10, 100, 1000] {
        for _ in 0..3 {
            match instance.poll(max, u64::MAX).await {
                Ok(Ok(PollResult::Batch(b))) if b.messages.len() > max as usize => {
                    verdict = Verdict::Fail(format!(
                        "`poll({max})` returned {} message{}",
                        b.messages.len(),
                        plural(b.messages.len())
                    ));
                    break 'maxes;
                }
                Ok(Ok(PollResult::Batch(b))) => got.push(format!("{max}→{}", b.messages.len())),
                Ok(Ok(PollResult::EndOfStream)) => {
                    got.push(format!("{max}→end"));
                    break 'maxes;
                }
                Ok(Err(e)) if e.kind == ErrorKind::Retryable => {
                    got.push(format!("{max}→retryable"));
                }
                Ok(Err(e)) => {
                    verdict = Verdict::Fail(format!(
                        "`poll({max})` failed: {} error: {}",
                        e.kind, e.message
                    ));
                    break 'maxes;
                }
                Err(trap) => {
                    verdict = Verdict::Fail(format!("`poll({max})` {}", trapped(&trap)));
                    break 'maxes;
                }
            }
        }
    }
    if let Verdict::Pass(_) = verdict {
        got.dedup();
        verdict = Verdict::Pass(format!("max→messages: {}", got.join(", ")));
    }
    check(11, "`poll(max)` returns at most `max` messages", verdict);

    // Rules 12, 13 and 14 on one instance: poll to the end (or the budget), checkpoints never
    // decrease, each checkpoint acknowledged, then end-of-stream must stick.
    let mut instance = match subject.ready().await {
        Ok(i) => i,
        Err(why) => {
            check(13, "checkpoints never decrease", Verdict::Fail(why));
            return;
        }
    };
    let started = Instant::now();
    let mut last: Option<u64> = None;
    let mut messages = 0usize;
    let mut batches = 0usize;
    let mut ended = false;
    let mut broken: Option<(u32, &'static str, String)> = None;
    while started.elapsed() < subject.options.source_budget {
        // Batches of varied sizes, so that even a short stream comes in several.
        match instance.poll([1, 7, 64, 256][batches % 4], u64::MAX).await {
            Ok(Ok(PollResult::Batch(b))) => {
                if b.messages.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                batches += 1;
                messages += b.messages.len();
                if let Some(prev) = last
                    && b.checkpoint < prev
                {
                    broken = Some((
                        13,
                        "checkpoints never decrease",
                        format!(
                            "batch {batches} carried checkpoint {} after {prev}",
                            b.checkpoint
                        ),
                    ));
                    break;
                }
                last = Some(b.checkpoint);
                match instance.ack(b.checkpoint).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.kind == ErrorKind::Retryable => {}
                    Ok(Err(e)) => {
                        broken = Some((
                            14,
                            "`ack` of a delivered checkpoint succeeds",
                            format!("`ack({})`: {} error: {}", b.checkpoint, e.kind, e.message),
                        ));
                        break;
                    }
                    Err(trap) => {
                        broken = Some((
                            14,
                            "`ack` of a delivered checkpoint succeeds",
                            format!("`ack({})` {}", b.checkpoint, trapped(&trap)),
                        ));
                        break;
                    }
                }
            }
            Ok(Ok(PollResult::EndOfStream)) => {
                ended = true;
                break;
            }
            Ok(Err(e)) if e.kind == ErrorKind::Retryable => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => {
                broken = Some((
                    11,
                    "`poll` keeps working",
                    format!("`poll` failed: {} error: {}", e.kind, e.message),
                ));
                break;
            }
            Err(trap) => {
                broken = Some((
                    11,
                    "`poll` keeps working",
                    format!("`poll` {}", trapped(&trap)),
                ));
                break;
            }
        }
    }
    if let Some((rule, what, why)) = broken {
        // The failure, and the checks of this walk that it kept from finishing.
        let checks: [(u32, &'static str); 3] = [
            (13, "checkpoints never decrease"),
            (14, "`ack` of a delivered checkpoint succeeds"),
            (12, "`end-of-stream` sticks once returned"),
        ];
        if !checks.iter().any(|(r, w)| *r == rule && *w == what) {
            check(rule, what, Verdict::Fail(why.clone()));
        }
        for (r, w) in checks {
            if r == rule && w == what {
                check(r, w, Verdict::Fail(why.clone()));
            } else {
                check(
                    r,
                    w,
                    Verdict::NotApplicable(format!(
                        "not reached: rule {rule} failed first on the same instance"
                    )),
                );
            }
        }
        return;
    }
    let seen = format!(
        "{messages} message{} in {batches} batch{}",
        plural(messages),
        if batches == 1 { "" } else { "es" }
    );
    check(
        13,
        "checkpoints never decrease",
        Verdict::Pass(seen.clone()),
    );
    check(
        14,
        "`ack` of a delivered checkpoint succeeds",
        Verdict::Pass(format!("{batches} ack{}", plural(batches))),
    );
    if !ended {
        check(
            12,
            "`end-of-stream` sticks once returned",
            Verdict::NotApplicable(format!(
                "no end of stream within {:.0?} ({seen}): an endless source",
                subject.options.source_budget
            )),
        );
        return;
    }
    let mut verdict = Verdict::Pass(format!("after {seen}"));
    for i in 1..=3 {
        match instance.poll(10, u64::MAX).await {
            Ok(Ok(PollResult::EndOfStream)) => {}
            Ok(Ok(PollResult::Batch(b))) => {
                verdict = Verdict::Fail(format!(
                    "poll {i} after `end-of-stream` returned a batch of {}",
                    b.messages.len()
                ));
                break;
            }
            Ok(Err(e)) => {
                verdict = Verdict::Fail(format!(
                    "poll {i} after `end-of-stream` failed: {} error: {}",
                    e.kind, e.message
                ));
                break;
            }
            Err(trap) => {
                verdict =
                    Verdict::Fail(format!("poll {i} after `end-of-stream` {}", trapped(&trap)));
                break;
            }
        }
    }
    check(12, "`end-of-stream` sticks once returned", verdict);
}
