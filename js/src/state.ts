// Read the widget's traits (JSON scalars + little-endian binary arrays) into typed arrays.
// The layout of every array is documented in hopaudit/widget.py (STATE_LAYOUT).

export interface ModelLike {
  get(name: string): any;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event?: string | null, cb?: ((...args: any[]) => void) | null): void;
}

export interface LayerInfo {
  id: number;
  name: string;
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

export interface Summary {
  [key: string]: string | number | boolean | null | undefined;
}

type TypedCtor<T> = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): T;
  new (length: number): T;
  BYTES_PER_ELEMENT: number;
};

/** View bytes (DataView, ArrayBuffer, typed array) as a typed array, copying if misaligned. */
export function typed<T extends ArrayBufferView>(value: unknown, Ctor: TypedCtor<T>): T {
  if (value == null) return new Ctor(0);
  let buffer: ArrayBufferLike;
  let offset = 0;
  let length: number;
  if (value instanceof ArrayBuffer) {
    buffer = value;
    length = value.byteLength;
  } else if (ArrayBuffer.isView(value)) {
    buffer = value.buffer;
    offset = value.byteOffset;
    length = value.byteLength;
  } else {
    return new Ctor(0);
  }
  const size = Ctor.BYTES_PER_ELEMENT;
  const n = Math.floor(length / size);
  if (offset % size === 0) return new Ctor(buffer, offset, n);
  const copy = new Uint8Array(n * size);
  copy.set(new Uint8Array(buffer, offset, n * size));
  return new Ctor(copy.buffer, 0, n);
}

/** IEEE 754 half precision to a JS number (Float16Array is not in every browser yet). */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

export function decodeHalf(value: unknown): Float64Array {
  const raw = typed(value, Uint16Array);
  const out = new Float64Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = halfToFloat(raw[i]);
  return out;
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
  private decoder = new TextDecoder();
  private colIndex = new Map<string, number>();

  constructor(model: ModelLike) {
    this.summary = model.get("summary") ?? {};
    this.layers = model.get("layer_info") ?? [];
    this.columns = model.get("layer_columns") ?? [];
    this.columns.forEach((c, i) => this.colIndex.set(c, i));
    this.stats = typed(model.get("layer_stats"), Float64Array);
    this.fractions = model.get("hist_fractions") ?? [];
    this.bins = model.get("hist_bins") ?? 0;
    this.histRange = typed(model.get("hist_range"), Float64Array);
    this.histCounts = typed(model.get("hist_counts"), Uint32Array);
    this.histMedians = typed(model.get("hist_medians"), Float64Array);
    this.histLog = typed(model.get("hist_log"), Uint8Array);
    this.scatter = model.get("scatter_layers") ?? [];
    this.xy = typed(model.get("scatter_xy"), Uint16Array);
    this.basin = typed(model.get("scatter_basin"), Uint16Array);
    this.ratio = typed(model.get("scatter_ratio"), Uint8Array);
    this.basinSizes = typed(model.get("scatter_basin_sizes"), Uint32Array);
    this.seq = model.get("scatter_seq_bytes") === 2 ? typed(model.get("scatter_seq"), Uint16Array) : typed(model.get("scatter_seq"), Uint32Array);
    this.nSequences = model.get("n_sequences") ?? 0;
    this.sequenceIds = typed(model.get("sequence_ids"), Uint32Array);
    this.seqCe = decodeHalf(model.get("seq_ce"));
    this.textBytes = typed(model.get("text_bytes"), Uint8Array);
    this.textOffsets = typed(model.get("text_offsets"), Uint32Array);
    this.sampleSeq = typed(model.get("sample_seq"), Uint32Array);
    this.sampleValues = typed(model.get("sample_values"), Float32Array);
    this.textChars = model.get("text_chars") ?? 0;
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
