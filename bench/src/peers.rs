//! The same transform through the peers' plugin hosts: an Extism plugin (extism 1.30, one call
//! per message, as Extism plugins are called) and a Fluvio SmartModule (fluvio-smartengine
//! 0.50, a `map` SmartModule fed whole batches). Their guests are in `bench/guests/`, built for
//! wasm32-unknown-unknown by `cargo xtask bench`, and compile the same `mapping.rs` and
//! `transform.rs` as the native row.
//!
//! Each timing covers what the host does with a message it holds: Extism's call with its input
//! copied in and its output copied out; for Fluvio, turning the messages into records, encoding
//! the batch, the call, and decoding the results.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use fluvio_smartengine::{
    DEFAULT_SMARTENGINE_VERSION, SmartEngine, SmartModuleChainBuilder, SmartModuleChainInstance,
    SmartModuleConfig,
};
use fluvio_smartmodule::Record;
use fluvio_smartmodule::dataplane::smartmodule::SmartModuleInput;
use patchbay_runtime::contract::Message;

use crate::CONFIG;

/// An Extism plugin exporting `map`.
pub struct Extism {
    plugin: extism::Plugin,
}

impl Extism {
    pub fn new(wasm: &Path) -> anyhow::Result<Extism> {
        let bytes =
            std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        let manifest = extism::Manifest::new([extism::Wasm::data(bytes)])
            .with_config(CONFIG.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let plugin = extism::Plugin::new(&manifest, [], false)
            .with_context(|| format!("Extism cannot load {}", wasm.display()))?;
        Ok(Extism { plugin })
    }

    /// Nanoseconds per message, after checking the first output against `expected`.
    pub fn run(&mut self, input: &[Message], expected: &[u8]) -> anyhow::Result<f64> {
        let first: Vec<u8> = self.plugin.call("map", input[0].payload.as_slice())?;
        if first != expected {
            bail!(
                "the Extism plugin gave {}, natively {}",
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(expected)
            );
        }
        let started = Instant::now();
        for m in input {
            let out: Vec<u8> = self.plugin.call("map", m.payload.as_slice())?;
            black_box(out);
        }
        Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
    }
}

/// A chain of one `map` SmartModule.
///
/// fluvio-smartengine 0.50 never frees a call's output inside the guest (the SmartModule hands
/// it over with `mem::forget`, and the engine's `dealloc` call is commented out), so guest
/// memory grows by every call's output until the store's limit (1 GB by default) stops the
/// chain. The chain is therefore built anew, outside the timing, before what it has leaked
/// could reach [`Fluvio::REBUILD_AFTER`], with the limit raised to 4 GiB, Wasm's most.
pub struct Fluvio {
    engine: SmartEngine,
    bytes: Vec<u8>,
    chain: SmartModuleChainInstance,
    /// Bytes of output (with a per-record allowance) the current chain has leaked, about.
    leaked: usize,
}

impl Fluvio {
    pub fn new(wasm: &Path) -> anyhow::Result<Fluvio> {
        let bytes =
            std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
        let engine = SmartEngine::new();
        let chain = Self::chain(&engine, &bytes)
            .with_context(|| format!("Fluvio cannot load {}", wasm.display()))?;
        Ok(Fluvio {
            engine,
            bytes,
            chain,
            leaked: 0,
        })
    }

    /// Leaked output after which a measurement starts on a fresh chain: well inside the 4 GiB
    /// limit even for the largest measurement that follows.
    const REBUILD_AFTER: usize = 1 << 30;

    fn chain(engine: &SmartEngine, bytes: &[u8]) -> anyhow::Result<SmartModuleChainInstance> {
        let mut config = SmartModuleConfig::builder();
        for (key, value) in CONFIG {
            config.param(key, value);
        }
        let config = config
            .smartmodule_names(vec!["bench-map".to_owned()])
            .build()?;
        let mut builder = SmartModuleChainBuilder::default();
        builder.set_store_memory_limit(4 << 30);
        builder.add_smart_module(config, bytes.to_vec());
        builder.initialize(engine)
    }

    /// Nanoseconds per message in batches of `batch`, after checking the first output.
    pub fn run(&mut self, input: &[Message], batch: usize, expected: &[u8]) -> anyhow::Result<f64> {
        let output: usize = input.iter().map(|m| m.payload.len() + 64).sum();
        if self.leaked + output > Self::REBUILD_AFTER {
            self.chain = Self::chain(&self.engine, &self.bytes)?;
            self.leaked = 0;
        }
        self.leaked += output + expected.len() + 64;
        let first = self.process(&input[..1])?;
        if first.first().map(|r| r.value.as_ref()) != Some(expected) {
            bail!(
                "the SmartModule gave {:?}, natively {}",
                first
                    .first()
                    .map(|r| String::from_utf8_lossy(r.value.as_ref()).into_owned()),
                String::from_utf8_lossy(expected)
            );
        }
        let started = Instant::now();
        for chunk in input.chunks(batch) {
            let out = self.process(chunk)?;
            if out.len() != chunk.len() {
                bail!(
                    "{} records out of the SmartModule for {}",
                    out.len(),
                    chunk.len()
                );
            }
            black_box(out);
        }
        Ok(started.elapsed().as_nanos() as f64 / input.len() as f64)
    }

    fn process(&mut self, messages: &[Message]) -> anyhow::Result<Vec<Record>> {
        let records = messages
            .iter()
            .map(|m| Record::new(m.payload.as_slice()))
            .collect();
        let input = SmartModuleInput::try_from_records(records, DEFAULT_SMARTENGINE_VERSION)?;
        let output = self.chain.process(input)?;
        if let Some(error) = output.error {
            bail!("the SmartModule failed: {error:?}");
        }
        Ok(output.successes)
    }
}
