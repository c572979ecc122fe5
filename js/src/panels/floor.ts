// The loss floor F(Z) = log Z + 1/Z with Z = d V_n(r) (docs/theory.md section 3), against the
// ball radius r on a log axis, as hopaudit/widget.py computed it; markers at r_hat, r_star, r_c
// (F = floor_low, floor_r_star and 1 there); reference lines at the model's cross-entropy, the
// universal floor (1 nat) and Chinchilla's fit.
import * as Plot from "@observablehq/plot";
import { fmt, fmtFloor, h, select } from "../util";
import { type Context, Panel } from "./base";

export class FloorPanel extends Panel {
  layer: number;
  chart = h("div", { class: "ha-chart ha-floor" });
  legend = h("div", { class: "ha-legend" });
  note = h("p", { class: "ha-note" });

  constructor(ctx: Context) {
    super("floor", "Loss floor against radius", ctx);
    const st = ctx.state;
    const measured = st.layers.map((l, i) => ({ l, i })).filter(({ l }) => !l.skipped_reason);
    this.layer = measured.length ? measured[measured.length - 1].i : st.nLayers - 1;
    this.header.append(
      select(
        "layer",
        st.layers.map((l, i) => ({ value: String(i), label: `${l.id}: ${l.name}`, disabled: !!l.skipped_reason, group: st.groupOf(i) })),
        String(this.layer),
        (v) => {
          this.layer = Number(v);
          this.render();
        },
      ),
    );
    this.body.append(this.chart, this.legend, this.note);
    this.redrawOnResize(this.chart);
  }

  render(): void {
    const { state: st, theme } = this.ctx;
    const i = this.layer;
    const n = st.stat(i, "n");
    const d = st.stat(i, "n_patterns");
    const rHat = st.stat(i, "r_hat");
    const rStar = st.stat(i, "r_star");
    const rC = st.stat(i, "r_c");
    const width = this.width || this.chart.clientWidth || 420;
    if (!(n > 0 && d > 0)) {
      this.chart.replaceChildren(h("div", { class: "ha-message", text: "This layer was not measured: no floor to draw." }));
      this.note.textContent = "";
      this.markReady();
      return;
    }
    const marks = [
      { r: rHat, F: st.stat(i, "floor_low"), label: "r̂", color: theme.lines.rHat },
      { r: rStar, F: st.stat(i, "floor_r_star"), label: "r*", color: theme.lines.rStar },
      { r: rC, F: 1, label: "r_c", color: theme.lines.rC },
    ].filter((m) => Number.isFinite(m.r) && m.r > 0);
    const curve = st.floor(i);
    if (!curve.length) {
      this.chart.replaceChildren(h("div", { class: "ha-message", text: "No radius of this layer is known: no floor to draw." }));
      this.note.textContent = "";
      this.markReady();
      return;
    }
    const lo = curve[0].r;
    const hi = curve[curve.length - 1].r;
    const s = st.summary;
    const ce = typeof s.cross_entropy === "number" ? s.cross_entropy : NaN;
    const chin = typeof s.chinchilla_loss === "number" ? s.chinchilla_loss : NaN;
    const refs = [
      { y: 1, label: "universal floor 1 nat", color: theme.lines.floor },
      { y: ce, label: `measured cross-entropy ${fmt(ce)}`, color: theme.lines.ce },
      { y: chin, label: `Chinchilla reference ${fmt(chin)}`, color: theme.lines.chinchilla },
    ].filter((r) => Number.isFinite(r.y));
    const yMax = Math.max(4, ...refs.map((r) => r.y)) * 1.5;
    const pts = marks.map((m) => {
      const F = Number.isNaN(m.F) ? Infinity : m.F;
      return { ...m, F, shown: Math.min(F, yMax * 0.96), text: `${m.label} = ${fmt(m.r)}\nF = ${fmtFloor(F)}` };
    });
    const rLo = st.stat(i, "r_hat_lo");
    const rHi = st.stat(i, "r_hat_hi");
    const rHatCI = rLo > 0 && rHi > 0 ? [{ lo: Math.max(rLo, lo), hi: Math.min(rHi, hi) }] : [];
    const svg = Plot.plot({
      width,
      height: 260,
      marginLeft: 44,
      marginRight: 16,
      marginBottom: 44, // the x label below the tick labels, not on them
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: { type: "log", tickFormat: "~g", labelOffset: 40, label: `ball radius r (log scale; n = ${fmt(n)}, d = ${fmt(d)})`, domain: [lo, hi], grid: true },
      y: { label: "loss floor F (nats)", domain: [0, yMax], grid: true },
      clip: true,
      marks: [
        Plot.ruleY(refs, { y: "y", stroke: "color", strokeDasharray: "6,3", strokeWidth: 1.3 }),
        // Values far above the frame are clipped anyway; cap them so SVG gets sane numbers.
        Plot.line(curve.map((c) => ({ r: c.r, F: Math.min(c.F, yMax * 4) })), { x: "r", y: "F", stroke: theme.fg, strokeWidth: 2 }),
        // the 95 % bootstrap interval of r̂ (docs/theory.md §7), where the audit made one
        Plot.rectX(rHatCI, { x1: "lo", x2: "hi", fill: theme.lines.rHat, fillOpacity: 0.12 }),
        Plot.ruleX(pts, { x: "r", stroke: "color", strokeOpacity: 0.6, strokeDasharray: "2,3" }),
        Plot.dot(pts, { x: "r", y: "shown", fill: "color", r: 4.5, stroke: theme.bg }),
        Plot.tip(pts, Plot.pointer({ x: "r", y: "shown", title: "text" })),
      ],
    });
    this.chart.replaceChildren(svg);
    // every label in the legend, none on the chart: r̂, r* and r_c are often a few pixels
    // apart (and the reference lines close to one another), so labels there would overlap
    const dot = (c: string) => h("i", { style: `background:${c}` });
    const rule = (c: string) => h("i", { class: "ha-rule", style: `border-color:${c}` });
    this.legend.replaceChildren(
      ...pts.map((p) => h("span", { class: "ha-mark" }, dot(p.color), `${p.label} = ${fmt(p.r)}: F = ${fmtFloor(p.F)}`)),
      ...refs.map((r) => h("span", { class: "ha-mark" }, rule(r.color), r.label)),
    );
    const fHat = st.stat(i, "floor_low");
    const fLo = st.stat(i, "floor_low_lo");
    const fHi = st.stat(i, "floor_low_hi");
    const interval = Number.isFinite(fLo) && Number.isFinite(fHi)
      ? ` With 95 % confidence r̂ lies in [${fmt(rLo)}, ${fmt(rHi)}] (shaded) and the floor F(r̂) in [${fmt(fLo)}, ${fmt(fHi)}] nats, from resampling the nearest-pattern distances.`
      : "";
    this.note.textContent = `Volume form log Z = log d + log V_n(r); F = log Z + 1/Z ≥ 1 with equality at r_c. At r̂ = ${fmt(rHat)}: F = ${fmtFloor(fHat)}${fHat < 1e100 ? " nats" : ""} (band [${fmtFloor(st.stat(i, "floor_low"))}, ${fmtFloor(st.stat(i, "floor_high"))}] adds log l).${interval} Chinchilla's fit is on another corpus: a reference, not a verdict.`;
    this.markReady();
  }
}
