// Nearest-pattern distances of one layer (histogram) with the saturation curves of the paper's
// Fig. 2 (25/50/75/100 % of the patterns stored) and the lines 2 r_star and 2 r_hat.
import * as Plot from "@observablehq/plot";
import { fmt, h, select } from "../util";
import { type Context, Panel } from "./base";

export class DistancesPanel extends Panel {
  layer: number;
  chart = h("div", { class: "ha-chart ha-hist" });
  legend = h("div", { class: "ha-legend" });

  constructor(ctx: Context) {
    super("distances", "Nearest-pattern distances", ctx);
    const st = ctx.state;
    const measured = st.layers.filter((l) => !l.skipped_reason);
    this.layer = measured.length ? st.layers.indexOf(measured[measured.length - 1]) : st.nLayers - 1;
    this.header.append(
      select(
        "layer",
        st.layers.map((l, i) => ({ value: String(i), label: `${l.id}: ${l.name}${l.skipped_reason ? " (skipped)" : ""}`, group: st.groupOf(i) })),
        String(this.layer),
        (v) => this.setLayer(Number(v)),
      ),
    );
    this.body.append(this.chart, this.legend);
    this.redrawOnResize(this.chart);
  }

  setLayer(i: number): void {
    this.layer = i;
    this.render();
  }

  render(): void {
    const { state: st, theme } = this.ctx;
    const width = this.width || this.chart.clientWidth || 420;
    const i = this.layer;
    this.chart.setAttribute("data-layer", String(i));
    const info = st.layers[i];
    if (!info || info.skipped_reason || !Number.isFinite(st.histRange[2 * i])) {
      this.chart.replaceChildren(h("div", { class: "ha-message", text: `Layer ${info?.name ?? i} was not measured${info?.skipped_reason ? `: ${info.skipped_reason}` : ""}.` }));
      this.legend.replaceChildren();
      this.markReady();
      return;
    }
    const bars: { x1: number; x2: number; y: number }[] = [];
    const curves: { x: number; y: number; fraction: string }[] = [];
    let log = false;
    st.fractions.forEach((f, j) => {
      const { edges, counts, log: isLog } = st.histogram(i, j);
      log = isLog;
      let total = 0;
      for (const c of counts) total += c;
      if (!total) return;
      const label = `${Math.round(f * 100)} %`;
      counts.forEach((c, b) => {
        // share of the patterns per bin: comparable across fractions on the shared edges
        const y = c / total;
        const mid = isLog ? Math.sqrt(edges[b] * edges[b + 1]) : (edges[b] + edges[b + 1]) / 2;
        if (f === 1) bars.push({ x1: edges[b], x2: edges[b + 1], y });
        curves.push({ x: mid, y, fraction: label });
      });
    });
    const rStar = st.stat(i, "r_star");
    const rHat = st.stat(i, "r_hat");
    const rules = [
      { x: 2 * rStar, label: `2 r* = ${fmt(2 * rStar)}`, color: theme.lines.rStar },
      { x: 2 * rHat, label: `2 r̂ = ${fmt(2 * rHat)}`, color: theme.lines.rHat },
    ].filter((r) => Number.isFinite(r.x));
    const fracLabels = st.fractions.map((f) => `${Math.round(f * 100)} %`);
    const svg = Plot.plot({
      width,
      height: 250,
      marginLeft: 56,
      marginTop: 10,
      marginBottom: 44, // the x label below the tick labels, not on them
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: { type: log ? "log" : "linear", tickFormat: log ? "~g" : undefined, labelOffset: 40, label: `nearest-pattern distance${log ? " (log scale)" : ""} (normalize=${String(st.summary.normalize ?? "")})`, grid: false },
      y: { label: "share of patterns per bin", labelAnchor: "center", grid: true, tickFormat: "%" },
      color: { domain: fracLabels, range: theme.fractions },
      marks: [
        Plot.rectY(bars, { x1: "x1", x2: "x2", y: "y", fill: theme.muted, fillOpacity: 0.25 }),
        Plot.line(curves, { x: "x", y: "y", stroke: "fraction", strokeWidth: 1.6, curve: "monotone-x" }),
        Plot.ruleX(rules, { x: "x", stroke: "color", strokeWidth: 1.5, strokeDasharray: "5,3" }),
        Plot.ruleY([0], { stroke: theme.muted }),
      ],
    });
    this.chart.replaceChildren(svg);
    const sw = (c: string) => h("i", { style: `background:${c}` });
    this.legend.replaceChildren(
      ...st.fractions.map((f, j) => h("span", {}, sw(theme.fractions[j] ?? theme.accent), `${Math.round(f * 100)} % of patterns: median ${fmt(st.median(i, j))}`)),
    );
    // the marked distances in the legend, not on the chart: 2 r* and 2 r̂ are often a few
    // pixels apart, and labels at the lines would print over each other
    const rule = (c: string) => h("i", { class: "ha-rule", style: `border-color:${c}` });
    this.legend.append(...rules.map((r) => h("span", { class: "ha-mark" }, rule(r.color), r.label)));
    this.legend.append(
      h("span", { text: `n = ${fmt(st.stat(i, "n"))}, ${fmt(st.stat(i, "n_patterns"))} patterns · separated (nn > 2 r*): ${fmt(100 * st.stat(i, "separated_frac"))} %` }),
    );
    this.markReady();
  }
}
