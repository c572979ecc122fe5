// Read the widget's traits (JSON scalars + packed arrays, js/src/schema.ts) into typed arrays.
// What every array means is documented in hopaudit/widget.py (STATE_LAYOUT).
import { ndarray } from "./schema";

export interface ModelLike {
  get(name: string): any;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void;
  /** Write back (anywidget's model; the report's in-page model keeps it in the page). */
  set?(name: string, value: unknown): void;
  save_changes?(): void;
}

export interface LayerInfo {
  id: number;
  name: string;
  /** "encoder" or "decoder" in an encoder-decoder; the single stack's role, or null, otherwise. */
  stack?: string | null;
  skipped_reason: string | null;
}

export interface ScatterLayer {
  name: string;
  n: number;
  n_total: number;
  offset: number;
  x0: number;
  x1: number;
  y0: number;
  y1: number;
  ratio_lo: number;
  ratio_hi: number;
  seq_offset: number;
  basin_offset: number;
  basin_runs: number;
  n_basins: number;
  top_basins: number;
}

/** One row of the membership evaluation (hopaudit/widget.py, _membership): a score (per layer
 *  for the geometric score), its AUROC with a 95 % bootstrap interval, and where its ROC curve
 *  sits in roc_points. */
export interface MembershipRow {
  score: string;
  layer: string | number | null;
  auroc: number | null;
  auroc_lo: number | null;
  auroc_hi: number | null;
  tpr_at_1pct_fpr: number | null;
  tpr_at_5pct_fpr: number | null;
  n_members: number | null;
  n_nonmembers: number | null;
  roc_offset?: number;
  roc_n?: number;
}

/** What the validity study measured the geometric panels to predict (hopaudit/views/validity.py):
 *  one sentence per panel ("distances", "radii", "floor", "basins"), where it is described, and
 *  on what grid; empty where no validity data is shipped. */
export interface Validity {
  lines?: Record<string, string>;
  doc?: string;
  grid?: string;
  date?: string;
  version?: string;
}

export interface Summary {
  [key: string]: string | number | boolean | null | undefined;
}

export class AuditState {
  summary: Summary;
  layers: LayerInfo[];
  columns: string[];
  stats: Float64Array;
  fractions: number[];
  bins: number;
  histRange: Float64Array;
  histCounts: Uint32Array;
  histMedians: Float64Array;
  histLog: Uint8Array;
  scatter: ScatterLayer[];
  xy: Uint16Array;
  basin: Uint16Array;
  ratio: Uint8Array;
  basinSizes: Uint32Array;
  seq: Uint16Array | Uint32Array;
  nSequences: number;
  sequenceIds: Uint32Array;
  seqCe: Float64Array;
  textBytes: Uint8Array;
  textOffsets: Uint32Array;
  sampleSeq: Uint32Array;
  sampleValues: Float32Array;
  textChars: number;
  floorCurve: Float32Array;
  sampleColumns: string[];
  membership: MembershipRow[];
  membershipNote: string | null;
  rocPoints: Float32Array;
  validity: Validity;
  private decoder = new TextDecoder();
  private colIndex = new Map<string, number>();

  constructor(model: ModelLike) {
    this.summary = model.get("summary") ?? {};
    this.layers = model.get("layer_info") ?? [];
    this.columns = model.get("layer_columns") ?? [];
    this.columns.forEach((c, i) => this.colIndex.set(c, i));
    this.stats = ndarray(model.get("layer_stats"), "float64");
    this.fractions = model.get("hist_fractions") ?? [];
    this.bins = model.get("hist_bins") ?? 0;
    this.histRange = ndarray(model.get("hist_range"), "float64");
    this.histCounts = ndarray(model.get("hist_counts"), "uint32");
    this.histMedians = ndarray(model.get("hist_medians"), "float64");
    this.histLog = ndarray(model.get("hist_log"), "uint8");
    this.scatter = model.get("scatter_layers") ?? [];
    this.xy = ndarray(model.get("scatter_xy"), "uint16");
    this.basin = ndarray(model.get("scatter_basin"), "uint16");
    this.ratio = ndarray(model.get("scatter_ratio"), "uint8");
    this.basinSizes = ndarray(model.get("scatter_basin_sizes"), "uint32");
    this.seq = ndarray(model.get("scatter_seq"), "uint16", "uint32");
    this.nSequences = model.get("n_sequences") ?? 0;
    this.sequenceIds = ndarray(model.get("sequence_ids"), "uint32");
    this.seqCe = ndarray(model.get("seq_ce"), "float16");
    this.textBytes = ndarray(model.get("text_bytes"), "uint8");
    this.textOffsets = ndarray(model.get("text_offsets"), "uint32");
    this.sampleSeq = ndarray(model.get("sample_seq"), "uint32");
    this.sampleValues = ndarray(model.get("sample_values"), "float32");
    this.textChars = model.get("text_chars") ?? 0;
    this.floorCurve = ndarray(model.get("floor_curve"), "float32");
    this.sampleColumns = model.get("sample_columns") ?? [];
    this.membership = model.get("membership") ?? [];
    this.membershipNote = model.get("membership_note") ?? null;
    this.rocPoints = ndarray(model.get("roc_points"), "float32");
    this.validity = model.get("validity") ?? {};
  }

  /** The loss-floor curve of a layer, computed in Python (hopaudit/widget.py, _floor_curves):
   *  (r, F) of the volume form with r increasing; F may be +Infinity; empty when not measured. */
  floor(layer: number): { r: number; F: number }[] {
    const steps = this.nLayers ? this.floorCurve.length / (2 * this.nLayers) : 0;
    const out: { r: number; F: number }[] = [];
    for (let k = 0; k < steps; k++) {
      const at = 2 * (layer * steps + k);
      const r = this.floorCurve[at];
      const F = this.floorCurve[at + 1];
      if (r > 0) out.push({ r, F: Number.isNaN(F) ? Infinity : F });
    }
    return out;
  }

  /** The ROC curve of a membership row as (fpr, tpr) points; empty when none was sent. */
  roc(row: MembershipRow): { fpr: number; tpr: number }[] {
    const out: { fpr: number; tpr: number }[] = [];
    if (row.roc_offset === undefined || !row.roc_n) return out;
    for (let k = 0; k < row.roc_n; k++) {
      const at = 2 * (row.roc_offset + k);
      out.push({ fpr: this.rocPoints[at], tpr: this.rocPoints[at + 1] });
    }
    return out;
  }

  /** Whether the layers form more than one stack (an encoder-decoder). */
  get multiStack(): boolean {
    return new Set(this.layers.map((l) => l.stack ?? null)).size > 1;
  }

  /** The stack to group a layer under in menus and charts, when there is more than one. */
  groupOf(layer: number): string | null {
    return this.multiStack ? this.layers[layer]?.stack ?? null : null;
  }

  get nLayers(): number {
    return this.layers.length;
  }

  /** A per-layer number (NaN when missing or the layer was skipped). */
  stat(layer: number, column: string): number {
    const j = this.colIndex.get(column);
    if (j === undefined) return NaN;
    const v = this.stats[layer * this.columns.length + j];
    return v === undefined ? NaN : v;
  }

  column(column: string): number[] {
    return this.layers.map((_, i) => this.stat(i, column));
  }

  /** The display id of a sequence (its index in the audit's samples table). */
  sequenceId(index: number): number {
    return this.sequenceIds.length ? this.sequenceIds[index] : index;
  }

  text(index: number): string {
    if (index < 0 || index + 1 >= this.textOffsets.length) return "";
    const a = this.textOffsets[index];
    const b = this.textOffsets[index + 1];
    return this.decoder.decode(this.textBytes.subarray(a, b));
  }

  /** Counts of layer `layer`, fraction index `f`, with the bin edges. */
  histogram(layer: number, f: number): { lo: number; hi: number; log: boolean; edges: Float64Array; counts: Uint32Array } {
    const lo = this.histRange[2 * layer];
    const hi = this.histRange[2 * layer + 1];
    const log = this.histLog[layer] === 1;
    const edges = new Float64Array(this.bins + 1);
    for (let b = 0; b <= this.bins; b++) {
      edges[b] = log ? lo * (hi / lo) ** (b / this.bins) : lo + ((hi - lo) * b) / this.bins;
    }
    const start = (layer * this.fractions.length + f) * this.bins;
    return { lo, hi, log, edges, counts: this.histCounts.subarray(start, start + this.bins) };
  }

  median(layer: number, f: number): number {
    return this.histMedians[layer * this.fractions.length + f];
  }

  layerIndex(name: string): number {
    return this.layers.findIndex((l) => l.name === name);
  }

  /** Decoded points of one scatter layer: coordinates in data units. */
  points(s: ScatterLayer) {
    const n = s.n;
    const x = new Float32Array(n);
    const y = new Float32Array(n);
    const sx = (s.x1 - s.x0) / 65535;
    const sy = (s.y1 - s.y0) / 65535;
    const base = s.offset;
    for (let i = 0; i < n; i++) {
      x[i] = s.x0 + this.xy[2 * (base + i)] * sx;
      y[i] = s.y0 + this.xy[2 * (base + i) + 1] * sy;
    }
    return {
      x,
      y,
      basin: this.basin.subarray(base, base + n),
      ratio: this.ratio.subarray(base, base + n),
      seq: this.seq.subarray(s.seq_offset, s.seq_offset + n),
      basinSizes: this.expandRuns(this.basinSizes.subarray(s.basin_offset, s.basin_offset + 2 * s.basin_runs), s.n_basins),
    };
  }

  /** (value, run) pairs -> the values, each repeated run times. */
  private expandRuns(pairs: Uint32Array, n: number): Uint32Array {
    const out = new Uint32Array(n);
    let k = 0;
    for (let j = 0; j + 1 < pairs.length; j += 2) {
      out.fill(pairs[j], k, Math.min(n, k + pairs[j + 1]));
      k += pairs[j + 1];
    }
    return out;
  }

  ratioValue(s: ScatterLayer, q: number): number {
    if (q === 255) return NaN;
    return s.ratio_lo + (q / 254) * (s.ratio_hi - s.ratio_lo);
  }
}
