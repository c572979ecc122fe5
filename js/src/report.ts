// Read the state of an exported HTML report (see hopaudit/report.py, pack_state: MAGIC "HAR2",
// uint32 header length, JSON header, 8-byte aligned buffers, each maybe stored through filters).
// The page's bootstrap has already decoded and gunzipped the payload; these are the state's bytes.
// Each array comes back as { dtype, shape, view }, as anywidget hands it to a view.

type Filter = [string, number];

// The inverse of the byte shuffle: plane j holds byte j of every item; a short tail stays as is.
export function unshuffle(src: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(src.length);
  const m = Math.floor(src.length / size);
  for (let j = 0; j < size; j++) {
    const plane = j * m;
    for (let i = 0; i < m; i++) out[i * size + j] = src[plane + i];
  }
  out.set(src.subarray(m * size), m * size);
  return out;
}

// The inverse of delta coding, in place: running sums of little-endian unsigned integers of
// `size` bytes, modulo 2 ** (8 size) (DataView's setters wrap).
export function undelta(buf: Uint8Array, size: number): Uint8Array {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const m = Math.floor(buf.length / size);
  if (size === 1) {
    for (let i = 1; i < m; i++) buf[i] = buf[i - 1] + buf[i];
  } else if (size === 2) {
    for (let i = 1; i < m; i++) dv.setUint16(2 * i, dv.getUint16(2 * i - 2, true) + dv.getUint16(2 * i, true), true);
  } else if (size === 4) {
    for (let i = 1; i < m; i++) dv.setUint32(4 * i, dv.getUint32(4 * i - 4, true) + dv.getUint32(4 * i, true), true);
  } else if (size === 8) {
    for (let i = 1; i < m; i++) {
      dv.setBigUint64(8 * i, dv.getBigUint64(8 * i - 8, true) + dv.getBigUint64(8 * i, true), true);
    }
  } else {
    throw new Error(`delta of ${size}-byte items is not supported`);
  }
  return buf;
}

export function undoFilters(stored: Uint8Array, filters: Filter[]): Uint8Array {
  let b: Uint8Array = stored.slice(); // a fresh ArrayBuffer of its own
  for (let f = filters.length - 1; f >= 0; f--) {
    const [name, size] = filters[f];
    if (name === "shuffle") b = unshuffle(b, size);
    else if (name === "delta") b = undelta(b, size);
    else throw new Error(`unknown filter ${name}`);
  }
  return b;
}

export function unpackReport(data: ArrayBuffer | Uint8Array): Record<string, unknown> {
  const raw = data instanceof Uint8Array ? data : new Uint8Array(data);
  const magic = String.fromCharCode(raw[0], raw[1], raw[2], raw[3]);
  if (magic !== "HAR2") throw new Error("not a hopaudit report payload");
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = dv.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(raw.subarray(8, 8 + n)));
  const body = 8 + n;
  const state: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(header)) {
    const ref = value as { dtype?: string; shape?: number[]; $buffer?: [number, number]; $filters?: Filter[] } | null;
    if (ref && typeof ref === "object" && !Array.isArray(ref) && Array.isArray(ref.$buffer)) {
      const [start, length] = ref.$buffer;
      // A fresh ArrayBuffer per array (what anywidget hands a view): aligned and independent.
      const bytes = undoFilters(raw.subarray(body + start, body + start + length), ref.$filters ?? []);
      state[key] = { dtype: ref.dtype, shape: ref.shape, view: new DataView(bytes.buffer, 0, length) };
    } else {
      state[key] = value;
    }
  }
  return state;
}
