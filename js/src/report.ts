// Read the state of an exported HTML report (see hopaudit/report.py, pack_state: MAGIC "HAR1",
// uint32 header length, JSON header, 8-byte aligned buffers). The page's bootstrap has already
// decoded and gunzipped the payload; these are the state's bytes.
export function unpackReport(data: ArrayBuffer | Uint8Array): Record<string, unknown> {
  const raw = data instanceof Uint8Array ? data : new Uint8Array(data);
  const magic = String.fromCharCode(raw[0], raw[1], raw[2], raw[3]);
  if (magic !== "HAR1") throw new Error("not a hopaudit report payload");
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const n = dv.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(raw.subarray(8, 8 + n)));
  const body = 8 + n;
  const state: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(header)) {
    const ref = value as { $buffer?: [number, number] } | null;
    if (ref && typeof ref === "object" && !Array.isArray(ref) && Array.isArray(ref.$buffer) && Object.keys(ref).length === 1) {
      const [start, length] = ref.$buffer;
      // A fresh ArrayBuffer per array (what anywidget hands a view): aligned and independent.
      const copy = raw.slice(body + start, body + start + length);
      state[key] = new DataView(copy.buffer, 0, length);
    } else {
      state[key] = value;
    }
  }
  return state;
}
