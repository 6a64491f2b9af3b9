// Number and time formatting shared by the panels.

const integer = new Intl.NumberFormat("en-US");

export function count(n: number): string {
  return integer.format(n);
}

export function rate(perSecond: number): string {
  return perSecond >= 100 ? integer.format(Math.round(perSecond)) : perSecond.toFixed(1);
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A payload as stored in a dead letter: text, or base64 for binary. */
export function payload(p: string | { base64: string }): string {
  return typeof p === "string" ? p : `(binary, base64) ${p.base64}`;
}
