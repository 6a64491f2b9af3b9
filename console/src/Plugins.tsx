// Plugins: world, contract, version, sha256, the grants next to the imports (as `patchbay
// inspect --config` shows them), limits, host state, and a hot reload from a path or an upload
// with the refusal reason shown.

import { useState } from "preact/hooks";
import { type Plugin, Refused, postBytes, postJson } from "./api";
import { bytes, count } from "./format";

interface Swapped {
  plugin: string;
  version: string;
  sha256: string;
  path: string;
  generation: number;
}

function Reload({ plugin, onDone }: { plugin: Plugin; onDone: () => void }) {
  const [path, setPath] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);
  const id = `reload-${plugin.name}`;

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setResult(null);
    try {
      const url = `/v1/plugins/${encodeURIComponent(plugin.name)}/reload`;
      const swapped = file
        ? await postBytes<Swapped>(url, await file.arrayBuffer())
        : await postJson<Swapped>(url, path.trim() ? { path: path.trim() } : {});
      setResult({
        ok: true,
        text: `Swapped to ${swapped.version} (sha256 ${swapped.sha256.slice(0, 12)}…, generation ${swapped.generation}).`,
      });
      onDone();
    } catch (err) {
      const why = err instanceof Refused ? err.message : String(err);
      setResult({ ok: false, text: `Refused: ${why}. The running version goes on.` });
    } finally {
      setBusy(false);
    }
  }

  if (plugin.world === "source") {
    return <p class="muted">Sources are not swapped under traffic: restart the pipeline.</p>;
  }
  return (
    <form class="reload" onSubmit={submit} aria-labelledby={`${id}-legend`}>
      <p id={`${id}-legend`} class="form-title">
        Hot reload
      </p>
      <label for={`${id}-path`}>Component path (empty: the configured file)</label>
      <input
        id={`${id}-path`}
        name="path"
        type="text"
        placeholder={plugin.path}
        value={path}
        disabled={!!file}
        onInput={(e) => setPath((e.target as HTMLInputElement).value)}
      />
      <label for={`${id}-file`}>or upload a .wasm component</label>
      <input
        id={`${id}-file`}
        name="file"
        type="file"
        accept=".wasm,application/wasm"
        onChange={(e) => setFile((e.target as HTMLInputElement).files?.[0] ?? null)}
      />
      <button type="submit" disabled={busy}>
        {busy ? "Reloading…" : `Reload ${plugin.name}`}
      </button>
      <p class={result?.ok ? "ok" : "error"} role="status" aria-live="polite" id={`${id}-result`}>
        {result?.text ?? ""}
      </p>
    </form>
  );
}

function PluginCard({ plugin, onReloaded }: { plugin: Plugin; onReloaded: () => void }) {
  const missing = new Set(plugin.imported_not_granted ?? []);
  return (
    <article class="card" id={`plugin-${plugin.name}`} aria-labelledby={`plugin-${plugin.name}-title`}>
      <header class="card-head">
        <h3 id={`plugin-${plugin.name}-title`}>{plugin.name}</h3>
        <span class="badge">{plugin.world}</span>
        <span class="muted">
          version <span data-field="version">{plugin.version}</span> · contract {plugin.contract ?? "?"} ·
          generation <span data-field="generation">{plugin.generation}</span>
        </span>
      </header>
      <dl class="facts">
        <dt>sha256</dt>
        <dd>
          <code title={plugin.sha256}>{plugin.sha256}</code>
        </dd>
        <dt>file</dt>
        <dd>
          <code>{plugin.path}</code>
          {plugin.watch ? " (watched)" : ""}
        </dd>
        <dt>limits</dt>
        <dd>
          {Object.entries(plugin.limits)
            .map(([k, v]) => `${k} ${String(v)}`)
            .join(" · ")}
        </dd>
        <dt>host state</dt>
        <dd>
          {plugin.state.length === 0
            ? "none"
            : plugin.state.map((s) => `${s.pipeline}: ${count(s.keys)} keys, ${bytes(s.bytes)}`).join("; ")}
        </dd>
      </dl>
      <div class="two">
        <table>
          <caption>Grants</caption>
          <thead>
            <tr>
              <th scope="col">capability</th>
              <th scope="col">granted</th>
            </tr>
          </thead>
          <tbody>
            {(plugin.granted ?? []).map((g) => (
              <tr key={g.capability}>
                <td>{g.capability}</td>
                <td>{g.granted}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <table>
          <caption>Imports</caption>
          <thead>
            <tr>
              <th scope="col">capability</th>
              <th scope="col">interface</th>
            </tr>
          </thead>
          <tbody>
            {(plugin.imports ?? []).map((i) => (
              <tr key={i.interface} class={missing.has(i.capability) ? "denied" : ""}>
                <td>
                  {i.capability}
                  {missing.has(i.capability) ? " (not granted: denied)" : ""}
                </td>
                <td>
                  <code>{i.interface}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <Reload plugin={plugin} onDone={onReloaded} />
    </article>
  );
}

export function Plugins({ plugins, onReloaded }: { plugins: Plugin[]; onReloaded: () => void }) {
  return (
    <section aria-labelledby="plugins-title">
      <h2 id="plugins-title">Plugins</h2>
      {plugins.map((p) => (
        <PluginCard key={p.name} plugin={p} onReloaded={onReloaded} />
      ))}
    </section>
  );
}
