// Read the state blob of an exported HTML report (see hopaudit/report.py: MAGIC "HAR1",
// uint32 header length, JSON header, 8-byte aligned buffers; gzip, then base64).
import { gunzipSync } from "fflate";

export function unpackReport(base64: string): Record<string, unknown> {
  const bin = atob(base64.trim());
  const gz = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) gz[i] = bin.charCodeAt(i);
  const raw = gunzipSync(gz);
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
