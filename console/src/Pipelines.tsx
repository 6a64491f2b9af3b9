// Pipelines: state, counters (in, out per sink, dropped, dead-lettered, retries, restarts),
// the rates now and a chart of the last minutes.

import type { PipelineStatus } from "./api";
import { Chart, type Series } from "./Chart";
import { count, rate } from "./format";
import type { History } from "./history";

const SERIES: Series[] = [
  { label: "in", stroke: "#2563eb" },
  { label: "out", stroke: "#16a34a" },
  { label: "dead-lettered", stroke: "#dc2626" },
];

function Pipeline({ p, history }: { p: PipelineStatus; history: History }) {
  const rates = history.rates.get(p.name);
  const latest = (xs: number[] | undefined) => (xs && xs.length ? xs[xs.length - 1] : 0);
  const id = `pipeline-${p.name}`;
  return (
    <article class="card" id={id} aria-labelledby={`${id}-title`}>
      <header class="card-head">
        <h3 id={`${id}-title`}>{p.name}</h3>
        <span class={`badge ${p.state}`}>{p.state}</span>
        <span class="muted">
          {rate(latest(rates?.in))} msg/s in · {rate(latest(rates?.out))} msg/s out
        </span>
      </header>
      {p.error && (
        <p class="error" role="alert">
          {p.error}
        </p>
      )}
      <div class="pipeline-body">
        <table class="counters">
          <caption class="sr-only">Counters of pipeline {p.name}</caption>
          <tbody>
            <tr>
              <th scope="row">in</th>
              <td data-counter="in">{count(p.in)}</td>
            </tr>
            {Object.entries(p.written).map(([sink, n]) => (
              <tr key={sink}>
                <th scope="row">out → {sink}</th>
                <td data-counter={`written:${sink}`}>{count(n)}</td>
              </tr>
            ))}
            <tr>
              <th scope="row">dropped</th>
              <td data-counter="dropped">{count(p.dropped)}</td>
            </tr>
            <tr>
              <th scope="row">dead-lettered</th>
              <td data-counter="dead_lettered">{count(p.dead_lettered)}</td>
            </tr>
            <tr>
              <th scope="row">retries</th>
              <td data-counter="retries">{count(p.retries)}</td>
            </tr>
            <tr>
              <th scope="row">restarts</th>
              <td data-counter="restarts">{count(p.restarts)}</td>
            </tr>
            <tr>
              <th scope="row">in flight</th>
              <td>{count(p.in_flight_batches)} batches</td>
            </tr>
          </tbody>
        </table>
        {rates && rates.at.length > 1 ? (
          <Chart
            title={`Rates of pipeline ${p.name} over the last minutes`}
            data={[rates.at, rates.in, rates.out, rates.deadLettered]}
            series={SERIES}
          />
        ) : (
          <p class="muted chart-wait">The chart starts with the second status.</p>
        )}
      </div>
    </article>
  );
}

export function Pipelines({ pipelines, history }: { pipelines: PipelineStatus[]; history: History }) {
  return (
    <section aria-labelledby="pipelines-title">
      <h2 id="pipelines-title">Pipelines</h2>
      {pipelines.length === 0 && <p class="muted">No pipelines.</p>}
      {pipelines.map((p) => (
        <Pipeline key={p.name} p={p} history={history} />
      ))}
    </section>
  );
}
