// The last minutes of each pipeline's counters, as rates for the charts: one sample per status
// event (one a second), at most five minutes.

import type { Status } from "./api";

const KEEP = 300;

export interface Rates {
  /** Seconds since the epoch. */
  at: number[];
  in: number[];
  out: number[];
  deadLettered: number[];
}

interface Last {
  at: number;
  in: number;
  out: number;
  deadLettered: number;
}

export class History {
  private last = new Map<string, Last>();
  readonly rates = new Map<string, Rates>();

  /** Add a status; returns a new History so that a component re-renders. */
  add(status: Status, now: number): History {
    const next = new History();
    next.last = this.last;
    for (const [name, r] of this.rates) next.rates.set(name, r);
    for (const p of status.pipelines) {
      const out = Object.values(p.written).reduce((a, b) => a + b, 0);
      const prev = this.last.get(p.name);
      this.last.set(p.name, { at: now, in: p.in, out, deadLettered: p.dead_lettered });
      if (!prev || now <= prev.at) continue;
      const secs = now - prev.at;
      const old = next.rates.get(p.name) ?? { at: [], in: [], out: [], deadLettered: [] };
      const keep = (xs: number[], x: number) => [...xs.slice(-(KEEP - 1)), x];
      next.rates.set(p.name, {
        at: keep(old.at, now),
        in: keep(old.in, Math.max(0, (p.in - prev.in) / secs)),
        out: keep(old.out, Math.max(0, (out - prev.out) / secs)),
        deadLettered: keep(old.deadLettered, Math.max(0, (p.dead_lettered - prev.deadLettered) / secs)),
      });
    }
    return next;
  }
}
