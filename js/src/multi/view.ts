// What the compare and timeline views share: the root element, theme following, the readiness
// signal (data-ready on the root once every top-level panel is drawn), rebuilding when the
// data traits change, and a panel that groups one sub-panel per audit.
import type { Context, Panel } from "../panels/base";
import { Panel as BasePanel } from "../panels/base";
import type { ModelLike } from "../state";
import { type Theme, readTheme } from "../theme";
import { h } from "../util";
import { bindView, drawPanel } from "../lifecycle";
import { Members } from "./members";
import { injectStyle } from "./style";

export interface View {
  panels: Panel[];
  destroy(): void;
  [key: string]: unknown;
}

/** The frame a multi view draws in: shared theme and readiness, and every context made. */
export class Frame {
  theme: Theme;
  contexts: Context[] = [];
  panels: Panel[] = [];

  constructor(
    readonly root: HTMLElement,
    readonly members: Members,
  ) {
    this.theme = readTheme(root);
  }

  /** A panel context for member `i` (its decoded state), sharing this frame's theme. */
  context(i: number, onReady?: (p: Panel) => void): Context {
    const ctx: Context = {
      state: this.members.state(i),
      theme: this.theme,
      ready: (p) => {
        onReady?.(p);
        this.ready();
      },
    };
    this.contexts.push(ctx);
    return ctx;
  }

  ready(): void {
    if (this.panels.length && this.panels.every((p) => p.el.getAttribute("data-ready") === "true")) {
      if (!this.root.hasAttribute("data-ready")) this.root.setAttribute("data-ready", "true");
    }
  }

  colour(i: number): string {
    return this.theme.categorical[i % this.theme.categorical.length];
  }
}

/** A panel of one chart with a note under it, drawn again when the chart's width changes. */
export abstract class ChartPanel extends BasePanel {
  chart = h("div", { class: "ha-chart" });
  note = h("p", { class: "ha-note" });

  constructor(name: string, title: string, ctx: Context) {
    super(name, title, ctx);
    this.body.append(this.chart, this.note);
    this.redrawOnResize(this.chart);
  }
}

/** A panel holding one sub-panel per audit side by side; ready when all of them are. */
export class GroupPanel extends BasePanel {
  children: Panel[] = [];
  grid = h("div", { class: "ha-members" });

  constructor(name: string, title: string, ctx: Context, note?: string) {
    super(name, title, ctx, true);
    this.body.append(this.grid);
    if (note) this.body.append(h("p", { class: "ha-note", text: note }));
  }

  add(child: Panel, label: string, colour: string, index: number): void {
    child.el.setAttribute("data-member", String(index));
    child.el.style.setProperty("--ha-member", colour);
    const h3 = child.header.querySelector("h3");
    if (h3) h3.replaceChildren(h("span", { class: "ha-swatch", style: `background:${colour}` }), label);
    this.children.push(child);
    this.grid.append(child.el);
  }

  childReady(): void {
    if (this.children.every((c) => c.el.getAttribute("data-ready") === "true")) this.markReady();
  }

  render(): void {
    for (const c of this.children) drawPanel(c);
    if (!this.children.length) this.markReady();
  }

  destroy(): void {
    for (const c of this.children) c.destroy();
    super.destroy();
  }
}

/** Mount a multi-audit view: `build(frame)` makes the panels; rebuilt when data traits change. */
export function mountMulti(
  model: ModelLike,
  el: HTMLElement,
  kind: string,
  dataTraits: string[],
  build: (frame: Frame, view: View) => Panel[],
): View {
  const root = h("div", { class: "hopaudit ha-auto", "data-kind": kind });
  el.append(root);
  const view: View = { panels: [], destroy: () => undefined };
  let frame: Frame;

  const make = () => {
    for (const p of view.panels) p.destroy();
    root.replaceChildren();
    injectStyle(root);
    root.removeAttribute("data-ready");
    frame = new Frame(root, new Members(model));
    const panels = build(frame, view);
    frame.panels = panels;
    view.panels = panels;
    root.append(h("div", { class: "ha-grid" }, ...panels.map((p) => p.el)));
    for (const p of panels) if (!drawPanel(p)) p.markReady();
    (root as any).__hopaudit = view;
    (el as any).__hopaudit = view;
  };
  make();

  bindView(model, root, view, {
    traits: dataTraits,
    theme: () => frame.theme,
    onTheme: (theme) => {
      frame.theme = theme;
      for (const c of frame.contexts) c.theme = theme;
      for (const p of view.panels) p.render();
    },
    onChange: () => make(),
  });
  return view;
}
