// The dead-letter channel: entries with their context, filtered by pipeline, stage and kind,
// paged; chosen entries replayed through their pipeline.

import { useEffect, useState } from "preact/hooks";
import { type DeadLetterPage, Refused, type Replay, getJson, postJson } from "./api";
import { payload } from "./format";

const PAGE = 50;

interface Filter {
  pipeline: string;
  stage: string;
  kind: string;
}

export function DeadLetters({ pipelines, deadLettered }: { pipelines: string[]; deadLettered: number }) {
  const [filter, setFilter] = useState<Filter>({ pipeline: "", stage: "", kind: "" });
  const [offset, setOffset] = useState(0);
  const [page, setPage] = useState<DeadLetterPage | null>(null);
  const [chosen, setChosen] = useState<Set<string>>(new Set());
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const [reloads, setReloads] = useState(0);

  // Read again when the filter, the page or the number of dead letters changes.
  useEffect(() => {
    const query = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    for (const [k, v] of Object.entries(filter)) if (v) query.set(k, v);
    getJson<DeadLetterPage>(`/v1/dead-letters?${query}`)
      .then((p) => setPage(p))
      .catch((e) => setMessage({ ok: false, text: e instanceof Refused ? e.message : String(e) }));
  }, [filter, offset, deadLettered, reloads]);

  function toggle(id: string) {
    const next = new Set(chosen);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setChosen(next);
  }

  async function replay() {
    setBusy(true);
    setMessage(null);
    try {
      const answer = await postJson<{ replays: Replay[] }>("/v1/dead-letters/replay", { ids: [...chosen] });
      const parts = answer.replays.map(
        (r) => `${r.pipeline}: ${r.replayed} replayed, ${r.delivered} delivered, ${r.dead_lettered_again} dead-lettered again`,
      );
      setMessage({ ok: true, text: `Replayed. ${parts.join("; ")}.` });
    } catch (e) {
      setMessage({ ok: false, text: `Replay refused: ${e instanceof Refused ? e.message : String(e)}` });
    } finally {
      setChosen(new Set());
      setBusy(false);
      setReloads((n) => n + 1);
    }
  }

  const set = (key: keyof Filter) => (e: Event) => {
    setOffset(0);
    setChosen(new Set());
    setFilter({ ...filter, [key]: (e.target as HTMLInputElement | HTMLSelectElement).value });
  };

  return (
    <section aria-labelledby="dead-letters-title">
      <h2 id="dead-letters-title">Dead letters</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Pipeline
          <select id="dl-pipeline" value={filter.pipeline} onChange={set("pipeline")}>
            <option value="">all</option>
            {pipelines.map((p) => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </label>
        <label>
          Stage
          <select id="dl-stage" value={filter.stage} onChange={set("stage")}>
            <option value="">all</option>
            <option value="transform">transform</option>
            <option value="sink">sink</option>
          </select>
        </label>
        <label>
          Kind
          <select id="dl-kind" value={filter.kind} onChange={set("kind")}>
            <option value="">all</option>
            {["invalid-data", "fatal", "retryable", "trap", "contract"].map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </label>
        <button id="dl-replay" type="button" disabled={busy || chosen.size === 0} onClick={replay}>
          {busy ? "Replaying…" : `Replay selected (${chosen.size})`}
        </button>
      </form>
      <p id="dl-message" class={message?.ok ? "ok" : "error"} role="status" aria-live="polite">
        {message?.text ?? ""}
      </p>
      <p class="muted" id="dl-total">
        {page ? `${page.total} entr${page.total === 1 ? "y" : "ies"}` : "…"}
      </p>
      {page && page.entries.length > 0 && (
        <table class="dead-letters">
          <caption class="sr-only">Dead-letter entries</caption>
          <thead>
            <tr>
              <th scope="col">
                <span class="sr-only">Choose</span>
              </th>
              <th scope="col">id</th>
              <th scope="col">stage</th>
              <th scope="col">kind</th>
              <th scope="col">error</th>
              <th scope="col">attempts</th>
              <th scope="col">last failure</th>
              <th scope="col">payload</th>
            </tr>
          </thead>
          <tbody>
            {page.entries.map((e) => (
              <tr key={e.id} data-id={e.id}>
                <td>
                  <input
                    type="checkbox"
                    id={`dl-${e.id}`}
                    aria-label={`Choose ${e.id}`}
                    checked={chosen.has(e.id)}
                    onChange={() => toggle(e.id)}
                  />
                </td>
                <td>{e.id}</td>
                <td>
                  {e.stage} #{e.stage_index} {e.plugin}
                </td>
                <td>{e.error_kind}</td>
                <td class="wrap">{e.error}</td>
                <td>{e.attempts}</td>
                <td>{e.last_failure}</td>
                <td class="wrap">
                  <code>{payload(e.message.payload)}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {page && page.total > PAGE && (
        <nav class="pager" aria-label="Dead-letter pages">
          <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
            Previous
          </button>
          <span>
            {offset + 1}–{Math.min(offset + PAGE, page.total)} of {page.total}
          </span>
          <button type="button" disabled={offset + PAGE >= page.total} onClick={() => setOffset(offset + PAGE)}>
            Next
          </button>
        </nav>
      )}
    </section>
  );
}
