// Small DOM and formatting helpers shared by the panels.

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

export function fmt(v: number | null | undefined, digits = 3): string {
  if (v == null || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}

/** A loss floor in nats, written as what it means when it is infinite or astronomically large:
 * F = log Z + 1/Z passes 1e100 only when Z < 1e-100, and overflows when Z < 1e-308. */
export function fmtFloor(v: number | null | undefined): string {
  if (v == null || Number.isNaN(v)) return "–";
  if (v === Infinity) return "no finite floor: Z < 1e-308 (over-packed)";
  if (v >= 1e100) return "> 1e100 nats: Z < 1e-100 (over-packed)";
  return fmt(v);
}

/** The floor band [F, F + log l] in words: one phrase when its low end is already beyond 1e100. */
export function fmtBand(lo: number, hi: number): string {
  if (lo === Infinity || lo >= 1e100) return `floor ${fmtFloor(lo)}`;
  return `floor band [${fmt(lo)}, ${fmtFloor(hi)}] nats`;
}

export function fmtInt(v: number | null | undefined): string {
  if (v == null || Number.isNaN(v)) return "–";
  return Math.round(v).toLocaleString("en-US");
}

export function fmtCount(v: number | null | undefined): string {
  if (v == null || !Number.isFinite(v)) return "–";
  const units: [number, string][] = [
    [1e12, "T"],
    [1e9, "B"],
    [1e6, "M"],
    [1e3, "K"],
  ];
  for (const [u, s] of units) if (Math.abs(v) >= u) return `${Number((v / u).toPrecision(3))}${s}`;
  return String(Math.round(v));
}

export function fmtSeconds(v: number | null | undefined): string {
  if (v == null || !Number.isFinite(v)) return "–";
  if (v < 60) return `${v.toPrecision(3)} s`;
  const m = Math.floor(v / 60);
  return `${m} min ${Math.round(v - 60 * m)} s`;
}

/** Call `cb(width, height)` when the element's content box changes size (debounced to a frame). */
export function observeSize(el: Element, cb: (w: number, h: number) => void): () => void {
  let frame = 0;
  let last = [-1, -1];
  const ro = new ResizeObserver((entries) => {
    const r = entries[entries.length - 1].contentRect;
    const w = Math.floor(r.width);
    const hgt = Math.floor(r.height);
    if (w === last[0] && hgt === last[1]) return;
    last = [w, hgt];
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(() => cb(w, hgt));
  });
  ro.observe(el);
  return () => {
    cancelAnimationFrame(frame);
    ro.disconnect();
  };
}

/** A labelled native <select> (keyboard usable by construction). */
export interface Option {
  value: string;
  label: string;
  disabled?: boolean;
  /** Options with a group are shown under it (an <optgroup>), e.g. an encoder-decoder's stacks. */
  group?: string | null;
}

export function select(label: string, options: Option[], value: string, onChange: (v: string) => void): HTMLLabelElement {
  const s = h("select", {});
  const groups = new Map<string, HTMLOptGroupElement>();
  for (const o of options) {
    const opt = h("option", { value: o.value, text: o.label });
    if (o.disabled) opt.disabled = true;
    if (o.group) {
      let g = groups.get(o.group);
      if (!g) {
        g = h("optgroup", {}) as HTMLOptGroupElement;
        g.label = o.group;
        groups.set(o.group, g);
        s.append(g);
      }
      g.append(opt);
    } else {
      s.append(opt);
    }
  }
  s.value = value;
  s.addEventListener("change", () => onChange(s.value));
  return h("label", { class: "ha-control" }, h("span", { text: label }), s);
}
