// The audits of one training run on a step slider (hopaudit.timeline): r̂/r* per layer and the
// cross-entropy against the loss floor over the steps, and the single view's distance histogram
// and basin scatter at the chosen step. The scatter frames were aligned in Python (each step's
// UMAP starts from the previous step's layout) and share one box per layer, so points stay put.
import * as Plot from "@observablehq/plot";
import type { Context, Panel } from "./panels/base";
import { Panel as BasePanel } from "./panels/base";
import { DistancesPanel } from "./panels/distances";
import type { ModelLike } from "./state";
import { fmt, fmtBand, h, select } from "./util";
import { ChartPanel, type Frame, type View, mountMulti } from "./multi/view";
import { SharedScatterPanel } from "./multi/scatter";

export const TIMELINE_TRAITS = ["members", "blob", "labels", "kind", "steps"];

const num = (v: unknown) => (typeof v === "number" ? v : NaN);

/** The chosen step, shared by the panels; `set` tells every listener. */
class StepCursor {
  listeners: ((i: number) => void)[] = [];
  constructor(public index: number) {}
  set(i: number): void {
    if (i === this.index) return;
    this.index = i;
    for (const cb of this.listeners) cb(i);
  }
}

class SliderPanel extends BasePanel {
  input = h("input", { type: "range", min: "0", step: "1", "aria-label": "training step" });
  label = h("span", { class: "ha-step", "aria-live": "polite" });
  facts = h("div", { class: "ha-facts" });

  constructor(ctx: Context, private frame: Frame, private steps: number[], private cursor: StepCursor, alignment: string[]) {
    super("timeline-slider", "Training step", ctx, true);
    this.input.max = String(Math.max(0, steps.length - 1));
    this.input.value = String(cursor.index);
    this.input.addEventListener("input", () => cursor.set(Number(this.input.value)));
    const prev = h("button", { type: "button", text: "◀", title: "previous step", "aria-label": "previous step" });
    const next = h("button", { type: "button", text: "▶", title: "next step", "aria-label": "next step" });
    prev.addEventListener("click", () => cursor.set(Math.max(0, cursor.index - 1)));
    next.addEventListener("click", () => cursor.set(Math.min(steps.length - 1, cursor.index + 1)));
    this.body.append(
      h("div", { class: "ha-slider" }, this.label, prev, this.input, next),
      this.facts,
      h("p", { class: "ha-note", text: `${steps.length} audits. Arrow keys, Home and End move the slider. UMAP frames: ${alignmentNote(alignment)}` }),
    );
    cursor.listeners.push(() => this.render());
  }

  render(): void {
    const i = this.cursor.index;
    this.input.value = String(i);
    this.input.setAttribute("aria-valuetext", `step ${this.steps[i]}`);
    this.label.textContent = `step ${this.steps[i] ?? "–"}`;
    const st = this.frame.members.state(i);
    const s = st.summary;
    const last = st.nLayers - 1;
    const fact = (k: string, v: string) => h("span", {}, `${k} `, h("b", { text: v }));
    this.facts.replaceChildren(
      fact("cross-entropy", fmt(num(s.cross_entropy), 4)),
      fact("floor band", fmtBand(num(s.floor_low), num(s.floor_high))),
      fact("final r̂/r*", fmt(st.stat(last, "r_hat") / st.stat(last, "r_star"))),
      fact("separated", `${fmt(100 * st.stat(last, "separated_frac"))} %`),
    );
    this.markReady();
  }
}

function alignmentNote(methods: string[]): string {
  if (methods.includes("init")) return "each step's UMAP starts from the previous step's layout of the same sequences (then a Procrustes fit), so points move only as much as the geometry does.";
  if (methods.includes("procrustes")) return "the sequences differ between steps, so each step's own UMAP is fitted onto the previous one by Procrustes on the shared points.";
  return "each step's own UMAP.";
}

/** Per-layer r̂/r* of every step, as lines (one per layer) or a heatmap (layers × steps). */
class RadiiOverStepsPanel extends ChartPanel {
  mode: "lines" | "heatmap";

  constructor(ctx: Context, private frame: Frame, private steps: number[], private cursor: StepCursor) {
    super("timeline-radii", "Ball radius per layer over training (r̂ / r*)", ctx);
    const nLayers = frame.members.state(0).nLayers;
    this.mode = nLayers > 12 ? "heatmap" : "lines";
    this.header.append(
      select("view", [{ value: "lines", label: "lines" }, { value: "heatmap", label: "heatmap" }], this.mode, (v) => {
        this.mode = v as "lines" | "heatmap";
        this.render();
      }),
    );
    cursor.listeners.push(() => this.render());
  }

  render(): void {
    const { frame, steps } = this;
    const theme = frame.theme;
    const st0 = frame.members.state(0);
    const names = st0.layers.map((l) => (l.name === "final" ? "final" : `${l.id}`));
    const rows: { step: number; layer: string; j: number; ratio: number; name: string }[] = [];
    steps.forEach((step, i) => {
      const st = frame.members.state(i);
      st.layers.forEach((l, j) => {
        const ratio = st.stat(j, "r_hat") / st.stat(j, "r_star");
        if (Number.isFinite(ratio) && ratio > 0) rows.push({ step, layer: names[j], j, ratio, name: l.name });
      });
    });
    const current = steps[this.cursor.index];
    const width = this.width || this.chart.clientWidth || 460;
    const style = { background: "transparent", color: theme.fg, fontSize: "11px" };
    let svg: Element;
    if (this.mode === "heatmap") {
      svg = Plot.plot({
        width,
        height: Math.max(200, Math.min(420, 40 + 16 * names.length)),
        marginLeft: 48,
        style,
        x: { type: "band", label: "training step", domain: steps, tickFormat: (s: number) => String(s) },
        y: { type: "band", label: "layer", domain: names.slice().reverse() },
        color: { type: "log", scheme: "viridis", label: "r̂ / r*", legend: true },
        marks: [
          Plot.cell(rows, { x: "step", y: "layer", fill: "ratio", inset: 0.5, tip: true, title: (d: any) => `step ${d.step} · ${d.name}\nr̂/r* = ${fmt(d.ratio)}` }),
          Plot.cell([{ step: current }], { x: "step", stroke: theme.fg, strokeWidth: 2, fill: "none" }),
        ],
      });
    } else {
      const vals = rows.map((r) => r.ratio);
      const logY = vals.length > 1 && Math.max(...vals) / Math.min(...vals) > 30;
      const blocks = rows.filter((r) => r.layer !== "final");
      const finals = rows.filter((r) => r.layer === "final");
      svg = Plot.plot({
        width,
        height: 260,
        marginLeft: 48,
        style,
        x: { label: "training step", grid: true },
        y: { type: logY ? "log" : "linear", tickFormat: logY ? "~g" : undefined, label: `r̂ / r*${logY ? " (log scale)" : ""}`, grid: true },
        color: { type: "linear", scheme: "viridis", domain: [0, Math.max(1, names.length - 2)], label: "block (depth)", legend: true },
        marks: [
          Plot.ruleX([current], { stroke: theme.accent, strokeWidth: 1.5, strokeDasharray: "4,3" }),
          Plot.line(blocks, { x: "step", y: "ratio", z: "layer", stroke: "j", strokeWidth: 1.5 }),
          Plot.line(finals, { x: "step", y: "ratio", stroke: theme.fg, strokeWidth: 2.2, strokeDasharray: "6,2" }),
          Plot.dot(rows.filter((r) => r.step === current), { x: "step", y: "ratio", fill: (d: any) => (d.layer === "final" ? theme.fg : d.j), r: 3 } as any),
          Plot.tip(rows, Plot.pointer({ x: "step", y: "ratio", title: (d: any) => `step ${d.step} · ${d.name}\nr̂/r* = ${fmt(d.ratio)}` })),
        ],
      });
    }
    this.chart.replaceChildren(svg);
    this.chart.setAttribute("data-step", String(current));
    this.note.textContent = `One ${this.mode === "lines" ? "line" : "row"} per layer (colour: depth${this.mode === "lines" ? "; dashed: final" : ""}); the marked step is the slider's. r* = √(n/2πe) is fixed for a run, so this is r̂ on the theory's scale.`;
    this.markReady();
  }
}

class LossOverStepsPanel extends ChartPanel {

  constructor(ctx: Context, private frame: Frame, private steps: number[], private cursor: StepCursor) {
    super("timeline-loss", "Cross-entropy against the loss floor", ctx);
    cursor.listeners.push(() => this.render());
  }

  render(): void {
    const { frame, steps } = this;
    const theme = frame.theme;
    const rows = steps.map((step, i) => {
      const s = frame.members.state(i).summary;
      return { step, ce: num(s.cross_entropy), lo: num(s.floor_low), hi: num(s.floor_high), gauss: num(s.floor_gauss) };
    });
    const vals = rows.flatMap((r) => [r.ce, r.lo, r.hi, r.gauss]).filter((v) => Number.isFinite(v) && v > 0);
    const logY = vals.length > 1 && Math.max(...vals) / Math.min(...vals, 1) > 30;
    const current = steps[this.cursor.index];
    const series = [
      ...rows.filter((r) => Number.isFinite(r.ce)).map((r) => ({ step: r.step, v: r.ce, s: "cross-entropy" })),
      ...rows.filter((r) => Number.isFinite(r.lo)).map((r) => ({ step: r.step, v: r.lo, s: "floor F(Z_vol)" })),
      ...rows.filter((r) => Number.isFinite(r.gauss)).map((r) => ({ step: r.step, v: r.gauss, s: "floor F(Z_gauss)" })),
    ];
    const domain = ["cross-entropy", "floor F(Z_vol)", "floor F(Z_gauss)"];
    const svg = Plot.plot({
      width: this.width || this.chart.clientWidth || 460,
      height: 260,
      marginLeft: 48,
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: { label: "training step", grid: true },
      y: { type: logY ? "log" : "linear", tickFormat: logY ? "~g" : undefined, label: `nats${logY ? " (log scale)" : ""}`, grid: true },
      color: { domain, range: [theme.lines.ce, theme.lines.rStar, theme.lines.rC], legend: true },
      marks: [
        Plot.areaY(rows.filter((r) => Number.isFinite(r.lo) && Number.isFinite(r.hi)), { x: "step", y1: "lo", y2: "hi", fill: theme.lines.rStar, fillOpacity: 0.15 }),
        Plot.ruleY([1], { stroke: theme.lines.floor, strokeOpacity: 0.5, strokeDasharray: "2,3" }),
        Plot.ruleX([current], { stroke: theme.accent, strokeWidth: 1.5, strokeDasharray: "4,3" }),
        Plot.line(series, { x: "step", y: "v", stroke: "s", strokeWidth: 1.8, strokeDasharray: (d: any) => (d.s === domain[0] ? null : "5,3") } as any),
        Plot.dot(series, { x: "step", y: "v", fill: "s", r: 2.5, tip: true, title: (d: any) => `step ${d.step}\n${d.s} = ${fmt(d.v)}` }),
      ],
    });
    this.chart.replaceChildren(svg);
    this.chart.setAttribute("data-step", String(current));
    this.note.textContent = "The final layer's floor band [F(Z_vol), F(Z_vol) + log L] (shaded) and the Gaussian-mass floor, against the model's cross-entropy on the audited data; dotted: the universal floor of 1 nat.";
    this.markReady();
  }
}

/** The evidence of each step (hopaudit.results.comparison.audit_evidence): the members' and
 *  held-out extraction rates and the loss score's membership AUROC, where the audits measured
 *  them; null otherwise. */
interface Evidence {
  extraction_rate?: number | null;
  extraction_rate_heldout?: number | null;
  auroc_loss?: number | null;
  auroc_loss_lo?: number | null;
  auroc_loss_hi?: number | null;
}

const EVIDENCE_SERIES: [keyof Evidence, string][] = [
  ["extraction_rate", "extraction rate (audited data)"],
  ["extraction_rate_heldout", "extraction rate (held-out)"],
  ["auroc_loss", "membership AUROC (loss)"],
];

function evidenceOf(frame: Frame, i: number): Evidence {
  return (frame.members.infos[i]?.evidence as Evidence | undefined) ?? {};
}

/** Whether any step measured extraction or membership: the evidence panel is drawn then. */
export function hasEvidence(frame: Frame, n: number): boolean {
  for (let i = 0; i < n; i++) {
    const e = evidenceOf(frame, i);
    if (EVIDENCE_SERIES.some(([k]) => Number.isFinite(num(e[k])))) return true;
  }
  return false;
}

/** Extraction rate and membership AUROC over the steps, on the same step axis as r̂/r* and the
 *  floor: the answer the geometry is read against (docs/validity.md). */
class EvidenceOverStepsPanel extends ChartPanel {
  constructor(ctx: Context, private frame: Frame, private steps: number[], private cursor: StepCursor) {
    super("timeline-evidence", "Memorization evidence over training", ctx);
    cursor.listeners.push(() => this.render());
  }

  render(): void {
    const { frame, steps } = this;
    const theme = frame.theme;
    const rows: { step: number; v: number; s: string; lo?: number; hi?: number }[] = [];
    steps.forEach((step, i) => {
      const e = evidenceOf(frame, i);
      for (const [key, label] of EVIDENCE_SERIES) {
        const v = num(e[key]);
        if (!Number.isFinite(v)) continue;
        const row: { step: number; v: number; s: string; lo?: number; hi?: number } = { step, v, s: label };
        if (key === "auroc_loss") {
          row.lo = num(e.auroc_loss_lo);
          row.hi = num(e.auroc_loss_hi);
        }
        rows.push(row);
      }
    });
    const current = steps[this.cursor.index];
    const domain = EVIDENCE_SERIES.map(([, label]) => label);
    const svg = Plot.plot({
      width: this.width || this.chart.clientWidth || 460,
      height: 260,
      marginLeft: 48,
      style: { background: "transparent", color: theme.fg, fontSize: "11px" },
      x: { label: "training step", grid: true, domain: [Math.min(...steps), Math.max(...steps)] },
      y: { label: "rate or AUROC", grid: true, domain: [0, 1] },
      color: { domain, range: [theme.lines.ce, theme.lines.rC, theme.lines.rHat], legend: true },
      marks: [
        Plot.ruleY([0.5], { stroke: theme.fg, strokeOpacity: 0.3, strokeDasharray: "2,3" }),
        Plot.ruleX([current], { stroke: theme.accent, strokeWidth: 1.5, strokeDasharray: "4,3" }),
        Plot.ruleX(rows.filter((r) => Number.isFinite(r.lo ?? NaN) && Number.isFinite(r.hi ?? NaN)), { x: "step", y1: "lo", y2: "hi", stroke: theme.lines.rHat, strokeWidth: 2 }),
        Plot.line(rows, { x: "step", y: "v", stroke: "s", strokeWidth: 1.8 }),
        Plot.dot(rows, { x: "step", y: "v", fill: "s", r: 2.5, tip: true, title: (d: any) => `step ${d.step}\n${d.s} = ${fmt(d.v)}${Number.isFinite(d.lo) ? ` (95 % interval ${fmt(d.lo)}–${fmt(d.hi)})` : ""}` }),
      ],
    });
    this.chart.replaceChildren(svg);
    this.chart.setAttribute("data-step", String(current));
    const at = evidenceOf(frame, this.cursor.index);
    this.chart.setAttribute("data-extraction-rate", String(num(at.extraction_rate)));
    this.chart.setAttribute("data-auroc-loss", String(num(at.auroc_loss)));
    this.note.textContent = "The ground truth beside the geometry: the share of the audited sequences greedy decoding reproduces (extraction), and how well the loss tells them from the held-out text (AUROC, with its 95 % interval; dotted: chance). Read r̂/r* and the floor above against it: on tiny GPT-2s they tracked training, not which sequences were memorized (docs/validity.md).";
    this.markReady();
  }
}

export function mountTimeline(model: ModelLike, el: HTMLElement): View {
  const m = model as ModelLike & { set?: (k: string, v: unknown) => void; save_changes?: () => void };
  let cursor: StepCursor | null = null;
  const view = mountMulti(model, el, "timeline", TIMELINE_TRAITS, (frame, v) => {
    const steps: number[] = model.get("steps") ?? frame.members.infos.map((x) => x.step ?? 0);
    const n = steps.length;
    const start = Math.min(Math.max(0, Number(model.get("step_index") ?? n - 1)), Math.max(0, n - 1));
    const cur = new StepCursor(start);
    cursor = cur;
    const base = (): Context => ({ state: frame.members.state(cur.index), theme: frame.theme, ready: () => frame.ready() });
    const slider = new SliderPanel(base(), frame, steps, cur, model.get("alignment") ?? []);
    const radii = new RadiiOverStepsPanel(base(), frame, steps, cur);
    const loss = new LossOverStepsPanel(base(), frame, steps, cur);
    const distCtx = frame.context(cur.index);
    const dists = new DistancesPanel(distCtx);
    dists.el.setAttribute("data-panel", "timeline-distances");
    const scatter = new SharedScatterPanel(frame.context(cur.index), "timeline-basins", "Basins (UMAP) at this step");
    const mark = (i: number) => {
      const step = String(steps[i]);
      frame.root.setAttribute("data-step", step);
      for (const p of [dists, scatter]) p.el.setAttribute("data-step", step);
      const h3 = dists.header.querySelector("h3");
      if (h3) h3.textContent = `Nearest-pattern distances at step ${step}`;
    };
    mark(cur.index);
    cur.listeners.push((i) => {
      const state = frame.members.state(i);
      distCtx.state = state;
      mark(i);
      dists.render();
      scatter.setState(state);
      if (m.set) {
        m.set("step_index", i);
        m.save_changes?.();
      }
    });
    v.setStep = (i: number) => cur.set(i);
    const evidence = hasEvidence(frame, n) ? [new EvidenceOverStepsPanel(base(), frame, steps, cur)] : [];
    return [slider, radii, loss, ...evidence, dists, scatter] as Panel[];
  });
  const onIndex = () => {
    const i = Number(model.get("step_index"));
    if (cursor && Number.isFinite(i)) cursor.set(i);
  };
  model.on("change:step_index", onIndex);
  const destroy = view.destroy;
  view.destroy = () => {
    model.off("change:step_index", onIndex);
    destroy();
  };
  return view;
}
