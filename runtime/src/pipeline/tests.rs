//! The pipeline engine with in-memory fake plugins: retries with back-off, the breaker, acks
//! after every destination, dead letters, contract violations. No Wasm; each runs in
//! milliseconds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::contract::{ErrorKind, Message, Outcome, PollResult, SourceBatch, WitError, message};
use crate::plugin::Trap;

mod lanes;
mod source;

/// A source of `batches` batches of `per_batch` messages numbered from 0; checkpoint = batch
/// number. Each ack is recorded with how many messages the sink had by then.
struct FakeSource {
    next: u64,
    batches: u64,
    per_batch: u64,
    acks: Arc<Mutex<Vec<(u64, usize)>>>,
    written: Arc<Mutex<Vec<Message>>>,
}

#[async_trait::async_trait]
impl SourceCalls for FakeSource {
    async fn poll(
        &mut self,
        max: u32,
        _max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        if self.next == self.batches {
            return Ok(Ok(PollResult::EndOfStream));
        }
        let first = self.next * self.per_batch;
        let messages = (first..first + self.per_batch.min(u64::from(max)))
            .map(|n| message(n.to_string().into_bytes()))
            .collect();
        let checkpoint = self.next;
        self.next += 1;
        Ok(Ok(PollResult::Batch(SourceBatch {
            messages,
            checkpoint,
        })))
    }

    async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let written = self.written.lock().map(|w| w.len()).unwrap_or(0);
        if let Ok(mut acks) = self.acks.lock() {
            acks.push((checkpoint, written));
        }
        Ok(Ok(()))
    }
}

type TransformFn = dyn FnMut(&[Message]) -> Result<Vec<Outcome>, Trap> + Send;
type SinkFn = dyn FnMut(&Message) -> Result<(), WitError> + Send;

/// A transform whose every instance shares one behaviour (so a restart keeps its script).
struct FakeTransform(Arc<Mutex<Box<TransformFn>>>);

#[async_trait::async_trait]
impl TransformCalls for FakeTransform {
    async fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap> {
        match self.0.lock() {
            Ok(mut f) => f(batch),
            Err(_) => Err(trap("poisoned")),
        }
    }
}

/// A sink that stores what it accepts; `judge` decides per record.
struct FakeSink {
    judge: Arc<Mutex<Box<SinkFn>>>,
    written: Arc<Mutex<Vec<Message>>>,
    calls: Arc<Mutex<Vec<usize>>>,
}

#[async_trait::async_trait]
impl SinkCalls for FakeSink {
    async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(batch.len());
        }
        let mut results = Vec::new();
        for m in batch {
            let result = match self.judge.lock() {
                Ok(mut judge) => judge(m),
                Err(_) => return Err(trap("poisoned")),
            };
            if result.is_ok()
                && let Ok(mut written) = self.written.lock()
            {
                written.push(m.clone());
            }
            results.push(result);
        }
        Ok(results)
    }
}

fn trap(reason: &str) -> Trap {
    Trap {
        plugin: Arc::from("p/fake"),
        function: "process",
        reason: reason.to_owned(),
        over_limit: false,
    }
}

fn error(kind: ErrorKind, text: &str) -> WitError {
    WitError {
        kind,
        message: text.to_owned(),
    }
}

fn number(m: &Message) -> u64 {
    String::from_utf8_lossy(&m.payload)
        .parse()
        .unwrap_or(u64::MAX)
}

/// A pipeline under test: source → (transform) → sink, with what each recorded.
struct Rig {
    acks: Arc<Mutex<Vec<(u64, usize)>>>,
    written: Arc<Mutex<Vec<Message>>>,
    sink_calls: Arc<Mutex<Vec<usize>>>,
    restarts: Arc<Mutex<u32>>,
    dead_letter_file: tempfile::TempDir,
    plan: PipelinePlan,
}

fn rig(
    batches: u64,
    per_batch: u64,
    transform: Option<Box<TransformFn>>,
    sink: Box<SinkFn>,
    on_error: OnError,
) -> Rig {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let written = Arc::new(Mutex::new(Vec::new()));
    let sink_calls = Arc::new(Mutex::new(Vec::new()));
    let restarts = Arc::new(Mutex::new(0u32));
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource {
        next: 0,
        batches,
        per_batch,
        acks: acks.clone(),
        written: written.clone(),
    };
    let transforms = match transform {
        Some(f) => {
            let shared = Arc::new(Mutex::new(f));
            let (s, r) = (shared.clone(), restarts.clone());
            let start: Start<dyn TransformCalls> = Arc::new(move || {
                *r.lock().unwrap() += 1;
                let fresh: Box<dyn TransformCalls> = Box::new(FakeTransform(s.clone()));
                Box::pin(async move { Ok(fresh) })
            });
            vec![Slot::Live(Box::new(StagePlan {
                plugin: "t".into(),
                version: "1".into(),
                instances: vec![Box::new(FakeTransform(shared)) as Box<dyn TransformCalls>],
                partition: None,
                start,
                code: None,
            }))]
        }
        None => Vec::new(),
    };
    let judge = Arc::new(Mutex::new(sink));
    let make_sink = {
        let (judge, written, calls) = (judge.clone(), written.clone(), sink_calls.clone());
        move || -> Box<dyn SinkCalls> {
            Box::new(FakeSink {
                judge: judge.clone(),
                written: written.clone(),
                calls: calls.clone(),
            })
        }
    };
    let sink_instance = make_sink();
    let r = restarts.clone();
    let sink_start: Start<dyn SinkCalls> = Arc::new(move || {
        *r.lock().unwrap() += 1;
        let fresh = make_sink();
        Box::pin(async move { Ok(fresh) })
    });
    let plan = PipelinePlan {
        name: "test".into(),
        source: SourcePlan::Plugin {
            plugin: "s".into(),
            instances: vec![SourceInstance {
                calls: Box::new(source),
                start: Arc::new(|| {
                    Box::pin(async { Err(anyhow::anyhow!("this fake cannot restart")) })
                }),
            }],
        },
        transforms,
        sinks: vec![Slot::Live(Box::new(StagePlan {
            plugin: "k".into(),
            version: "1".into(),
            instances: vec![sink_instance],
            partition: None,
            start: sink_start,
            code: None,
        }))],
        batch_size: 64,
        batch_bytes: 1 << 20,
        buffer: 2,
        on_error,
        retry: Retry {
            attempts: 4,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
        breaker: Breaker {
            traps: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_millis(30),
        },
        dead_letters: Arc::new(DeadLetters::new(dir.path().join("dl.jsonl"))),
        router: None,
        max_in_flight: 1 << 20,
        reply_timeout: Duration::from_secs(30),
        tracer: None,
    };
    Rig {
        acks,
        written,
        sink_calls,
        restarts,
        dead_letter_file: dir,
        plan,
    }
}

async fn run_rig(rig: Rig) -> (Report, Rig) {
    let Rig {
        acks,
        written,
        sink_calls,
        restarts,
        dead_letter_file,
        plan,
    } = rig;
    let (_drain_tx, drain) = watch::channel(false);
    let (_abort_tx, abort) = watch::channel(false);
    let counters = plan.counters();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        run(plan, Control { drain, abort }, counters),
    )
    .await
    .expect("the pipeline finishes");
    let placeholder = PipelinePlan {
        name: String::new(),
        source: SourcePlan::Replay(Vec::new()),
        transforms: Vec::new(),
        sinks: Vec::new(),
        batch_size: 1,
        batch_bytes: 1,
        buffer: 1,
        on_error: OnError::Stop,
        retry: Retry::default(),
        breaker: Breaker::default(),
        dead_letters: Arc::new(DeadLetters::new(dead_letter_file.path().join("x"))),
        router: None,
        max_in_flight: 1,
        reply_timeout: Duration::from_secs(30),
        tracer: None,
    };
    let rig = Rig {
        acks,
        written,
        sink_calls,
        restarts,
        dead_letter_file,
        plan: placeholder,
    };
    (report, rig)
}

fn dead_letters(rig: &Rig) -> Vec<Entry> {
    let path = rig.dead_letter_file.path().join("dl.jsonl");
    if path.exists() {
        dead_letter::read(&path).unwrap()
    } else {
        Vec::new()
    }
}

fn numbers(rig: &Rig) -> Vec<u64> {
    rig.written.lock().unwrap().iter().map(number).collect()
}

#[tokio::test]
async fn retryable_errors_are_retried_with_back_off_until_written() {
    // Every record fails twice with `retryable`, then is accepted.
    let mut seen = std::collections::HashMap::<u64, u32>::new();
    let sink: Box<SinkFn> = Box::new(move |m| {
        let tries = seen.entry(number(m)).or_insert(0);
        *tries += 1;
        if *tries <= 2 {
            Err(error(ErrorKind::Retryable, "busy"))
        } else {
            Ok(())
        }
    });
    let (report, rig) = run_rig(rig(3, 10, None, sink, OnError::Stop)).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(numbers(&rig), (0..30).collect::<Vec<_>>());
    // Two retry rounds per batch, each sending the whole batch again.
    assert_eq!(report.counters.retries.load(Ordering::Relaxed), 6);
    assert_eq!(*rig.sink_calls.lock().unwrap(), vec![10; 9]);
    assert_eq!(report.counters.written[0].load(Ordering::Relaxed), 30);
    assert_eq!(report.counters.acked_batches.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_record_still_failing_after_every_attempt_is_dead_lettered_with_its_attempts() {
    let sink: Box<SinkFn> = Box::new(|m| {
        if number(m) == 7 {
            Err(error(ErrorKind::Retryable, "never"))
        } else {
            Ok(())
        }
    });
    let (report, rig) = run_rig(rig(1, 10, None, sink, OnError::DeadLetter)).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(numbers(&rig).len(), 9);
    let dead = dead_letters(&rig);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].error_kind, "retryable");
    assert_eq!(dead[0].stage, StageKind::Sink);
    assert_eq!(dead[0].message.to_message().unwrap().payload, b"7".to_vec());
    // Only the failing record was sent again: one batch of 10, then three rounds of 1.
    assert_eq!(*rig.sink_calls.lock().unwrap(), vec![10, 1, 1, 1]);
}

#[tokio::test]
async fn fatal_and_invalid_data_are_dead_lettered_at_once_and_the_rest_goes_on() {
    let transform: Box<TransformFn> = Box::new(|batch| {
        Ok(batch
            .iter()
            .map(|m| match number(m) % 10 {
                3 => Outcome::Fail(error(ErrorKind::Fatal, "bad three")),
                5 => Outcome::Fail(error(ErrorKind::InvalidData, "bad five")),
                9 => Outcome::Drop,
                _ => Outcome::Keep,
            })
            .collect())
    });
    let sink: Box<SinkFn> = Box::new(|_| Ok(()));
    let (report, rig) = run_rig(rig(2, 10, Some(transform), sink, OnError::DeadLetter)).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(
        numbers(&rig),
        vec![0, 1, 2, 4, 6, 7, 8, 10, 11, 12, 14, 16, 17, 18]
    );
    let dead = dead_letters(&rig);
    let kinds: Vec<(&str, u32, StageKind)> = dead
        .iter()
        .map(|e| (e.error_kind.as_str(), e.attempts, e.stage))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("fatal", 1, StageKind::Transform),
            ("invalid-data", 1, StageKind::Transform),
            ("fatal", 1, StageKind::Transform),
            ("invalid-data", 1, StageKind::Transform),
        ]
    );
    assert_eq!(report.counters.dropped.load(Ordering::Relaxed), 2);
    assert_eq!(report.counters.dead_lettered.load(Ordering::Relaxed), 4);
    assert_eq!(report.counters.retries.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn with_on_error_stop_a_fatal_error_stops_the_pipeline_naming_stage_and_record() {
    let sink: Box<SinkFn> = Box::new(|m| {
        if number(m) == 12 {
            Err(error(ErrorKind::Fatal, "no such table"))
        } else {
            Ok(())
        }
    });
    let (report, rig) = run_rig(rig(3, 10, None, sink, OnError::Stop)).await;
    let failure = report.failure.expect("it stops");
    assert_eq!(
        failure.to_string(),
        "pipeline `test`: sink `k` (#1) failed in `write` on record 2 of its batch with fatal \
         error: no such table"
    );
    // The first batch was acked; nothing at or after the failed record was.
    let acks = rig.acks.lock().unwrap().clone();
    assert!(
        acks.iter().all(|(checkpoint, _)| *checkpoint == 0),
        "{acks:?}"
    );
}

#[tokio::test]
async fn a_wrong_number_of_outcomes_is_a_contract_violation() {
    let transform: Box<TransformFn> = Box::new(|batch| Ok(vec![Outcome::Keep; batch.len() - 1]));
    let sink: Box<SinkFn> = Box::new(|_| Ok(()));
    let (report, rig) = run_rig(rig(1, 5, Some(transform), sink, OnError::Stop)).await;
    let failure = report.failure.expect("it stops");
    assert_eq!(
        failure.to_string(),
        "pipeline `test`: transform `t` (#1) broke the plugin contract: `process` returned 4 \
         outcomes for 5 messages; it must return exactly one outcome per input, in order"
    );
    assert!(matches!(failure.cause, Cause::Contract(_)));
    assert!(numbers(&rig).is_empty());
    assert!(rig.acks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_number_of_results_is_dead_lettered_as_contract_without_retry() {
    // A sink that answers one result too many for every batch.
    struct Extra;
    #[async_trait::async_trait]
    impl SinkCalls for Extra {
        async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
            Ok(vec![Ok(()); batch.len() + 1])
        }
    }
    let mut r = rig(1, 3, None, Box::new(|_| Ok(())), OnError::DeadLetter);
    r.plan.sinks = vec![Slot::Live(Box::new(StagePlan {
        plugin: "k".into(),
        version: "2".into(),
        instances: vec![Box::new(Extra)],
        partition: None,
        start: Arc::new(|| Box::pin(async { Ok(Box::new(Extra) as Box<dyn SinkCalls>) })),
        code: None,
    }))];
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let dead = dead_letters(&rig);
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter()
            .all(|e| e.error_kind == "contract" && e.attempts == 1)
    );
    assert_eq!(
        dead[0].error,
        "`write` returned 4 results for 3 messages; it must return exactly one result per \
         input, in order"
    );
    assert_eq!(report.counters.retries.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn acks_never_run_ahead_of_the_sink() {
    // A slow, flaky sink: every third record fails once (retryable).
    let mut seen = std::collections::HashSet::new();
    let sink: Box<SinkFn> = Box::new(move |m| {
        let n = number(m);
        if n.is_multiple_of(3) && seen.insert(n) {
            Err(error(ErrorKind::Retryable, "flaky"))
        } else {
            Ok(())
        }
    });
    let (report, rig) = run_rig(rig(20, 8, None, sink, OnError::Stop)).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let mut got = numbers(&rig);
    got.sort_unstable();
    assert_eq!(got, (0..160).collect::<Vec<_>>());
    let acks = rig.acks.lock().unwrap().clone();
    assert!(!acks.is_empty());
    let mut last = None;
    for (checkpoint, written_then) in &acks {
        // Checkpoint c covers batches 0..=c: 8 records each, all written before the ack.
        assert!(
            *written_then >= (*checkpoint as usize + 1) * 8,
            "ack of {checkpoint} with only {written_then} written"
        );
        assert!(last.is_none_or(|l| l < *checkpoint), "acks in order");
        last = Some(*checkpoint);
    }
    assert_eq!(last, Some(19));
}

#[tokio::test]
async fn traps_restart_the_instance_until_the_breaker_opens_and_settles_the_batch() {
    // The transform traps on its first 3 calls, then behaves.
    let mut calls = 0u32;
    let transform: Box<TransformFn> = Box::new(move |batch| {
        calls += 1;
        if calls <= 3 {
            Err(trap("unreachable executed"))
        } else {
            Ok(vec![Outcome::Keep; batch.len()])
        }
    });
    let sink: Box<SinkFn> = Box::new(|_| Ok(()));
    let mut r = rig(1, 4, Some(transform), sink, OnError::DeadLetter);
    r.plan.retry.attempts = 10;
    let restarts = r.restarts.clone();
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    // Three traps: three fresh instances, and the third opened the breaker, so the batch was
    // settled by on_error without a fourth call.
    assert_eq!(*restarts.lock().unwrap(), 3);
    assert_eq!(report.counters.restarts.load(Ordering::Relaxed), 3);
    let dead = dead_letters(&rig);
    assert_eq!(dead.len(), 4);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].error_kind, "circuit-open");
    assert!(numbers(&rig).is_empty());
}

#[tokio::test]
async fn an_open_breaker_lets_one_trial_through_after_its_cool_down() {
    let mut calls = 0u32;
    let transform: Box<TransformFn> = Box::new(move |batch| {
        calls += 1;
        if calls <= 3 {
            Err(trap("unreachable executed"))
        } else {
            Ok(vec![Outcome::Keep; batch.len()])
        }
    });
    let r = rig(
        0,
        1,
        Some(transform),
        Box::new(|_| Ok(())),
        OnError::DeadLetter,
    );
    let _dead_letter_dir = r.dead_letter_file;
    let mut stage: Stage<stage::TransformKind> = {
        let plan = r.plan;
        let Some(Slot::Live(t)) = plan.transforms.into_iter().next() else {
            panic!("a live transform");
        };
        let policy = Policy {
            pipeline: "test".into(),
            on_error: OnError::DeadLetter,
            retry: Retry {
                attempts: 1,
                ..plan.retry
            },
            breaker: plan.breaker,
            dead_letters: plan.dead_letters.clone(),
            counters: Arc::new(Counters::default()),
            book: None,
            tracer: None,
        };
        match super::stages(*t, Role::Transform, 1, &policy) {
            Ok(mut lanes) => lanes.stages.remove(0),
            Err(_) => panic!("one stage"),
        }
    };
    let batch = || vec![message(b"1".to_vec())];
    // Three traps (one attempt each): the third opens the breaker.
    for _ in 0..3 {
        assert!(stage.transform(batch(), None).await.unwrap().is_empty());
    }
    // Open: the plugin is not called; the record is settled at once.
    assert!(stage.transform(batch(), None).await.unwrap().is_empty());
    assert_eq!(
        stage.policy.counters.dead_lettered.load(Ordering::Relaxed),
        4
    );
    // After the cool-down, one trial batch goes through, succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(stage.transform(batch(), None).await.unwrap().len(), 1);
    assert_eq!(stage.transform(batch(), None).await.unwrap().len(), 1);
    assert_eq!(
        stage.policy.counters.dead_lettered.load(Ordering::Relaxed),
        4
    );
}

#[tokio::test]
async fn a_failing_dead_letter_channel_is_a_host_failure_not_the_plugins() {
    let sink: Box<SinkFn> = Box::new(|_| Err(error(ErrorKind::Fatal, "nope")));
    let mut r = rig(1, 2, None, sink, OnError::DeadLetter);
    // A directory where the file should be: the channel cannot open it.
    let blocked = r.dead_letter_file.path().join("blocked");
    std::fs::create_dir_all(&blocked).unwrap();
    r.plan.dead_letters = Arc::new(DeadLetters::new(blocked));
    let (report, rig) = run_rig(r).await;
    let failure = report.failure.expect("it stops");
    assert!(matches!(failure.cause, Cause::Host(_)), "{failure:?}");
    assert!(
        failure.to_string().starts_with(
            "pipeline `test`: sink `k` (#1) was stopped by the host: dead-letter channel: \
             cannot open the dead-letter file"
        ),
        "{failure}"
    );
    assert!(rig.acks.lock().unwrap().is_empty());
}
