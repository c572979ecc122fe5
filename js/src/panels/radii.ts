// Ball radius per layer: r_hat (median nn/2) with its interquartile band, against the flat
// r_star = sqrt(n / 2 pi e) and the critical radius r_c; intrinsic dimension (TwoNN) beside it.
import * as Plot from "@observablehq/plot";
import { fmt, h } from "../util";
import { type Context, Panel } from "./base";

export class RadiiPanel extends Panel {
  left = h("div", { class: "ha-chart ha-radii" });
  right = h("div", { class: "ha-chart ha-id ha-narrow" });
  note = h("p", { class: "ha-note" });

  constructor(ctx: Context) {
    super("radii", "Ball radius per layer", ctx);
    this.body.append(h("div", { class: "ha-row" }, this.left, this.right), this.note);
    this.redrawOnResize(this.body);
  }

  render(): void {
    const { state: st, theme } = this.ctx;
    const rows = st.layers.map((l, i) => ({
      i,
      label: l.name === "final" || l.name.endsWith(".final") ? "final" : String(l.id),
      name: l.name,
      g: st.groupOf(i) ?? "",
      rHat: st.stat(i, "r_hat"),
      lo: st.stat(i, "r_hat_lo"),
      hi: st.stat(i, "r_hat_hi"),
      q25: st.stat(i, "r_hat_q25"),
      q75: st.stat(i, "r_hat_q75"),
      rStar: st.stat(i, "r_star"),
      rC: st.stat(i, "r_c"),
      id: st.stat(i, "twonn_id"),
    }));
    const ok = rows.filter((r) => Number.isFinite(r.rHat));
    // An encoder-decoder's two stacks: a rule between them and each one's name over it.
    const groups: { start: number; end: number; name: string }[] = [];
    rows.forEach((r) => {
      const g = st.groupOf(r.i);
      if (g === null) return;
      const last = groups[groups.length - 1];
      if (last && last.name === g) last.end = r.i;
      else groups.push({ start: r.i, end: r.i, name: g });
    });
    const stackMarks = groups.length > 1
      ? [
          Plot.ruleX(groups.slice(1).map((g) => g.start - 0.5), { stroke: theme.border, strokeDasharray: "2,3" }),
          Plot.text(groups, { x: (g: { start: number; end: number }) => (g.start + g.end) / 2, text: "name", frameAnchor: "top", dy: 4, fill: theme.fg, fillOpacity: 0.7 }),
        ]
      : [];
    const tick = (i: number) => rows[i]?.label ?? "";
    const common = {
      height: 230,
      marginLeft: 44,
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
    };
    const series = [
      ...ok.map((r) => ({ i: r.i, v: r.rHat, s: "r̂ (median nn/2)" })),
      ...rows.filter((r) => Number.isFinite(r.rStar)).map((r) => ({ i: r.i, v: r.rStar, s: "r* = √(n/2πe)" })),
      ...rows.filter((r) => Number.isFinite(r.rC)).map((r) => ({ i: r.i, v: r.rC, s: "r_c (d·V_n(r)=1)" })),
    ];
    const domain = ["r̂ (median nn/2)", "r* = √(n/2πe)", "r_c (d·V_n(r)=1)"];
    const leftW = Math.max(240, this.left.clientWidth || this.width * 0.64 || 300);
    const rightW = Math.max(180, this.right.clientWidth || this.width * 0.34 || 200);
    const many = rows.length > 16;
    const vals = series.map((d) => d.v).concat(ok.map((r) => r.q25)).filter((v) => Number.isFinite(v) && v > 0);
    const logY = vals.length > 0 && Math.max(...vals) / Math.min(...vals) > 30;
    const radii = Plot.plot({
      ...common,
      width: leftW,
      x: { label: "layer", tickFormat: tick, ticks: many ? undefined : rows.map((r) => r.i), domain: [0, Math.max(1, rows.length - 1)] },
      y: { type: logY ? "log" : "linear", tickFormat: logY ? "~g" : undefined, label: `radius${logY ? " (log scale)" : ""} (normalize=${String(st.summary.normalize ?? "")})`, grid: true, zero: false },
      color: { domain, range: [theme.lines.rHat, theme.lines.rStar, theme.lines.rC], legend: true },
      marks: [
        ...stackMarks,
        Plot.areaY(ok.filter((r) => Number.isFinite(r.q25) && (!logY || r.q25 > 0)), { x: "i", y1: "q25", y2: "q75", z: "g", fill: theme.lines.rHat, fillOpacity: 0.18 }),
        // z: one line per series and stack, so an encoder's line does not run into its decoder's
        Plot.line(series, { x: "i", y: "v", stroke: "s", z: (d: { s: string; i: number }) => `${d.s}|${st.groupOf(d.i) ?? ""}`, strokeWidth: 1.8, strokeDasharray: (d: { s: string }) => (d.s === domain[0] ? null : "5,3") } as any),
        // the 95 % bootstrap interval of r̂ (docs/theory.md §7): an error bar per layer
        Plot.ruleX(ok.filter((r) => Number.isFinite(r.lo) && Number.isFinite(r.hi)), { x: "i", y1: "lo", y2: "hi", stroke: theme.lines.rHat, strokeWidth: 2.5 }),
        Plot.dot(ok, { x: "i", y: "rHat", fill: theme.lines.rHat, r: 2.5, tip: true, title: (d: any) => `${d.name}\nr̂ = ${fmt(d.rHat)}${Number.isFinite(d.lo) ? ` (95 % interval ${fmt(d.lo)}–${fmt(d.hi)})` : ""} (IQR ${fmt(d.q25)}–${fmt(d.q75)})\nr* = ${fmt(d.rStar)} · r_c = ${fmt(d.rC)}` }),
      ],
    });
    const idRows = rows.filter((r) => Number.isFinite(r.id));
    const idChart = idRows.length
      ? Plot.plot({
          ...common,
          width: rightW,
          x: { label: "layer", tickFormat: tick, domain: [0, Math.max(1, rows.length - 1)] },
          y: { label: "intrinsic dim (TwoNN)", grid: true, zero: true },
          marks: [
            Plot.line(idRows, { x: "i", y: "id", stroke: theme.accent, strokeWidth: 1.6 }),
            Plot.dot(idRows, { x: "i", y: "id", fill: theme.accent, r: 2.5, title: (d: any) => `${d.name}: ${fmt(d.id)}` }),
          ],
        })
      : h("div", { class: "ha-message", text: "No intrinsic dimension was measured." });
    this.left.replaceChildren(radii);
    this.right.replaceChildren(idChart);
    const last = ok[ok.length - 1];
    this.note.textContent = last
      ? `${last.name}: r̂ = ${fmt(last.rHat)}, r̂/r* = ${fmt(last.rHat / last.rStar)}; r̂ ${last.rHat < last.rC ? "below" : "above"} r_c = ${fmt(last.rC)} means Z ${last.rHat < last.rC ? "< 1 (over-packed)" : "> 1"}. Intrinsic dimension is beyond the paper (TwoNN).`
      : "No layer was measured.";
    this.markReady();
  }
}
