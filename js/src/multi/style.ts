// Styles of the compare and timeline views, on top of the single view's widget.css (same
// variables, so the host's theme applies). Injected once per view root.
const CSS = `
.hopaudit .ha-members { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 8px; }
.hopaudit .ha-members > .ha-panel { background: var(--ha-bg); border-top: 3px solid var(--ha-member, var(--ha-border)); padding: 6px 8px 8px; }
.hopaudit .ha-members > .ha-panel h3 { font-size: 12.5px; }
.hopaudit .ha-members .ha-scatter { max-height: 420px; min-height: 220px; }
.hopaudit .ha-swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
.hopaudit table.ha-compare td, .hopaudit table.ha-compare th { white-space: nowrap; }
.hopaudit table.ha-compare td.ha-num { text-align: right; }
.hopaudit .ha-slider { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 14px; }
.hopaudit .ha-slider input[type=range] { flex: 1 1 260px; min-width: 160px; accent-color: var(--ha-accent); }
.hopaudit .ha-slider .ha-step { font-size: 15px; font-weight: 600; font-variant-numeric: tabular-nums; min-width: 7em; }
.hopaudit .ha-facts { display: flex; flex-wrap: wrap; gap: 4px 14px; color: var(--ha-muted); font-size: 12px; font-variant-numeric: tabular-nums; }
.hopaudit .ha-facts b { color: var(--ha-fg); font-weight: 600; }
`;

export function injectStyle(root: HTMLElement): void {
  const style = document.createElement("style");
  style.setAttribute("data-hopaudit", "multi");
  style.textContent = CSS;
  root.prepend(style);
}
