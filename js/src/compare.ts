// The side-by-side view of several audits (hopaudit.compare): models of any depth and width on
// common axes. Radii are r̂ / r* (each model against its own r* = √(n/2πe)) against relative
// depth (block i of L at i/(L-1), `final` drawn apart); each audit's loss floor F against r / r*
// with its measured cross-entropy; the single view's distance histograms and basin scatters,
// one per audit (all scatters through one shared WebGL context); a table of the summaries.
import * as Plot from "@observablehq/plot";
import type { Context, Panel } from "./panels/base";
import { Panel as BasePanel } from "./panels/base";
import { DistancesPanel } from "./panels/distances";
import type { ModelLike } from "./state";
import { fmt, fmtBand, fmtCount, fmtInt, h, select } from "./util";
import { ChartPanel, type Frame, GroupPanel, type View, mountMulti } from "./multi/view";
import { SharedScatterPanel } from "./multi/scatter";

export const COMPARE_TRAITS = ["members", "blob", "labels", "kind"];
const FINAL_X = 1.14; // where `final` sits on the relative-depth axis, apart from the blocks

const num = (v: unknown) => (typeof v === "number" ? v : NaN);

/** The per-layer r̂/r* of member i with relative depths (final apart). */
function radiiRows(frame: Frame, i: number) {
  const st = frame.members.state(i);
  const info = frame.members.infos[i];
  return st.layers.map((l, j) => {
    const rHat = st.stat(j, "r_hat");
    const rStar = st.stat(j, "r_star");
    const stack = (info.stack?.[j] as string | null | undefined) ?? null;
    const member = frame.members.labels[i];
    return {
      member,
      // One line per stack: an encoder-decoder's encoder and decoder each run from depth 0 to 1.
      series: stack && new Set(info.stack ?? []).size > 1 ? `${member} · ${stack}` : member,
      encoder: stack === "encoder",
      stack,
      i,
      j,
      name: l.name,
      final: !!info.is_final[j],
      depth: info.is_final[j] ? FINAL_X : info.depth[j],
      relDepth: info.depth[j],
      ratio: rHat / rStar,
      rHat,
      rStar,
    };
  });
}

class CompareRadiiPanel extends ChartPanel {

  constructor(ctx: Context, private frame: Frame) {
    super("compare-radii", "Ball radius against relative depth (r̂ / r*)", ctx);
  }

  render(): void {
    const { frame } = this;
    const theme = frame.theme;
    const labels = frame.members.labels;
    const rows = labels.flatMap((_, i) => radiiRows(frame, i)).filter((r) => Number.isFinite(r.ratio) && r.ratio > 0);
    const blocks = rows.filter((r) => !r.final);
    const finals = rows.filter((r) => r.final);
    const vals = rows.map((r) => r.ratio).concat([1]);
    const logY = vals.length > 1 && Math.max(...vals) / Math.min(...vals) > 30;
    const colours = labels.map((_, i) => frame.colour(i));
    const svg = Plot.plot({
      width: this.width || this.chart.clientWidth || 460,
      height: 260,
      marginLeft: 48,
      marginRight: 20,
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: {
        label: "relative depth (block i of L at i/(L−1))",
        domain: [-0.03, FINAL_X + 0.05],
        ticks: [0, 0.25, 0.5, 0.75, 1, FINAL_X],
        tickFormat: (x: number) => (x === FINAL_X ? "final" : String(x)),
      },
      y: { type: logY ? "log" : "linear", tickFormat: logY ? "~g" : undefined, label: `r̂ / r*${logY ? " (log scale)" : ""}`, grid: true, zero: !logY },
      color: { domain: labels, range: colours, legend: true },
      marks: [
        Plot.ruleY([1], { stroke: theme.lines.rStar, strokeDasharray: "5,3" }),
        Plot.text([1], { y: (d: number) => d, text: () => "r̂ = r*", frameAnchor: "left", dx: 4, dy: -7, fill: theme.lines.rStar }),
        Plot.ruleX([(1 + FINAL_X) / 2], { stroke: theme.border, strokeDasharray: "1,3" }),
        Plot.line(blocks.filter((r) => !r.encoder), { x: "depth", y: "ratio", stroke: "member", z: "series", strokeWidth: 1.8 }),
        Plot.line(blocks.filter((r) => r.encoder), { x: "depth", y: "ratio", stroke: "member", z: "series", strokeWidth: 1.8, strokeDasharray: "6,3" }),
        Plot.dot(blocks, { x: "depth", y: "ratio", fill: "member", r: 2.5 }),
        Plot.dot(finals, { x: "depth", y: "ratio", stroke: "member", fill: theme.bg, r: 4.5, strokeWidth: 2, symbol: "diamond" }),
        Plot.tip(rows, Plot.pointer({ x: "depth", y: "ratio", title: (d: any) => `${d.member}${d.stack ? ` (${d.stack})` : ""}\n${d.name} (depth ${fmt(d.relDepth)})\nr̂ = ${fmt(d.rHat)}, r* = ${fmt(d.rStar)}\nr̂/r* = ${fmt(d.ratio)}` })),
      ],
    });
    this.chart.replaceChildren(svg);
    this.note.textContent = `Each model's radius over its own r* = √(n/2πe) (n its hidden size), so models of different widths share one scale; below 1 the patterns are packed tighter than the theory's typical ball. Diamonds: the final norm's output (the LM head's input).${rows.some((r) => r.encoder) ? " Dashed: an encoder-decoder's encoder, its depth over the encoder's own blocks (the decoder's over its own)." : ""}`;
    this.markReady();
  }
}

class CompareFloorPanel extends ChartPanel {
  where: number | "final" = "final";

  constructor(ctx: Context, private frame: Frame) {
    super("compare-floor", "Loss floors and measured cross-entropy", ctx);
    this.header.append(
      select(
        "layer",
        [
          { value: "final", label: "final (LM head input)" },
          { value: "1", label: "last block" },
          { value: "0.5", label: "middle block" },
          { value: "0", label: "first block" },
        ],
        "final",
        (v) => {
          this.where = v === "final" ? "final" : Number(v);
          this.render();
        },
      ),
    );
  }

  render(): void {
    const { frame } = this;
    const theme = frame.theme;
    const labels = frame.members.labels;
    const curves: { member: string; x: number; F: number }[] = [];
    const marks: { member: string; x: number; F: number; text: string }[] = [];
    const ces: { member: string; y: number; text: string; dy: number }[] = [];
    // The x range holds every audit's r̂ and its critical radius r_c (where F is lowest).
    const xs = [1];
    frame.members.labels.forEach((_, i) => {
      const st = frame.members.state(i);
      const j = frame.members.layerAt(i, this.where);
      for (const c of ["r_hat", "r_c"]) xs.push(st.stat(j, c) / st.stat(j, "r_star"));
    });
    const okX = xs.filter((x) => Number.isFinite(x) && x > 0);
    const lo = Math.min(...okX) / 1.8;
    const hi = Math.max(...okX) * 1.8;
    const layersUsed: string[] = [];
    labels.forEach((label, i) => {
      const st = frame.members.state(i);
      const j = frame.members.layerAt(i, this.where);
      layersUsed.push(`${label}: ${st.layers[j]?.name ?? "?"}`);
      const n = st.stat(j, "n");
      const d = st.stat(j, "n_patterns");
      const rStar = st.stat(j, "r_star");
      const rHat = st.stat(j, "r_hat");
      if (n > 0 && d > 0 && rStar > 0) {
        for (const { r, F } of st.floor(j)) {
          const x = r / rStar;
          if (Number.isFinite(F) && x >= lo && x <= hi) curves.push({ member: label, x, F });
        }
        if (rHat > 0) {
          const F = st.stat(j, "floor_low");
          marks.push({ member: label, x: rHat / rStar, F, text: `${label}\nr̂/r* = ${fmt(rHat / rStar)}\nF(r̂) = ${fmt(F)} nats` });
        }
      }
      const ce = num(st.summary.cross_entropy);
      if (Number.isFinite(ce)) ces.push({ member: label, y: ce, text: `${label}: CE ${fmt(ce)}`, dy: -7 - 12 * ces.length });
    });
    const yMax = Math.max(4, ...ces.map((c) => c.y)) * 1.5;
    const cap = (F: number) => Math.min(F, yMax * 4);
    const svg = Plot.plot({
      width: this.width || this.chart.clientWidth || 460,
      height: 260,
      marginLeft: 44,
      marginRight: 16,
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: { type: "log", tickFormat: "~g", label: "ball radius over its model's r*: r / r* (log scale)", domain: [lo, hi], grid: true },
      y: { label: "loss floor F (nats)", domain: [0, yMax], grid: true },
      color: { domain: labels, range: labels.map((_, i) => frame.colour(i)), legend: true },
      clip: true,
      marks: [
        Plot.ruleY([1], { stroke: theme.lines.floor, strokeOpacity: 0.5, strokeDasharray: "2,3" }),
        Plot.ruleY(ces, { y: "y", stroke: "member", strokeDasharray: "6,3", strokeWidth: 1.3 }),
        // labels stacked upwards, so audits of nearly equal loss stay readable
        ...ces.map((c) => Plot.text([c], { y: "y", text: "text", fill: "member", frameAnchor: "right", dx: -4, dy: c.dy })),
        Plot.line(curves.map((c) => ({ ...c, F: cap(c.F) })), { x: "x", y: "F", stroke: "member", z: "member", strokeWidth: 2 }),
        Plot.dot(marks.map((m) => ({ ...m, shown: Math.min(m.F, yMax * 0.96) })), { x: "x", y: "shown", fill: "member", r: 4.5, stroke: theme.bg }),
        Plot.tip(marks.map((m) => ({ ...m, shown: Math.min(m.F, yMax * 0.96) })), Plot.pointer({ x: "x", y: "shown", title: "text" })),
      ],
    });
    this.chart.replaceChildren(svg);
    this.note.textContent = `Solid: F(r) = log Z + 1/Z with Z = d·V_n(r), each with its own n and d (${layersUsed.join("; ")}); dots at each r̂. Dashed: each model's measured cross-entropy; dotted: the universal floor of 1 nat.`;
    this.markReady();
  }
}

const TABLE_COLUMNS: { key: string; label: string; value: (s: Record<string, unknown>, extra: Record<string, number>) => string }[] = [
  { key: "model", label: "model", value: (s) => String(s.model ?? "–") },
  { key: "n_layers", label: "blocks", value: (s) => fmtInt(num(s.n_layers)) },
  { key: "hidden_size", label: "hidden n", value: (s) => fmtInt(num(s.hidden_size)) },
  { key: "n_params_blocks", label: "N (blocks)", value: (s) => fmtCount(num(s.n_params_blocks)) },
  { key: "n_tokens", label: "tokens D", value: (s) => fmtCount(num(s.n_tokens)) },
  { key: "n_patterns", label: "patterns d", value: (s) => fmtInt(num(s.n_patterns)) },
  { key: "cross_entropy", label: "cross-entropy", value: (s) => fmt(num(s.cross_entropy), 4) },
  { key: "floor", label: "floor band", value: (s) => fmtBand(num(s.floor_low), num(s.floor_high)) },
  { key: "ratio", label: "final r̂/r*", value: (_s, e) => fmt(e.ratio) },
  { key: "normalize", label: "normalize", value: (s) => String(s.normalize ?? "–") },
];

class CompareTablePanel extends BasePanel {
  constructor(ctx: Context, private frame: Frame) {
    super("compare-table", "Summaries", ctx, true);
  }

  render(): void {
    const { frame } = this;
    const head = h("tr", {}, h("th", { text: "audit" }), ...TABLE_COLUMNS.map((c) => h("th", { text: c.label })));
    const body = h("tbody", {});
    frame.members.labels.forEach((label, i) => {
      const st = frame.members.state(i);
      const last = st.nLayers - 1;
      const extra = { ratio: st.stat(last, "r_hat") / st.stat(last, "r_star") };
      const row = h("tr", { "data-member": String(i) }, h("td", {}, h("span", { class: "ha-swatch", style: `background:${frame.colour(i)}` }), label));
      for (const c of TABLE_COLUMNS) row.append(h("td", { class: c.key === "model" || c.key === "normalize" ? "" : "ha-num", text: c.value(st.summary, extra) }));
      body.append(row);
    });
    const table = h("table", { class: "ha-compare" }, h("thead", {}, head), body);
    this.body.replaceChildren(h("div", { class: "ha-table-wrap" }, table));
    this.markReady();
  }
}

export function mountCompare(model: ModelLike, el: HTMLElement): View {
  return mountMulti(model, el, "compare", COMPARE_TRAITS, (frame) => {
    const members = frame.members;
    if (!members.length) {
      const empty = new CompareTablePanel(frame.context(0), frame);
      return [empty];
    }
    const base = (): Context => ({ state: members.state(0), theme: frame.theme, ready: () => frame.ready() });
    const table = new CompareTablePanel(base(), frame);
    const radii = new CompareRadiiPanel(base(), frame);
    const floor = new CompareFloorPanel(base(), frame);
    const dists = new GroupPanel("compare-distances", "Nearest-pattern distances, side by side", base(), "Each audit's own distances (normalize as the table says), with its 2 r* and 2 r̂; pick a layer per audit.");
    const basins = new GroupPanel("compare-basins", "Basins (UMAP), side by side", base(), "All scatters draw through one shared WebGL context. Hover a point for its sequence; arrows pan, + and − zoom, 0 resets.");
    members.labels.forEach((label, i) => {
      dists.add(new DistancesPanel(frame.context(i, () => dists.childReady())), label, frame.colour(i), i);
      basins.add(new SharedScatterPanel(frame.context(i, () => basins.childReady()), "basins", "Basins (UMAP)"), label, frame.colour(i), i);
    });
    const panels: Panel[] = [table, radii, floor, dists, basins];
    for (const c of frame.contexts) c.theme = frame.theme;
    return panels;
  });
}
