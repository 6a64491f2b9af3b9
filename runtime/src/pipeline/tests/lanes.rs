//! Stages with several instances (`concurrency`): the engine's promises hold with N lanes
//! whose calls finish in any order. Fakes sleep a pseudo-random time per batch, so lanes
//! overtake each other; nothing here depends on how fast the machine is.

use std::collections::{BTreeMap, HashSet};

use super::*;

/// Pseudo-random 0..max (µs) from a number: the same run always gets the same delays.
fn jitter(n: u64, max: u64) -> Duration {
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Duration::from_micros(mixed % max)
}

/// A transform instance that sleeps, then gives every record the key `n % 5` (as a
/// replacement message) and notes which instance did it.
struct SlowTransform {
    id: usize,
    seen: Arc<Mutex<Vec<usize>>>,
}

#[async_trait::async_trait]
impl TransformCalls for SlowTransform {
    async fn process(&mut self, batch: &[Message]) -> Result<Vec<Outcome>, Trap> {
        let first = batch.first().map(number).unwrap_or(0);
        tokio::time::sleep(jitter(first, 3000)).await;
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(self.id);
        }
        Ok(batch
            .iter()
            .map(|m| {
                let mut keyed = m.clone();
                keyed.key = Some((number(m) % 5).to_string().into_bytes());
                Outcome::Replace(vec![keyed])
            })
            .collect())
    }
}

/// A sink instance that sleeps before writing through a [`FakeSink`].
struct SlowSink(FakeSink);

#[async_trait::async_trait]
impl SinkCalls for SlowSink {
    async fn write(&mut self, batch: &[Message]) -> Result<Vec<Result<(), WitError>>, Trap> {
        let first = batch.first().map(number).unwrap_or(0);
        tokio::time::sleep(jitter(first.wrapping_add(7), 2000)).await;
        self.0.write(batch).await
    }
}

/// Give the rig's transform `n` slow instances (noting who worked in `seen`).
fn slow_transforms(r: &mut Rig, n: usize, seen: &Arc<Mutex<Vec<usize>>>) {
    if let Some(Slot::Live(plan)) = r.plan.transforms.first_mut() {
        plan.instances = (0..n)
            .map(|id| {
                Box::new(SlowTransform {
                    id,
                    seen: seen.clone(),
                }) as Box<dyn TransformCalls>
            })
            .collect();
    }
}

/// Give the rig's sink `n` slow instances writing into the rig's shared record, judged by
/// `judge` (shared, like one plugin's behaviour).
fn slow_sinks(r: &mut Rig, n: usize, judge: Box<SinkFn>, partition: Option<PartitionBy>) {
    let judge = Arc::new(Mutex::new(judge));
    let (written, calls) = (r.written.clone(), r.sink_calls.clone());
    let make = move || -> Box<dyn SinkCalls> {
        Box::new(SlowSink(FakeSink {
            judge: judge.clone(),
            written: written.clone(),
            calls: calls.clone(),
        }))
    };
    if let Some(Slot::Live(plan)) = r.plan.sinks.first_mut() {
        plan.instances = (0..n).map(|_| make()).collect();
        plan.partition = partition;
        let make = Arc::new(make);
        plan.start = Arc::new(move || {
            let fresh = make();
            Box::pin(async move { Ok(fresh) })
        });
    }
}

fn keep_all() -> Box<TransformFn> {
    Box::new(|batch| Ok(vec![Outcome::Keep; batch.len()]))
}

#[tokio::test]
async fn four_transform_lanes_hand_on_records_in_source_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut r = rig(
        200,
        10,
        Some(keep_all()),
        Box::new(|_| Ok(())),
        OnError::Stop,
    );
    slow_transforms(&mut r, 4, &seen);
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(numbers(&rig), (0..2000).collect::<Vec<_>>());
    // Every instance took batches: the work was really spread.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 4, "{seen:?}");
    // Acks in order, each after everything up to it was written.
    let acks = rig.acks.lock().unwrap();
    assert_eq!(acks.last().map(|a| a.0), Some(199));
    for (checkpoint, written) in acks.iter() {
        assert!(
            *written as u64 >= (checkpoint + 1) * 10,
            "{checkpoint} {written}"
        );
    }
}

#[tokio::test]
async fn four_sink_lanes_write_every_record_once_and_acks_never_run_ahead() {
    let mut r = rig(300, 7, None, Box::new(|_| Ok(())), OnError::Stop);
    slow_sinks(&mut r, 4, Box::new(|_| Ok(())), None);
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let mut got = numbers(&rig);
    // Whole batches went to whichever lane was free: they may land out of order…
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    got.sort_unstable();
    // …but every record is there exactly once.
    assert_eq!(got, (0..2100).collect::<Vec<_>>());
    assert!(
        !in_order,
        "four lanes with random delays should overtake each other"
    );
    assert_eq!(report.counters.written[0].load(Ordering::Relaxed), 2100);
    let acks = rig.acks.lock().unwrap();
    assert_eq!(acks.last().map(|a| a.0), Some(299));
    let mut last = None;
    for (checkpoint, written) in acks.iter() {
        assert!(
            *written as u64 >= (checkpoint + 1) * 7,
            "{checkpoint} {written}"
        );
        assert!(
            last < Some(*checkpoint),
            "acks go forward: {last:?} then {checkpoint}"
        );
        last = Some(*checkpoint);
    }
}

#[tokio::test]
async fn partitioned_sink_lanes_keep_each_keys_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut r = rig(
        200,
        10,
        Some(keep_all()),
        Box::new(|_| Ok(())),
        OnError::Stop,
    );
    // Two transform lanes give each record the key n % 5; four sink lanes partition by it.
    slow_transforms(&mut r, 2, &seen);
    slow_sinks(&mut r, 4, Box::new(|_| Ok(())), Some(PartitionBy::Key));
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let written = rig.written.lock().unwrap();
    assert_eq!(written.len(), 2000);
    let mut by_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for m in written.iter() {
        by_key
            .entry(m.key.clone().unwrap_or_default())
            .or_default()
            .push(number(m));
    }
    assert_eq!(by_key.len(), 5);
    for (key, numbers) in &by_key {
        let k: u64 = String::from_utf8_lossy(key).parse().unwrap();
        let expected: Vec<u64> = (0..2000).filter(|n| n % 5 == k).collect();
        assert_eq!(numbers, &expected, "key {k} in order");
    }
    // Across keys the lanes did overtake each other.
    let all: Vec<u64> = written.iter().map(number).collect();
    assert!(all.windows(2).any(|w| w[0] > w[1]));
}

#[tokio::test]
async fn flaky_sink_lanes_and_a_trapping_transform_lose_nothing_and_write_nothing_twice() {
    // The transform traps on every batch holding a multiple of 97 (it is restarted, retried,
    // then its records are dead-lettered); the sink refuses one record in ten once with
    // `retryable` (each is retried and then written).
    let transform: Box<TransformFn> = Box::new(|batch| {
        if batch.iter().any(|m| number(m).is_multiple_of(97)) {
            Err(trap("boom"))
        } else {
            Ok(vec![Outcome::Keep; batch.len()])
        }
    });
    let mut refused = HashSet::new();
    let judge: Box<SinkFn> = Box::new(move |m| {
        let n = number(m);
        if n % 10 == 3 && refused.insert(n) {
            Err(error(ErrorKind::Retryable, "busy"))
        } else {
            Ok(())
        }
    });
    let mut r = rig(
        100,
        10,
        Some(transform),
        Box::new(|_| Ok(())),
        OnError::DeadLetter,
    );
    r.plan.breaker.traps = 1000;
    if let Some(Slot::Live(plan)) = r.plan.transforms.first_mut() {
        let more: Vec<Box<dyn TransformCalls>> = (0..3)
            .map(|_| {
                let start = plan.start.clone();
                futures_util::FutureExt::now_or_never(start())
                    .and_then(Result::ok)
                    .expect("a fake starts at once")
            })
            .collect();
        plan.instances.extend(more);
    }
    slow_sinks(&mut r, 3, judge, None);
    let (report, rig) = run_rig(r).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    let written = numbers(&rig);
    let dead: Vec<u64> = dead_letters(&rig)
        .iter()
        .map(|e| number(&e.message.to_message().unwrap()))
        .collect();
    let mut all: Vec<u64> = written.iter().chain(dead.iter()).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..1000).collect::<Vec<_>>(),
        "each record once, written or dead"
    );
    // The batches with a multiple of 97 are the dead ones.
    let expected_dead: HashSet<u64> = (0..100u64)
        .filter(|b| (b * 10..b * 10 + 10).any(|n: u64| n.is_multiple_of(97)))
        .flat_map(|b| b * 10..b * 10 + 10)
        .collect();
    assert_eq!(dead.iter().copied().collect::<HashSet<_>>(), expected_dead);
    assert_eq!(
        report.counters.dead_lettered.load(Ordering::Relaxed),
        expected_dead.len() as u64
    );
}
