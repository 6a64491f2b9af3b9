// Write Patchbay plugins in JavaScript.
//
// A plugin is a class extending Transform, Sink or Source. Static fields describe it (name,
// version, description, configKeys), `init(config)` reads its configuration, and one method
// per message does the work:
//
//   import { Transform, configKey, exportTransform } from '../../patchbay-sdk.js';
//
//   class Upper extends Transform {
//     static name = 'upper';
//     static version = '0.1.0';
//     static description = 'Upper-cases UTF-8 payloads.';
//     static configKeys = [configKey('prefix', 'Text put before every payload.', { default: '' })];
//     init(config) { this.prefix = config.get('prefix', ''); }
//     process(message) { return this.prefix + message.text().toUpperCase(); }
//   }
//
//   export const { plugin, transformApi } = exportTransform(Upper);
//
// Build it with componentize-js against the contract in wit/ (see build.mjs):
//   node build.mjs examples/upper/plugin.js transform upper.wasm
//
// What `process` may return, per message: undefined or KEEP (unchanged), DROP, a new payload
// (Uint8Array, string, or a plain object serialized as JSON; key, headers and timestamp are
// kept), a message made with `message(...)`, or an array of those (a split). Throwing a
// PluginError fails the message with its kind; any other exception fails it as invalid-data
// with its text, so one bad message never takes the plugin down (wit/README.md rules 6, 10,
// 18 hold by construction).

import { log as hostLog } from 'patchbay:connector/logging@0.2.0';
import {
  counterAdd,
  gaugeSet,
  histogramObserve,
} from 'patchbay:connector/metrics@0.2.0';
import {
  get as stateGet,
  set as stateSet,
  delete as stateDelete,
} from 'patchbay:connector/state@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function toBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return encoder.encode(value);
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (value instanceof ArrayBuffer || Array.isArray(value)) return new Uint8Array(value);
  throw new TypeError(
    `expected a string or bytes, got ${Object.prototype.toString.call(value)}`,
  );
}

// --- messages -------------------------------------------------------------------------------

/** Whether `s` holds a UTF-16 surrogate without its pair (StarlingMonkey has no `\p{Cs}`). */
function loneSurrogate(s) {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return true;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return true;
  }
  return false;
}

function hasLoneSurrogate(value) {
  if (typeof value === 'string') return loneSurrogate(value);
  if (Array.isArray(value)) return value.some(hasLoneSurrogate);
  if (value !== null && typeof value === 'object') {
    return Object.entries(value).some(([k, v]) => loneSurrogate(k) || hasLoneSurrogate(v));
  }
  return false;
}

/** A message as the plugin sees it: the contract's record with helpers. */
export class Message {
  constructor(payload, { key, headers = [], timestamp } = {}) {
    this.payload = toBytes(payload);
    this.key = key === undefined ? undefined : toBytes(key);
    this.headers = headers;
    this.timestamp = timestamp;
  }

  /** The payload as UTF-8 text; throws invalid-data when it is not UTF-8. */
  text() {
    try {
      return decoder.decode(this.payload);
    } catch {
      throw invalidData('payload is not UTF-8 text');
    }
  }

  /**
   * The payload parsed as JSON by the rules every SDK follows (wit/README.md rule 10): it
   * must be UTF-8 and JSON, and no string may hold a lone surrogate escape such as
   * "\\ud800", which names no Unicode character (JSON.parse alone accepts it; the Rust SDK's
   * serde_json does not). Throws invalid-data saying which.
   */
  json() {
    const text = this.text();
    let doc;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw invalidData(`payload is not JSON: ${e.message}`);
    }
    if (text.includes('\\u') && hasLoneSurrogate(doc)) {
      throw invalidData(
        'payload is not JSON text: a string holds a lone surrogate escape (\\ud800 to ' +
          '\\udfff without its pair), which names no Unicode character',
      );
    }
    return doc;
  }

  /** The first header of that name, or undefined. */
  header(name) {
    const h = this.headers.find((h) => h.name === name);
    return h === undefined ? undefined : h.value;
  }

  /** A copy with another payload (same key, headers and timestamp). */
  withPayload(payload) {
    return new Message(payload, {
      key: this.key,
      headers: this.headers,
      timestamp: this.timestamp,
    });
  }
}

/** A new message. `headers` is an object or an array of [name, value]. */
export function message(payload, { key, headers, timestamp } = {}) {
  const list = Array.isArray(headers)
    ? headers.map(([name, value]) => ({ name, value }))
    : Object.entries(headers ?? {}).map(([name, value]) => ({ name, value }));
  return new Message(payload, {
    key,
    headers: list,
    timestamp: timestamp === undefined ? undefined : BigInt(timestamp),
  });
}

function fromWit(m) {
  return new Message(m.payload, { key: m.key, headers: m.headers, timestamp: m.timestamp });
}

function toWit(m) {
  return { payload: m.payload, key: m.key, headers: m.headers, timestamp: m.timestamp };
}

// --- errors ---------------------------------------------------------------------------------

const KINDS = ['retryable', 'invalid-data', 'fatal'];

/** An error the plugin returns on purpose; `kind` tells the host what to do. */
export class PluginError extends Error {
  constructor(message, kind = 'invalid-data') {
    if (!KINDS.includes(kind)) {
      throw new TypeError(`error kind ${kind}: use one of ${KINDS.join(', ')}`);
    }
    super(message);
    this.kind = kind;
    // componentize-js hands `payload` to the host as the `err` of a `result`.
    this.payload = { kind, message };
  }
}

/** A transient failure: the host retries with back-off. */
export const retryable = (message) => new PluginError(message, 'retryable');
/** This record can never succeed: not retried. */
export const invalidData = (message) => new PluginError(message, 'invalid-data');
/** The plugin cannot go on (bad configuration, lost credentials). */
export const fatal = (message) => new PluginError(message, 'fatal');

function witError(e, defaultKind) {
  if (e instanceof PluginError) return e.payload;
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return { kind: defaultKind, message: text };
}

// --- configuration --------------------------------------------------------------------------

/** One config key, as `patchbay inspect` documents it. */
export function configKey(name, description, { required = false, default: def } = {}) {
  return {
    name,
    description,
    required,
    defaultValue: def === undefined ? undefined : String(def),
  };
}

/**
 * The configuration `init` receives. Values arrive as text: a TOML string as itself, anything
 * else as its JSON text. Each accessor throws a fatal PluginError naming the key.
 */
export class Config {
  constructor(entries) {
    this.values = new Map(entries.map((e) => [e.key, e.value]));
  }

  has(key) {
    return this.values.has(key);
  }

  get(key, def) {
    return this.values.has(key) ? this.values.get(key) : def;
  }

  required(key) {
    if (!this.values.has(key)) throw fatal(`config key \`${key}\` is required`);
    return this.values.get(key);
  }

  /** The error for a bad value of `key`. */
  invalid(key, expected) {
    return fatal(
      `config key \`${key}\`: expected ${expected}, found ${JSON.stringify(this.values.get(key))}`,
    );
  }

  number(key, def) {
    if (!this.values.has(key)) return def;
    const n = Number(this.values.get(key));
    if (this.values.get(key).trim() === '' || !Number.isFinite(n)) {
      throw this.invalid(key, 'a number, e.g. 10');
    }
    return n;
  }

  bool(key, def) {
    if (!this.values.has(key)) return def;
    const v = this.values.get(key).trim().toLowerCase();
    if (v !== 'true' && v !== 'false') throw this.invalid(key, 'true or false');
    return v === 'true';
  }

  choice(key, options, def) {
    const v = this.get(key, def);
    if (!options.includes(v)) throw this.invalid(key, `one of ${options.join(', ')}`);
    return v;
  }

  /** The value parsed as JSON (a TOML array or table arrives as JSON text). */
  json(key, def) {
    if (!this.values.has(key)) return def;
    try {
      return JSON.parse(this.values.get(key));
    } catch (e) {
      throw this.invalid(key, `JSON (${e.message})`);
    }
  }
}

// --- host services --------------------------------------------------------------------------

/** Log lines through the host; they carry the plugin's name. */
export const log = {
  trace: (text) => hostLog('trace', text),
  debug: (text) => hostLog('debug', text),
  info: (text) => hostLog('info', text),
  warn: (text) => hostLog('warn', text),
  error: (text) => hostLog('error', text),
};

const labels = (obj) => Object.entries(obj ?? {}).map(([name, value]) => ({ name, value }));

// A call into the host costs far more from JavaScript than the work of a typical message, so
// counter increments are summed here and handed over once, at the end of each data call.
const pendingCounters = new Map();

function flushCounters() {
  for (const [key, { name, value, l }] of pendingCounters) {
    counterAdd(name, BigInt(value), l);
    pendingCounters.delete(key);
  }
}

/** Metrics on the host's /metrics endpoint, with a `plugin` label added by the host. */
export const metrics = {
  /** Add to a counter; the host sees the sum at the end of the current data call. */
  counterAdd(name, value = 1, l) {
    const list = labels(l);
    const key = JSON.stringify([name, list]);
    const entry = pendingCounters.get(key);
    if (entry) entry.value += value;
    else pendingCounters.set(key, { name, value, l: list });
  },
  gaugeSet: (name, value, l) => gaugeSet(name, value, labels(l)),
  histogramObserve: (name, value, l) => histogramObserve(name, value, labels(l)),
};

/** The host's key-value store, private to this plugin in its pipeline. */
export const state = {
  get: (key) => stateGet(key),
  set: (key, value) => {
    try {
      stateSet(key, toBytes(value));
    } catch (e) {
      throw fatal(`state.set(${JSON.stringify(key)}): ${e.payload ?? e}`);
    }
  },
  delete: (key) => stateDelete(key),
};

// --- roles ----------------------------------------------------------------------------------

/** Pass the message on unchanged. */
export const KEEP = Symbol('keep');
/** Remove the message from the stream. */
export const DROP = Symbol('drop');

class PluginBase {
  static version = '0.1.0';
  static description = '';
  static configKeys = [];

  /** Read the configuration; throw config.invalid(...) for a bad value. */
  init(_config) {}

  static metadata() {
    return {
      name: this.pluginName ?? this.name,
      version: this.version,
      description: this.description,
      configKeys: this.configKeys,
    };
  }
}

/** Change, filter, split or enrich messages. */
export class Transform extends PluginBase {
  process(_message) {
    return KEEP;
  }

  /** Override to see the whole batch; return one outcome per message, in order. */
  processBatch(batch) {
    return batch.map((m) => {
      try {
        return outcome(m, this.process(m));
      } catch (e) {
        return { tag: 'fail', val: witError(e, 'invalid-data') };
      }
    });
  }
}

function replacement(original, value) {
  if (value instanceof Message) return toWit(value);
  if (value instanceof Uint8Array || typeof value === 'string') {
    return toWit(original.withPayload(value));
  }
  if (value !== null && typeof value === 'object') {
    return toWit(original.withPayload(JSON.stringify(value)));
  }
  throw new TypeError(`process returned ${typeof value}, not a message or a payload`);
}

function outcome(original, value) {
  if (value === undefined || value === KEEP) return { tag: 'keep' };
  if (value === DROP) return { tag: 'drop' };
  if (Array.isArray(value)) {
    return { tag: 'replace', val: value.map((v) => replacement(original, v)) };
  }
  return { tag: 'replace', val: [replacement(original, value)] };
}

/** Deliver messages out of the pipeline. */
export class Sink extends PluginBase {
  /** Store one message durably, or throw a PluginError (anything else is invalid-data). */
  write(_message) {}

  /** Called after each batch, before the results go back: make the batch durable. */
  flush() {}

  writeBatch(batch) {
    let results = batch.map((m) => {
      try {
        this.write(m);
        return { tag: 'ok', val: undefined };
      } catch (e) {
        return { tag: 'err', val: witError(e, 'invalid-data') };
      }
    });
    try {
      this.flush();
    } catch (e) {
      const err = { tag: 'err', val: witError(e, 'retryable') };
      results = results.map((r) => (r.tag === 'ok' ? err : r));
    }
    return results;
  }
}

/** Bring messages into a pipeline. */
export class Source extends PluginBase {
  /**
   * Return { messages, checkpoint } with at most `max` messages (Message, string or
   * Uint8Array), possibly none when idle; or null once exhausted (and every time after).
   */
  poll(_max) {
    return null;
  }

  /** Everything up to the batch that carried `checkpoint` was delivered: commit it. */
  ack(_checkpoint) {}
}

// --- export ---------------------------------------------------------------------------------

const beforeInit = { kind: 'fatal', message: 'plugin used before init' };

function pluginExport(cls, holder) {
  return {
    describe: () => cls.metadata(),
    init(config) {
      try {
        const instance = new cls();
        instance.init(new Config(config));
        holder.instance = instance;
      } catch (e) {
        throw { payload: witError(e, 'fatal') };
      } finally {
        flushCounters();
      }
    },
  };
}

/** `export const { plugin, transformApi } = exportTransform(MyTransform);` */
export function exportTransform(cls) {
  const holder = {};
  return {
    plugin: pluginExport(cls, holder),
    transformApi: {
      process(batch) {
        if (!holder.instance) return batch.map(() => ({ tag: 'fail', val: beforeInit }));
        try {
          return holder.instance.processBatch(batch.map(fromWit));
        } finally {
          flushCounters();
        }
      },
    },
  };
}

/** `export const { plugin, sinkApi } = exportSink(MySink);` */
export function exportSink(cls) {
  const holder = {};
  return {
    plugin: pluginExport(cls, holder),
    sinkApi: {
      write(batch) {
        if (!holder.instance) return batch.map(() => ({ tag: 'err', val: beforeInit }));
        try {
          return holder.instance.writeBatch(batch.map(fromWit));
        } finally {
          flushCounters();
        }
      },
    },
  };
}

/** `export const { plugin, sourceApi } = exportSource(MySource);` */
export function exportSource(cls) {
  const holder = {};
  return {
    plugin: pluginExport(cls, holder),
    sourceApi: {
      poll(max) {
        if (!holder.instance) throw { payload: beforeInit };
        let got;
        try {
          got = holder.instance.poll(max);
        } catch (e) {
          throw { payload: witError(e, 'retryable') };
        } finally {
          flushCounters();
        }
        if (got === null || got === undefined) return { tag: 'end-of-stream' };
        const messages = got.messages.map((m) =>
          toWit(m instanceof Message ? m : new Message(m)),
        );
        return { tag: 'batch', val: { messages, checkpoint: BigInt(got.checkpoint) } };
      },
      ack(checkpoint) {
        if (!holder.instance) throw { payload: beforeInit };
        try {
          holder.instance.ack(checkpoint);
        } catch (e) {
          throw { payload: witError(e, 'retryable') };
        } finally {
          flushCounters();
        }
      },
    },
  };
}
