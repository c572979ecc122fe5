// The UMAP of one layer's patterns in WebGL (regl-scatterplot, as jupyter-scatter uses),
// coloured by basin, by distance ratio nn/r_hat, or by the sequence's cross-entropy.
// Hover shows the sequence's text; wheel/drag zoom and pan; arrows, +/- and 0 from the keyboard.
// Shift+drag (or a drag, with the drag menu on select) selects points, a box or a lasso: their sequence ids go to the model's
// `selection` (Audit.selected() reads it in Python); Escape clears it. Clicking a row of the
// samples table highlights its sequence's points; the search box highlights the points whose
// text contains a substring (case-insensitive).
import * as Plot from "@observablehq/plot";
import createScatterplot, { createRenderer } from "regl-scatterplot";
import type { ScatterLayer } from "../state";
import { ndarray } from "../schema";
import { toRgba } from "../theme";
import { fmt, h, observeSize, select } from "../util";
import { type Context, Panel } from "./base";

/** basin, ratio, ce, or "meta:J": column J of the audit's metadata (audit(metadata=...)). */
type Mode = string;
interface MetaColumn {
  name: string;
  kind: "number" | "category";
  categories: string[];
}
type Lasso = "rectangle" | "freeform";
type Scatter = ReturnType<typeof createScatterplot>;
const RAMP = 64; // continuous colours are 64 categories; index RAMP = missing (grey)

let sharedRenderer: ReturnType<typeof createRenderer> | null = null;
let rendererUsers = 0;

/** What a scatter shows instead when the browser has no WebGL. */
export const NO_WEBGL =
  "WebGL is not available in this browser, so the scatter plot cannot be drawn. Enable hardware acceleration (or WebGL) and reload; the other panels do not need it.";

let webglAvailable: boolean | null = null;

/** Whether this browser can give us a WebGL context at all. Probed once per page (a throwaway
 * context) and remembered, so the scatters of a view do not each open one. */
export function hasWebGL(): boolean {
  if (webglAvailable === null) {
    try {
      const c = document.createElement("canvas");
      webglAvailable = !!(c.getContext("webgl") || c.getContext("experimental-webgl"));
    } catch {
      webglAvailable = false;
    }
  }
  return webglAvailable;
}

export class BasinsPanel extends Panel {
  layer = 0;
  mode: Mode = "basin";
  lasso: Lasso = "rectangle";
  /** What a plain drag does: pan (shift+drag selects), or select a box or a lasso. */
  dragMode = "pan";
  /** Sequence ids of the selected points (also the model's `selection`). */
  selection: number[] = [];
  /** Points highlighted by a click on a samples row or by the search box. */
  highlighted: number[] = [];
  box = h("div", { class: "ha-scatter", tabindex: "0", role: "img" });
  canvas = h("canvas", {});
  tooltip = h("div", { class: "ha-tooltip", hidden: "" });
  legend = h("div", { class: "ha-legend" });
  note = h("p", { class: "ha-note" });
  selectionNote = h("p", { class: "ha-note", "data-role": "selection" });
  search = h("input", { type: "search", placeholder: "search texts", "aria-label": "Highlight the points whose text contains this", class: "ha-search", style: "width:9em;font:inherit" }) as HTMLInputElement;
  /** Metadata columns (one row of meta_values per column, one value per sequence). */
  metaColumns: MetaColumn[] = [];
  metaValues: Float32Array = new Float32Array(0);
  sp: Scatter | null = null;
  current: ReturnType<Context["state"]["points"]> | null = null;
  size = [0, 0];
  drawToken = 0;
  /** The asked text's places (layer name -> layout points) and its nearest sequences per layer
   * (the ask panel's answer), drawn apart: a point of their own colour, its neighbours selected. */
  queried: { places: Map<string, [number, number][]>; nearest: Map<string, Set<number>> } | null = null;
  /** The draw in flight (regl-scatterplot ignores a draw while one runs: "the previous draw
   * call has not yet finished"), and whether another was asked meanwhile. */
  private drawing: Promise<void> | null = null;
  private drawAgain = false;

  constructor(ctx: Context) {
    super("basins", "Basins (UMAP)", ctx);
    const st = ctx.state;
    const layers = st.scatter;
    this.layer = Math.max(0, layers.length - 1);
    this.metaColumns = ctx.model?.get("meta_columns") ?? [];
    if (this.metaColumns.length) this.metaValues = ndarray(ctx.model?.get("meta_values"), "float32");
    if (layers.length) {
      this.header.append(
        select("layer", layers.map((s, i) => ({ value: String(i), label: s.name })), String(this.layer), (v) => {
          this.layer = Number(v);
          this.draw();
        }),
        select(
          "colour",
          [
            { value: "basin", label: "basin" },
            { value: "ratio", label: "distance ratio nn/r̂" },
            { value: "ce", label: "sequence cross-entropy", disabled: !st.seqCe.some((v) => Number.isFinite(v)) },
            ...this.metaColumns.map((c, j) => ({ value: `meta:${j}`, label: c.name })),
          ],
          this.mode,
          (v) => {
            this.mode = v as Mode;
            this.draw();
          },
        ),
      );
      this.header.append(
        select(
          "drag",
          [
            { value: "pan", label: "pan and zoom (shift: box)" },
            { value: "rectangle", label: "select a box" },
            { value: "freeform", label: "select a lasso" },
          ],
          this.dragMode,
          (v) => {
            this.dragMode = v;
            if (v !== "pan") this.lasso = v as Lasso;
            this.sp?.set({ lassoType: this.lasso, mouseMode: v === "pan" ? "panZoom" : "lasso" } as any);
            this.box.setAttribute("data-drag", v);
          },
        ),
      );
      let timer: ReturnType<typeof setTimeout> | undefined;
      this.search.addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(() => this.find(this.search.value), 150);
      });
      this.header.append(this.search);
      const reset = h("button", { type: "button", text: "reset view", title: "Reset zoom (key 0)" });
      reset.addEventListener("click", () => this.fit(true));
      this.header.append(reset);
    }
    this.box.setAttribute("aria-label", "UMAP scatter plot: drag to pan, wheel to zoom; arrow keys pan, + and - zoom, 0 resets");
    this.box.append(this.canvas, this.tooltip);
    this.body.append(this.box, this.legend, this.note, this.selectionNote);
  }

  render(): void {
    const st = this.ctx.state;
    if (!st.scatter.length) {
      this.box.replaceChildren(h("div", { class: "ha-message", text: "No UMAP was computed for this audit (umap_layers=[])." }));
      this.markReady();
      return;
    }
    if (!hasWebGL()) {
      this.box.replaceChildren(
        h("div", { class: "ha-message", "data-webgl": "missing", text: NO_WEBGL }),
      );
      this.markReady();
      return;
    }
    if (!this.sp) {
      // a click on a row of the samples table (data-sequence) highlights that sequence's points
      const root = this.el.closest(".hopaudit");
      const onRow = (e: Event) => {
        const row = (e.target as HTMLElement | null)?.closest?.("tr[data-sequence]");
        if (!row || !root?.contains(row)) return;
        const id = Number(row.getAttribute("data-sequence"));
        const st = this.ctx.state;
        this.highlight(this.pointsWhere((seq) => st.sequenceId(seq) === id), `sequence ${id}`);
      };
      root?.addEventListener("click", onRow);
      this.cleanups.push(() => root?.removeEventListener("click", onRow));
      this.cleanups.push(
        observeSize(this.box, (w, hgt) => {
          if (w <= 0 || hgt <= 0) return;
          this.size = [w, hgt];
          if (!this.sp) this.create();
          else this.sp.set({ width: w, height: hgt });
        }),
      );
      this.box.addEventListener("keydown", (e) => this.onKey(e));
    } else {
      this.applyTheme();
      this.draw();
    }
  }

  /** Shared with multi/scatter.ts, which starts the scatter its own way. */
  protected create(): void {
    const theme = this.ctx.theme;
    try {
      if (!sharedRenderer || sharedRenderer.isDestroyed) sharedRenderer = createRenderer();
      rendererUsers++;
      this.sp = createScatterplot({
        renderer: sharedRenderer,
        canvas: this.canvas,
        width: this.size[0],
        height: this.size[1],
        backgroundColor: toRgba(theme.bg) as [number, number, number, number],
        pointSize: 3,
        pointSizeSelected: 4,
        pointOutlineWidth: 1,
        opacity: 0.85,
        lassoOnLongPress: false,
        lassoType: this.lasso,
        deselectOnEscape: true,
        showReticle: false,
      } as any);
    } catch (err) {
      this.box.replaceChildren(h("div", { class: "ha-message", text: `The scatter plot could not start WebGL: ${String(err)}` }));
      this.markReady();
      return;
    }
    const sp = this.sp;
    sp.subscribe("pointOver", (i: number) => this.showTooltip(i));
    sp.subscribe("pointOut", () => this.tooltip.setAttribute("hidden", ""));
    sp.subscribe("view", () => this.tooltip.setAttribute("hidden", ""));
    sp.subscribe("select", ({ points }: { points: number[] }) => this.onSelect(points));
    sp.subscribe("deselect", () => this.onSelect([]));
    this.cleanups.push(() => {
      sp.destroy();
      this.sp = null;
      rendererUsers--;
      if (rendererUsers <= 0 && sharedRenderer) {
        sharedRenderer.destroy();
        sharedRenderer = null;
      }
    });
    this.draw();
  }

  /** Points ``points`` (indices into the layer shown) selected: their sequences, sorted and
   * unique, become the selection, in the panel and in the model. */
  onSelect(points: number[]): void {
    const st = this.ctx.state;
    const p = this.current;
    const ids = new Set<number>();
    if (p) for (const i of points) if (i >= 0 && i < p.seq.length) ids.add(st.sequenceId(p.seq[i]));
    this.selection = [...ids].sort((a, b) => a - b);
    this.box.setAttribute("data-selected", String(this.selection.length));
    this.selectionNote.textContent = this.selection.length
      ? `${points.length.toLocaleString("en-US")} points of ${this.selection.length.toLocaleString("en-US")} sequences selected: audit.selected() gives their rows (Escape clears).`
      : "";
    const model = this.ctx.model;
    model?.set?.("selection", this.selection);
    model?.save_changes?.();
  }

  /** Indices of the points shown whose sequence passes ``test``. */
  pointsWhere(test: (seq: number) => boolean): number[] {
    const p = this.current;
    const out: number[] = [];
    if (p) for (let i = 0; i < p.seq.length; i++) if (test(p.seq[i])) out.push(i);
    return out;
  }

  /** Points whose text contains ``query`` (case-insensitive); an empty query clears. */
  find(query: string): number[] {
    const q = query.trim().toLowerCase();
    if (!q) {
      this.highlight([], "");
      return [];
    }
    const st = this.ctx.state;
    const cache = new Map<number, boolean>();
    const points = this.pointsWhere((seq) => {
      let hit = cache.get(seq);
      if (hit === undefined) cache.set(seq, (hit = st.text(seq).toLowerCase().includes(q)));
      return hit;
    });
    this.highlight(points, `“${query.trim()}”`);
    return points;
  }

  /** Highlight points without changing the selection sent to Python. */
  highlight(points: number[], what: string): void {
    this.highlighted = points;
    this.box.setAttribute("data-highlighted", String(points.length));
    if (points.length) this.sp?.select(points, { preventEvent: true } as any);
    else this.sp?.deselect({ preventEvent: true } as any);
    this.selectionNote.textContent = what
      ? `${points.length.toLocaleString("en-US")} points highlighted: ${what}.`
      : "";
  }

  private layerMeta(): ScatterLayer {
    return this.ctx.state.scatter[this.layer];
  }

  private colours(): { z: Uint16Array; colors: string[]; legend: HTMLElement[] } {
    const st = this.ctx.state;
    const theme = this.ctx.theme;
    const s = this.layerMeta();
    const p = this.current!;
    const n = s.n;
    const z = new Uint16Array(n);
    const sw = (c: string) => h("i", { style: `background:${c}` });
    if (this.mode === "basin") {
      const top = s.top_basins;
      const colors = [...theme.categorical.slice(0, top), theme.other];
      for (let i = 0; i < n; i++) z[i] = Math.min(p.basin[i], top);
      const legend = [h("span", { text: `${s.n_basins} basins;` })];
      for (let b = 0; b < top; b++) legend.push(h("span", {}, sw(colors[b]), `#${b + 1} (${p.basinSizes[b]})`));
      if (s.n_basins > top) legend.push(h("span", {}, sw(theme.other), "other"));
      return { z, colors, legend };
    }
    const meta = this.mode.startsWith("meta:") ? Number(this.mode.slice(5)) : -1;
    const column = this.metaColumns[meta];
    const metaRow = (seq: number) => this.metaValues[meta * st.nSequences + seq];
    if (column?.kind === "category") {
      const k = column.categories.length;
      const colors = [...theme.categorical.slice(0, k), theme.other];
      let other = false;
      for (let i = 0; i < n; i++) {
        const code = metaRow(p.seq[i]);
        z[i] = code < k ? code : k;
        if (code >= k) other = true;
      }
      const legend = [h("span", { text: `${column.name}:` })];
      column.categories.forEach((c, b) => legend.push(h("span", {}, sw(colors[b]), c)));
      if (other) legend.push(h("span", {}, sw(theme.other), "other or missing"));
      return { z, colors, legend };
    }
    const values = new Float64Array(n);
    if (this.mode === "ratio") for (let i = 0; i < n; i++) values[i] = st.ratioValue(s, p.ratio[i]);
    else if (column) for (let i = 0; i < n; i++) values[i] = metaRow(p.seq[i]);
    else for (let i = 0; i < n; i++) values[i] = st.seqCe[p.seq[i]] ?? NaN;
    const finite = Array.from(values).filter(Number.isFinite).sort((a, b) => a - b);
    const lo = finite.length ? finite[Math.floor(0.02 * (finite.length - 1))] : 0;
    const hi = finite.length ? finite[Math.ceil(0.98 * (finite.length - 1))] : 1;
    const scheme = this.mode === "ratio" || column ? "viridis" : "magma";
    const scale = Plot.scale({ color: { type: "linear", scheme, domain: [0, 1] } });
    const colors: string[] = [];
    for (let k = 0; k < RAMP; k++) colors.push(String(scale.apply(k / (RAMP - 1))));
    colors.push(theme.other);
    for (let i = 0; i < n; i++) {
      const v = values[i];
      z[i] = Number.isFinite(v) ? Math.round(Math.min(1, Math.max(0, (v - lo) / (hi - lo || 1))) * (RAMP - 1)) : RAMP;
    }
    const ramp = h("span", { class: "ha-ramp", style: `background:linear-gradient(to right, ${colors[0]}, ${colors[21]}, ${colors[42]}, ${colors[RAMP - 1]})` });
    const label = column ? column.name : this.mode === "ratio" ? "nn / r̂ (low = tightly packed, memorized)" : "sequence cross-entropy (nats)";
    return { z, colors, legend: [h("span", {}, `${label}: ${fmt(lo)}`, ramp, `${fmt(hi)}`)] };
  }

  /** Draw the current layer and colouring. Draws asked while one is in flight are coalesced
   * into one more draw after it, from the state as it is then: the last choice always wins
   * (two quick switches of the colour menu once left the old colouring drawn). The promise
   * settles when no draw is left. */
  draw(): Promise<void> {
    if (this.drawing) {
      this.drawAgain = true;
      return this.drawing;
    }
    this.drawing = (async () => {
      try {
        do {
          this.drawAgain = false;
          await this.drawOnce();
        } while (this.drawAgain);
      } finally {
        this.drawing = null;
      }
    })();
    return this.drawing;
  }

  private async drawOnce(): Promise<void> {
    const sp = this.sp;
    if (!sp) return;
    const token = ++this.drawToken;
    const st = this.ctx.state;
    const s = this.layerMeta();
    this.current = st.points(s);
    const p = this.current;
    const cx = (s.x0 + s.x1) / 2;
    const cy = (s.y0 + s.y1) / 2;
    const half = (Math.max(s.x1 - s.x0, s.y1 - s.y0) / 2) * 1.06 || 1;
    const x = new Float32Array(s.n);
    const y = new Float32Array(s.n);
    for (let i = 0; i < s.n; i++) {
      x[i] = (p.x[i] - cx) / half;
      y[i] = (p.y[i] - cy) / half;
    }
    const { z, colors, legend } = this.colours();
    const asked = this.queried?.places.get(s.name) ?? [];
    const size = s.n < 2000 ? 6 : s.n < 10000 ? 4 : s.n < 50000 ? 3 : 2;
    const all = asked.length ? this.withAsked(x, y, z, asked, cx, cy, half, colors.length) : { x, y, z };
    if (asked.length) legend.push(h("span", {}, h("i", { style: `background:${this.ctx.theme.accent}` }), "your text"));
    sp.set({ pointColor: asked.length ? [...colors, this.ctx.theme.accent] : colors, colorBy: "valueA", pointSize: size } as any);
    await sp.draw({ x: all.x, y: all.y, valueA: all.z } as any, { zDataType: "categorical" } as any);
    if (token !== this.drawToken) return;
    await this.fit();
    if (token !== this.drawToken) return;
    this.box.setAttribute("data-asked", String(asked.length));
    if (asked.length) {
      const near = this.queried!.nearest.get(s.name) ?? new Set<number>();
      const pts = this.pointsWhere((seq) => near.has(st.sequenceId(seq)));
      this.highlight([...pts, ...asked.map((_, j) => s.n + j)], "your text and its nearest stored sequences");
    }
    this.legend.replaceChildren(...legend);
    this.note.textContent = `${s.name}: ${s.n.toLocaleString("en-US")} points${s.n_total > s.n ? ` (a random subset of ${s.n_total.toLocaleString("en-US")})` : ""}. Hover a point for its sequence; colour by basin puts the ${s.top_basins} largest basins in distinct colours.`;
    this.box.setAttribute("data-layer", s.name);
    this.box.setAttribute("data-mode", this.mode);
    requestAnimationFrame(() => {
      if (token === this.drawToken) this.markReady();
    });
  }

  /** Place the asked text (the ask panel's answer) and redraw: ``places`` its layout points per
   * layer, ``nearest`` its nearest stored sequences per layer. */
  placeQuery(places: { name: string; x: number; y: number }[], nearest: { name: string; sequence: number }[]): void {
    const byLayer = new Map<string, [number, number][]>();
    for (const p of places) {
      if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
      if (!byLayer.has(p.name)) byLayer.set(p.name, []);
      byLayer.get(p.name)!.push([p.x, p.y]);
    }
    const near = new Map<string, Set<number>>();
    for (const n of nearest) {
      if (!near.has(n.name)) near.set(n.name, new Set());
      near.get(n.name)!.add(n.sequence);
    }
    this.queried = { places: byLayer, nearest: near };
    void this.draw();
  }

  /** The points with the asked text's appended (indices n, n + 1, ...), in its own colour. */
  private withAsked(x: Float32Array, y: Float32Array, z: Uint16Array, asked: [number, number][], cx: number, cy: number, half: number, colour: number) {
    const n = x.length;
    const ax = new Float32Array(n + asked.length);
    const ay = new Float32Array(n + asked.length);
    const az = new Uint16Array(n + asked.length);
    ax.set(x);
    ay.set(y);
    az.set(z);
    asked.forEach(([px, py], j) => {
      ax[n + j] = (px - cx) / half;
      ay[n + j] = (py - cy) / half;
      az[n + j] = colour;
    });
    return { x: ax, y: ay, z: az };
  }

  /** Fit the points' box ([-1, 1]^2 after normalization) into the canvas, whatever its aspect. */
  fit(transition = false): Promise<void> {
    return this.sp ? this.sp.zoomToArea({ x: -1, y: -1, width: 2, height: 2 }, { transition }) : Promise.resolve();
  }

  applyTheme(): void {
    this.sp?.set({ backgroundColor: toRgba(this.ctx.theme.bg) as any });
  }

  /** Screen position (CSS px, relative to the scatter box) of point i: for tooltips and tests. */
  screenPosition(i: number): [number, number] | undefined {
    return this.sp?.getScreenPosition(i) as [number, number] | undefined;
  }

  private showTooltip(i: number): void {
    const st = this.ctx.state;
    const s = this.layerMeta();
    const p = this.current;
    if (p && i >= s.n && this.queried?.places.get(s.name)?.length) {
      this.tooltip.replaceChildren(h("div", { class: "ha-tt-meta", text: "your text (asked in the box below), placed by UMAP's transform" }));
      this.tooltip.removeAttribute("hidden");
      this.tooltip.setAttribute("data-point", String(i));
      return;
    }
    if (!p || i < 0 || i >= s.n) return;
    const seq = p.seq[i];
    const ce = st.seqCe[seq];
    const meta = `sequence ${st.sequenceId(seq)} · basin #${p.basin[i] + 1} (${p.basinSizes[p.basin[i]] ?? "?"}) · nn/r̂ ${fmt(st.ratioValue(s, p.ratio[i]))}${Number.isFinite(ce) ? ` · CE ${fmt(ce)}` : ""}`;
    this.tooltip.replaceChildren(h("div", { class: "ha-tt-meta", text: meta }), h("div", { class: "ha-tt-text", text: st.text(seq) || "(no text)" }));
    const pos = this.screenPosition(i);
    const [w, hgt] = this.size;
    if (pos) {
      const left = Math.min(Math.max(4, pos[0] + 12), Math.max(4, w - 300));
      const top = pos[1] + 12 + 120 > hgt ? Math.max(4, pos[1] - 130) : pos[1] + 12;
      this.tooltip.style.left = `${left}px`;
      this.tooltip.style.top = `${top}px`;
    }
    this.tooltip.removeAttribute("hidden");
    this.tooltip.setAttribute("data-point", String(i));
  }

  protected onKey(e: KeyboardEvent): void {
    const sp = this.sp;
    if (!sp) return;
    const cam = sp.get("camera") as any;
    const target: [number, number] = [cam.target[0], cam.target[1]];
    const dist: number = Array.isArray(cam.distance) ? cam.distance[0] : cam.distance;
    const step = 0.15 * dist;
    let t = target;
    let d = dist;
    switch (e.key) {
      case "ArrowLeft": t = [target[0] - step, target[1]]; break;
      case "ArrowRight": t = [target[0] + step, target[1]]; break;
      case "ArrowUp": t = [target[0], target[1] + step]; break;
      case "ArrowDown": t = [target[0], target[1] - step]; break;
      case "+": case "=": d = dist / 1.25; break;
      case "-": case "_": d = dist * 1.25; break;
      case "0": this.fit(true); e.preventDefault(); return;
      default: return;
    }
    e.preventDefault();
    sp.zoomToLocation(t, d, { transition: false });
  }
}
