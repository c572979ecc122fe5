// The bootstrap of an exported HTML report (hopaudit/report.py inlines the built file in the
// page). No library is loaded yet: it decodes the base64 payload, gunzips it with the browser's
// own DecompressionStream, imports the bundle it carries from a Blob URL, injects the CSS and
// renders the view with a small model object standing in for the kernel.

const OLD_BROWSER = "this browser cannot decompress the report; open it in a current Chrome, Firefox, Safari or Edge";
const PAGE_MAGIC = "HAP1"; // pack_page: magic, uint32 bundle length, uint32 CSS length, bundle, CSS, pad to 8, state

type Listener = () => void;

interface ReportModel {
  get(key: string): unknown;
  set(key: string, value: unknown): void;
  on(event: string, cb: Listener): void;
  off(event?: string | null, cb?: Listener | null): void;
  save_changes(): void;
  send(): void;
}

function fail(root: HTMLElement, message: string): void {
  const box = document.createElement("pre");
  box.className = "page-error";
  box.textContent = "This report could not be drawn: " + message;
  root.append(box);
}

function fromBase64(text: string): Uint8Array {
  const binary = atob(text.trim());
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

async function gunzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** An in-page model: get/set/on/off like anywidget's, with change events on set. */
function makeModel(state: Record<string, unknown>): ReportModel {
  const listeners = new Map<string, Set<Listener>>();
  return {
    get: (key) => state[key],
    set: (key, value) => {
      state[key] = value;
      for (const cb of listeners.get("change:" + key) ?? []) cb();
    },
    on: (event, cb) => {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event)!.add(cb);
    },
    off: (event, cb) => {
      if (!event) listeners.clear();
      else if (!cb) listeners.delete(event);
      else listeners.get(event)?.delete(cb);
    },
    save_changes: () => undefined,
    send: () => undefined,
  };
}

function bindTheme(): void {
  const theme = document.getElementById("hopaudit-theme") as HTMLSelectElement | null;
  theme?.addEventListener("change", () => {
    if (theme.value) document.body.setAttribute("data-theme", theme.value);
    else document.body.removeAttribute("data-theme");
  });
}

async function main(root: HTMLElement): Promise<void> {
  bindTheme();
  if (typeof DecompressionStream !== "function") return fail(root, OLD_BROWSER);
  const data = document.getElementById("hopaudit-data");
  if (!data) throw new Error("the page holds no report payload");
  if (data.dataset.encoding !== "base64") throw new Error(`unknown payload encoding ${data.dataset.encoding}`);
  const raw = await gunzip(fromBase64(data.textContent ?? ""));
  if (String.fromCharCode(...raw.subarray(0, 4)) !== PAGE_MAGIC) throw new Error("not a hopaudit report page payload");
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const ne = dv.getUint32(4, true);
  const nc = dv.getUint32(8, true);
  const style = document.createElement("style");
  style.textContent = new TextDecoder().decode(raw.subarray(12 + ne, 12 + ne + nc));
  document.head.append(style);
  const url = URL.createObjectURL(new Blob([raw.subarray(12, 12 + ne) as BlobPart], { type: "text/javascript" }));
  const mod = await import(/* @vite-ignore */ url);
  URL.revokeObjectURL(url);
  const state = mod.unpackReport(raw.subarray(Math.ceil((12 + ne + nc) / 8) * 8));
  const model = makeModel(state);
  (window as unknown as { hopauditModel: ReportModel }).hopauditModel = model;
  await mod.default.render({ model, el: root });
}

const root = document.getElementById("hopaudit-root");
if (root) {
  main(root).catch((err: unknown) => {
    fail(root, String(err));
    console.error(err);
  });
}
