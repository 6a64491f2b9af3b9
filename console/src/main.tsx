// The console's page: a token gate when the admin API wants one, then health, pipelines with
// live counters (from /v1/events), sandbox denials, plugins and dead letters.

import { render } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { type Plugin, type Status, Unauthorized, getJson, setToken, streamStatus, token } from "./api";
import { DeadLetters } from "./DeadLetters";
import { count } from "./format";
import { History } from "./history";
import { Pipelines } from "./Pipelines";
import { Plugins } from "./Plugins";
import "./style.css";

function TokenGate({ refused, onToken }: { refused: boolean; onToken: (t: string) => void }) {
  const [value, setValue] = useState("");
  return (
    <main class="gate">
      <h1>Patchbay console</h1>
      <form
        id="token-form"
        onSubmit={(e) => {
          e.preventDefault();
          onToken(value.trim());
        }}
      >
        <label for="token">Admin token</label>
        <input
          id="token"
          type="password"
          autocomplete="current-password"
          value={value}
          onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          required
        />
        <button type="submit">Open the console</button>
        <p role="alert" class="error" id="token-error">
          {refused ? "That token was refused." : ""}
        </p>
        <p class="muted">The admin API was started with a token (--admin-token or PATCHBAY_ADMIN_TOKEN).</p>
      </form>
    </main>
  );
}

function Denials({ status }: { status: Status }) {
  return (
    <section aria-labelledby="denials-title">
      <h2 id="denials-title">Sandbox denials</h2>
      {status.denied.length === 0 ? (
        <p class="muted">No plugin was denied anything.</p>
      ) : (
        <table>
          <caption class="sr-only">Denied accesses by plugin and capability</caption>
          <thead>
            <tr>
              <th scope="col">plugin</th>
              <th scope="col">capability</th>
              <th scope="col">denied</th>
            </tr>
          </thead>
          <tbody>
            {status.denied.map((d) => (
              <tr key={`${d.plugin}/${d.capability}`}>
                <td>{d.plugin}</td>
                <td>{d.capability}</td>
                <td>{count(d.count)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

type Phase = "loading" | "gate" | "refused" | "open";

function App() {
  const [phase, setPhase] = useState<Phase>("loading");
  const [status, setStatus] = useState<Status | null>(null);
  const [history, setHistory] = useState(new History());
  const [plugins, setPlugins] = useState<Plugin[]>([]);
  const [live, setLive] = useState(false);

  const loadPlugins = useCallback(() => {
    getJson<{ plugins: Plugin[] }>("/v1/plugins")
      .then((p) => setPlugins(p.plugins))
      .catch((e) => e instanceof Unauthorized && setPhase("refused"));
  }, []);

  // Open: check the token (or that none is needed) with one call.
  useEffect(() => {
    if (phase !== "loading") return;
    getJson<Status>("/v1/pipelines")
      .then((s) => {
        setStatus(s);
        setPhase("open");
        loadPlugins();
      })
      .catch((e) => setPhase(e instanceof Unauthorized ? (token() ? "refused" : "gate") : "open"));
  }, [phase, loadPlugins]);

  // Live counters while open; reconnect after a lost stream.
  useEffect(() => {
    if (phase !== "open") return;
    const stop = new AbortController();
    let retry: ReturnType<typeof setTimeout> | undefined;
    const connect = () => {
      streamStatus((s) => {
        setLive(true);
        setStatus(s);
        setHistory((h) => h.add(s, Date.now() / 1000));
      }, stop.signal)
        .catch((e) => {
          if (e instanceof Unauthorized) setPhase("refused");
        })
        .finally(() => {
          setLive(false);
          if (!stop.signal.aborted) retry = setTimeout(connect, 2000);
        });
    };
    connect();
    return () => {
      stop.abort();
      clearTimeout(retry);
    };
  }, [phase]);

  if (phase === "gate" || phase === "refused") {
    return (
      <TokenGate
        refused={phase === "refused"}
        onToken={(t) => {
          setToken(t);
          setPhase("loading");
        }}
      />
    );
  }
  if (phase === "loading" || !status) return <p class="muted">Loading…</p>;
  const failed = status.pipelines.some((p) => p.state === "failed");
  const deadLettered = status.pipelines.reduce((n, p) => n + p.dead_lettered, 0);
  return (
    <>
      <header class="top">
        <h1>Patchbay console</h1>
        <span id="health" class={`badge ${failed ? "failed" : "running"}`}>
          {failed ? "degraded" : "healthy"}
        </span>
        <span id="live" class="muted" aria-live="polite">
          {live ? "live" : "reconnecting…"}
        </span>
        <nav aria-label="Sections">
          <a href="#pipelines-title">Pipelines</a> <a href="#denials-title">Denials</a>{" "}
          <a href="#plugins-title">Plugins</a> <a href="#dead-letters-title">Dead letters</a>
        </nav>
      </header>
      <main>
        <Pipelines pipelines={status.pipelines} history={history} />
        <Denials status={status} />
        <Plugins plugins={plugins} onReloaded={loadPlugins} />
        <DeadLetters pipelines={status.pipelines.map((p) => p.name)} deadLettered={deadLettered} />
      </main>
    </>
  );
}

const root = document.getElementById("app");
if (root) render(<App />, root);
