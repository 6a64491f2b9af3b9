// `js-redact`: blanks fields of JSON objects by dotted path (`user.email`), the same transform
// as sdk-python/examples/redact and plugins/redact, in JavaScript.
//
//   [plugins.redact]
//   path = "js-redact.wasm"
//   config = { fields = ["email", "card.number"], mask = "***" }
//
// A payload that is not a JSON object fails with `invalid-data`; a message with none of the
// fields passes on untouched.

import {
  Transform,
  KEEP,
  configKey,
  exportTransform,
  invalidData,
  metrics,
} from '../../patchbay-sdk.js';

class Redact extends Transform {
  static pluginName = 'js-redact';
  static version = '0.1.0';
  static description = 'Replaces the values of JSON fields (dotted paths) with a mask.';
  static configKeys = [
    configKey('fields', 'Array of dotted field paths to blank, e.g. ["email", "card.number"].', {
      required: true,
    }),
    configKey('mask', 'Text that replaces each value.', { default: '***' }),
  ];

  init(config) {
    const fields = config.json('fields');
    if (
      !Array.isArray(fields) ||
      !fields.every((f) => typeof f === 'string' && f.split('.').every((p) => p !== ''))
    ) {
      throw config.invalid('fields', 'an array of dotted paths like ["user.email"]');
    }
    this.paths = fields.map((f) => f.split('.'));
    this.mask = config.get('mask', '***');
  }

  process(message) {
    const doc = message.json();
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
      throw invalidData('payload is not a JSON object');
    }
    let changed = 0;
    for (const path of this.paths) {
      let parent = doc;
      for (const part of path.slice(0, -1)) {
        parent = parent !== null && typeof parent === 'object' ? parent[part] : undefined;
      }
      const last = path[path.length - 1];
      if (parent !== null && typeof parent === 'object' && Object.hasOwn(parent, last)) {
        parent[last] = this.mask;
        changed += 1;
      }
    }
    if (changed === 0) return KEEP;
    metrics.counterAdd('redacted_fields_total', changed);
    return doc;
  }
}

export const { plugin, transformApi } = exportTransform(Redact);
