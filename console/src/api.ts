// The admin API as the console uses it: JSON calls with the bearer token, and the live status
// stream of /v1/events read with fetch (EventSource cannot send an Authorization header).

const TOKEN_KEY = "patchbay-admin-token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The API refused the token (or none was given while one is required). */
export class Unauthorized extends Error {
  constructor() {
    super("the admin API wants a token");
  }
}

/** A refusal with the API's own reason (`{"error": …}`). */
export class Refused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const t = token();
  return t ? { ...extra, authorization: `Bearer ${t}` } : extra;
}

async function answer<T>(response: Response): Promise<T> {
  if (response.status === 401) throw new Unauthorized();
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const reason =
      body && typeof body === "object" && "error" in body
        ? String((body as { error: unknown }).error)
        : text.trim() || `HTTP ${response.status}`;
    throw new Refused(response.status, reason);
  }
  return body as T;
}

export async function getJson<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { headers: headers() }));
}

export async function postJson<T>(path: string, body: unknown): Promise<T> {
  return answer<T>(
    await fetch(path, {
      method: "POST",
      headers: headers({ "content-type": "application/json" }),
      body: JSON.stringify(body),
    }),
  );
}

export async function postBytes<T>(path: string, body: ArrayBuffer): Promise<T> {
  return answer<T>(
    await fetch(path, {
      method: "POST",
      headers: headers({ "content-type": "application/wasm" }),
      body,
    }),
  );
}

export interface PipelineStatus {
  name: string;
  state: "running" | "finished" | "failed";
  in: number;
  dropped: number;
  written: Record<string, number>;
  dead_lettered: number;
  retries: number;
  restarts: number;
  acked_batches: number;
  in_flight_batches: number;
  in_flight_bytes: number;
  error: string | null;
}

export interface Denial {
  plugin: string;
  capability: string;
  count: number;
}

export interface Status {
  pipelines: PipelineStatus[];
  denied: Denial[];
}

export interface Plugin {
  name: string;
  world: string;
  version: string;
  sha256: string;
  path: string;
  generation: number;
  watch: boolean;
  contract?: string;
  grants: Record<string, unknown>;
  granted?: { capability: string; granted: string }[];
  imports?: { capability: string; interface: string }[];
  imported_not_granted?: string[];
  limits: Record<string, unknown>;
  state: { pipeline: string; keys: number; bytes: number }[];
}

export interface DeadLetter {
  id: string;
  pipeline: string;
  stage: "transform" | "sink";
  stage_index: number;
  plugin: string;
  plugin_version: string;
  error_kind: string;
  error: string;
  attempts: number;
  first_failure: string;
  last_failure: string;
  message: { payload: string | { base64: string }; key: unknown; headers: [string, string][] };
}

export interface DeadLetterPage {
  total: number;
  offset: number;
  limit: number;
  entries: DeadLetter[];
}

export interface Replay {
  pipeline: string;
  replayed: number;
  delivered: number;
  dead_lettered_again: number;
}

/**
 * Read `/v1/events` until `signal` aborts, calling `onStatus` for each `status` event.
 * Resolves when the stream ends (the server went away); rejects with Unauthorized.
 */
export async function streamStatus(
  onStatus: (s: Status) => void,
  signal: AbortSignal,
): Promise<void> {
  const response = await fetch("/v1/events", {
    headers: headers({ accept: "text/event-stream" }),
    signal,
  });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok || !response.body) throw new Refused(response.status, "no event stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffered += value;
    let end: number;
    // Events end with a blank line; `data:` lines carry the JSON.
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) onStatus(JSON.parse(data) as Status);
    }
  }
}
