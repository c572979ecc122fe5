// Colours resolved from the widget root's CSS variables (which follow JupyterLab / VS Code).

export interface Theme {
  dark: boolean;
  bg: string;
  panel: string;
  fg: string;
  muted: string;
  border: string;
  accent: string;
  categorical: string[];
  other: string;
  fractions: string[];
  lines: { rStar: string; rHat: string; rC: string; ce: string; floor: string; chinchilla: string };
}

const TABLEAU = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#17becf",
  "#8cd17d", "#d37295", "#a0cbe8", "#ffbe7d", "#b6992d",
  "#86bcb6", "#f1ce63", "#d4a6c8", "#fabfd2", "#79706e",
];

/** Parse any CSS colour into [r, g, b, a] in 0..1 by letting the browser resolve it. */
export function toRgba(color: string): [number, number, number, number] {
  const probe = document.createElement("canvas").getContext("2d");
  if (!probe) return [1, 1, 1, 1];
  probe.fillStyle = "#000";
  probe.fillStyle = color;
  const c = probe.fillStyle as string;
  if (c.startsWith("#")) {
    const v = parseInt(c.slice(1, 7), 16);
    return [((v >> 16) & 255) / 255, ((v >> 8) & 255) / 255, (v & 255) / 255, 1];
  }
  const m = c.match(/rgba?\(([^)]+)\)/);
  if (!m) return [1, 1, 1, 1];
  const p = m[1].split(",").map((s) => parseFloat(s));
  return [p[0] / 255, p[1] / 255, p[2] / 255, p.length > 3 ? p[3] : 1];
}

export function luminance(color: string): number {
  const [r, g, b] = toRgba(color);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

export function readTheme(root: HTMLElement): Theme {
  const cs = getComputedStyle(root);
  const v = (name: string, fallback: string) => cs.getPropertyValue(name).trim() || fallback;
  const bg = cs.backgroundColor && cs.backgroundColor !== "rgba(0, 0, 0, 0)" ? cs.backgroundColor : v("--ha-bg", "#fff");
  const dark = luminance(bg) < 0.45;
  return {
    dark,
    bg,
    panel: v("--ha-panel", bg),
    fg: v("--ha-fg", dark ? "#e6edf3" : "#1f2328"),
    muted: v("--ha-muted", dark ? "#9198a1" : "#656d76"),
    border: v("--ha-border", dark ? "#30363d" : "#d0d7de"),
    accent: v("--ha-accent", dark ? "#4493f8" : "#0969da"),
    categorical: TABLEAU,
    other: dark ? "#5a6068" : "#c4c8cc",
    fractions: dark
      ? ["#3b5f8a", "#4f7fb8", "#6fa3e0", "#a6ccff"]
      : ["#c6dbef", "#6baed6", "#2171b5", "#08306b"],
    lines: {
      rStar: dark ? "#ff8c69" : "#d1492e",
      rHat: dark ? "#6fd08c" : "#1a7f37",
      rC: dark ? "#d2a8ff" : "#8250df",
      ce: dark ? "#4493f8" : "#0969da",
      floor: dark ? "#e6edf3" : "#1f2328",
      chinchilla: dark ? "#e3b341" : "#9a6700",
    },
  };
}

/** Call `cb` when the host switches theme (JupyterLab body data attributes, VS Code body class). */
export function observeTheme(cb: () => void): () => void {
  const mo = new MutationObserver(() => cb());
  const opts = { attributes: true, attributeFilter: ["class", "data-jp-theme-light", "data-jp-theme-name", "data-theme", "style"] };
  mo.observe(document.body, opts);
  mo.observe(document.documentElement, opts);
  const mq = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  mq?.addEventListener?.("change", cb);
  return () => {
    mo.disconnect();
    mq?.removeEventListener?.("change", cb);
  };
}
