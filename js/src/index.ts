// The anywidget entry: render({ model, el }) draws the eight panels of an audit (the last, the
// ask box, only with a kernel: hopaudit/views/widget.py's answer_queries).
import { AskPanel } from "./panels/ask";
import { BasinsPanel } from "./panels/basins";
import { type Context, type Panel, validityNote } from "./panels/base";
import { DistancesPanel } from "./panels/distances";
import { FloorPanel } from "./panels/floor";
import { MembershipPanel } from "./panels/membership";
import { RadiiPanel } from "./panels/radii";
import { SamplesPanel } from "./panels/samples";
import { SummaryPanel } from "./panels/summary";
import { AuditState, type ModelLike } from "./state";
import { readTheme } from "./theme";
import { h } from "./util";
import { bindView, drawPanel } from "./lifecycle";
import { mountCompare } from "./compare";
import { mountTimeline } from "./timeline";
import { hideSnapshot } from "./snapshot";
import TRAITS from "../../hopaudit/views/traits.json";

// The data traits, one list for Python and TypeScript (hopaudit/views/traits.json).
const DATA_TRAITS = Object.keys(TRAITS.audit);

export interface View {
  panels: Panel[];
  destroy(): void;
}

export function mount(model: ModelLike, el: HTMLElement): View {
  // Several audits side by side, or a training run on a slider: their own views.
  const kind = model.get("kind") ?? "audit";
  if (kind === "compare") return mountCompare(model, el);
  if (kind === "timeline") return mountTimeline(model, el);
  const root = h("div", { class: "hopaudit ha-auto" });
  el.append(root);
  const view: View = { panels: [], destroy: () => undefined };

  const build = () => {
    for (const p of view.panels) p.destroy();
    root.replaceChildren();
    root.removeAttribute("data-ready");
    const state = new AuditState(model);
    const ctx: Context = {
      state,
      model,
      theme: readTheme(root),
      ready: () => {
        if (view.panels.length && view.panels.every((p) => p.el.getAttribute("data-ready") === "true")) {
          if (!root.hasAttribute("data-ready")) root.setAttribute("data-ready", "true");
        }
      },
    };
    const basins = new BasinsPanel(ctx);
    const panels: Panel[] = [
      new SummaryPanel(ctx),
      new DistancesPanel(ctx),
      new FloorPanel(ctx),
      basins,
      new RadiiPanel(ctx),
      new MembershipPanel(ctx),
      new SamplesPanel(ctx),
      new AskPanel(ctx, basins),
    ];
    view.panels = panels;
    // Each geometric panel says what the validity study measured it to predict (docs/validity.md).
    for (const p of panels) {
      const note = validityNote(ctx, p.name);
      if (note) p.body.append(note);
    }
    const grid = h("div", { class: "ha-grid" }, ...panels.map((p) => p.el));
    root.append(grid);
    for (const p of panels) drawPanel(p);
    (root as any).__hopaudit = view;
    (el as any).__hopaudit = view;
    return ctx;
  };

  let ctx = build();
  bindView(model, root, view, {
    traits: DATA_TRAITS,
    theme: () => ctx.theme,
    onTheme: (theme) => {
      ctx.theme = theme;
      for (const p of view.panels) p.render();
    },
    onChange: () => {
      ctx = build();
    },
  });
  return view;
}

function render({ model, el }: { model: ModelLike; el: HTMLElement }) {
  const view = mount(model, el);
  const unhide = hideSnapshot(model);
  return () => {
    unhide();
    view.destroy();
  };
}

export default { render };

export { unpackReport } from "./report";
