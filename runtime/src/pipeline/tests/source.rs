//! Source recovery: a trap starts a fresh instance and delivery goes on from the last
//! acknowledged position; an answer over the limits asks for fewer messages; only a single
//! message over the limits, or traps in a row past `retry.attempts`, stop the pipeline.

use super::*;

/// A broker-like log of `total` numbered messages. Each instance reads on from the last
/// acknowledged position (what a consumer group delivers again), so a restart repeats what
/// was in flight and loses nothing.
struct Log {
    total: u64,
    acked: u64,
    polls: u64,
    /// Every `trap_every`th poll traps (0: never).
    trap_every: u64,
    /// A poll asking for more than this many messages is over the limits.
    fits: u32,
}

struct LogSource {
    log: Arc<Mutex<Log>>,
    next: u64,
}

fn over_limit(reason: &str) -> Trap {
    Trap {
        function: "poll",
        over_limit: true,
        ..trap(reason)
    }
}

#[async_trait::async_trait]
impl SourceCalls for LogSource {
    async fn poll(
        &mut self,
        max: u32,
        _max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        let mut log = self.log.lock().unwrap();
        log.polls += 1;
        if log.trap_every > 0 && log.polls.is_multiple_of(log.trap_every) {
            return Err(trap("unreachable executed"));
        }
        if self.next == log.total {
            return Ok(Ok(PollResult::EndOfStream));
        }
        let end = (self.next + u64::from(max)).min(log.total);
        if end - self.next > u64::from(log.fits) {
            return Err(over_limit("output of 20 MiB is over the limit of 16 MiB"));
        }
        let messages = (self.next..end)
            .map(|n| message(n.to_string().into_bytes()))
            .collect();
        self.next = end;
        Ok(Ok(PollResult::Batch(SourceBatch {
            messages,
            checkpoint: end,
        })))
    }

    async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let mut log = self.log.lock().unwrap();
        log.acked = log.acked.max(checkpoint);
        Ok(Ok(()))
    }
}

/// The rig with its source replaced by a [`LogSource`] over `log`.
fn log_rig(log: Log) -> (Rig, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(log));
    let mut rig = rig(0, 0, None, Box::new(|_| Ok(())), OnError::Stop);
    let shared = log.clone();
    let start: Start<dyn SourceCalls> = Arc::new(move || {
        let log = shared.clone();
        Box::pin(async move {
            let next = log.lock().unwrap().acked;
            Ok(Box::new(LogSource { log, next }) as Box<dyn SourceCalls>)
        })
    });
    rig.plan.source = SourcePlan::Plugin {
        plugin: "log".into(),
        instances: vec![SourceInstance {
            calls: Box::new(LogSource {
                log: log.clone(),
                next: 0,
            }),
            start,
        }],
    };
    (rig, log)
}

#[tokio::test]
async fn a_source_that_traps_on_every_third_poll_delivers_everything() {
    let (rig, log) = log_rig(Log {
        total: 2_000,
        acked: 0,
        polls: 0,
        trap_every: 3,
        fits: u32::MAX,
    });
    let (report, rig) = run_rig(rig).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let got: std::collections::BTreeSet<u64> = numbers(&rig).into_iter().collect();
    assert_eq!(got.len(), 2_000, "every record delivered at least once");
    assert_eq!(got.last(), Some(&1_999));
    assert_eq!(log.lock().unwrap().acked, 2_000, "everything acknowledged");
    let polls = log.lock().unwrap().polls;
    assert_eq!(
        report.counters.restarts.load(Ordering::Relaxed),
        polls / 3,
        "one fresh instance per trap"
    );
}

#[tokio::test]
async fn an_answer_over_the_limits_asks_for_fewer_messages() {
    // Batches of 64 are over the limit; 10 fit: the source is asked for 32, then 16, then 8.
    let (rig, log) = log_rig(Log {
        total: 500,
        acked: 0,
        polls: 0,
        trap_every: 0,
        fits: 10,
    });
    let (report, rig) = run_rig(rig).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(
        numbers(&rig),
        (0..500).collect::<Vec<_>>(),
        "in order, once"
    );
    assert_eq!(report.counters.restarts.load(Ordering::Relaxed), 3);
    assert!(rig.sink_calls.lock().unwrap().iter().all(|n| *n <= 8));
    assert_eq!(log.lock().unwrap().acked, 500);
}

#[tokio::test]
async fn a_single_message_over_the_limits_stops_the_pipeline_and_says_which() {
    let (rig, _log) = log_rig(Log {
        total: 5,
        acked: 0,
        polls: 0,
        trap_every: 0,
        fits: 0,
    });
    let (report, rig) = run_rig(rig).await;
    let failure = report.failure.expect("the pipeline stops");
    assert_eq!(
        failure.to_string(),
        "pipeline `test`: source `log` was stopped by the host: a single message is over the \
         plugin's limits (output of 20 MiB is over the limit of 16 MiB); raise \
         `limits.max_output` or `limits.memory` of plugin `log`, or make the records smaller"
    );
    assert!(numbers(&rig).is_empty());
}

#[tokio::test]
async fn traps_in_a_row_past_the_attempts_stop_the_pipeline() {
    // Every poll traps: the rig allows 4 attempts, so 4 fresh instances, then the stop.
    let (rig, _log) = log_rig(Log {
        total: 5,
        acked: 0,
        polls: 0,
        trap_every: 1,
        fits: u32::MAX,
    });
    let (report, _rig) = run_rig(rig).await;
    let failure = report.failure.expect("the pipeline stops");
    assert_eq!(
        failure.to_string(),
        "pipeline `test`: source `log` trapped in `process`: unreachable executed"
    );
    assert_eq!(report.counters.restarts.load(Ordering::Relaxed), 4);
}

/// One of several instances sharing a source's work (a consumer group): instance `lane` reads
/// its own log, numbered from `lane * 1_000_000`, and checks at every ack that the sink holds
/// every record up to the checkpoint.
struct LaneSource {
    log: Arc<Mutex<Log>>,
    next: u64,
    offset: u64,
    written: Arc<Mutex<Vec<Message>>>,
    ahead: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl SourceCalls for LaneSource {
    async fn poll(
        &mut self,
        max: u32,
        max_bytes: u64,
    ) -> Result<Result<PollResult, WitError>, Trap> {
        let mut inner = LogSource {
            log: self.log.clone(),
            next: self.next,
        };
        let polled = inner.poll(max, max_bytes).await;
        self.next = inner.next;
        let offset = self.offset;
        polled.map(|r| {
            r.map(|p| match p {
                PollResult::Batch(b) => PollResult::Batch(SourceBatch {
                    messages: b
                        .messages
                        .iter()
                        .map(|m| message((number(m) + offset).to_string().into_bytes()))
                        .collect(),
                    checkpoint: b.checkpoint,
                }),
                end => end,
            })
        })
    }

    async fn ack(&mut self, checkpoint: u64) -> Result<Result<(), WitError>, Trap> {
        let have: std::collections::HashSet<u64> =
            self.written.lock().unwrap().iter().map(number).collect();
        if let Some(missing) = (self.offset..self.offset + checkpoint).find(|n| !have.contains(n)) {
            self.ahead.lock().unwrap().push(format!(
                "ack({checkpoint}) before record {missing} was written"
            ));
        }
        let mut log = self.log.lock().unwrap();
        log.acked = log.acked.max(checkpoint);
        Ok(Ok(()))
    }
}

#[tokio::test]
async fn several_source_instances_each_deliver_and_acknowledge_their_own_share() {
    // Three instances, one of which traps on every third poll, and a sink that fails now
    // and then (retried): every record of every instance once, and no ack runs ahead.
    let mut tries = std::collections::HashMap::<u64, u32>::new();
    let sink: Box<SinkFn> = Box::new(move |m| {
        let n = tries.entry(number(m)).or_insert(0);
        *n += 1;
        if number(m) % 10 == 3 && *n == 1 {
            Err(error(ErrorKind::Retryable, "busy"))
        } else {
            Ok(())
        }
    });
    let mut rig = rig(0, 0, None, sink, OnError::Stop);
    let ahead = Arc::new(Mutex::new(Vec::new()));
    let mut logs = Vec::new();
    let mut instances = Vec::new();
    for lane in 0..3u64 {
        let log = Arc::new(Mutex::new(Log {
            total: 1_500,
            acked: 0,
            polls: 0,
            trap_every: if lane == 1 { 3 } else { 0 },
            fits: u32::MAX,
        }));
        let make = {
            let (log, written, ahead) = (log.clone(), rig.written.clone(), ahead.clone());
            move |next: u64| LaneSource {
                log: log.clone(),
                next,
                offset: lane * 1_000_000,
                written: written.clone(),
                ahead: ahead.clone(),
            }
        };
        let first = make(0);
        let shared = log.clone();
        let start: Start<dyn SourceCalls> = Arc::new(move || {
            let fresh = make(shared.lock().unwrap().acked);
            Box::pin(async move { Ok(Box::new(fresh) as Box<dyn SourceCalls>) })
        });
        instances.push(SourceInstance {
            calls: Box::new(first),
            start,
        });
        logs.push(log);
    }
    rig.plan.source = SourcePlan::Plugin {
        plugin: "group".into(),
        instances,
    };
    let (report, rig) = run_rig(rig).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let got: std::collections::BTreeSet<u64> = numbers(&rig).into_iter().collect();
    let want: std::collections::BTreeSet<u64> = (0..3u64)
        .flat_map(|lane| (0..1_500).map(move |n| lane * 1_000_000 + n))
        .collect();
    assert_eq!(got, want, "every record of every instance delivered");
    for (lane, log) in logs.iter().enumerate() {
        assert_eq!(
            log.lock().unwrap().acked,
            1_500,
            "instance {lane} acknowledged all"
        );
    }
    assert_eq!(
        *ahead.lock().unwrap(),
        Vec::<String>::new(),
        "acks ran ahead"
    );
    assert!(report.counters.restarts.load(Ordering::Relaxed) > 0);
}
