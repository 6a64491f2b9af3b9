// A small line chart of a pipeline's rates over the last minutes (uPlot: 50 KB, canvas).

import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  stroke: string;
}

interface Props {
  /** Accessible name of the chart (the canvas itself says nothing to a screen reader). */
  title: string;
  /** Seconds since the epoch, then one array per series, all as long. */
  data: number[][];
  series: Series[];
}

export function Chart({ title, data, series }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    if (!host.current) return;
    const options: uPlot.Options = {
      width: 480,
      height: 140,
      legend: { show: true, live: false },
      scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { space: 70, values: (_u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString()) },
        { label: "msg/s", size: 60 },
      ],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2 }))],
    };
    plot.current = new uPlot(options, data as uPlot.AlignedData, host.current);
    return () => {
      plot.current?.destroy();
      plot.current = null;
    };
    // The series are fixed for a pipeline; data updates go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [series.map((s) => s.label).join("\u0000")]);

  useEffect(() => {
    plot.current?.setData(data as uPlot.AlignedData);
  }, [data]);

  return <div class="chart" role="img" aria-label={title} ref={host} />;
}
