// What the single view (index.ts) and the multi views (multi/view.ts) share once mounted:
// drawing the panels (a panel that throws shows its error, the others still draw), following
// the page's theme, rebuilding when the model's data traits change, and undoing all of it.
import type { Panel } from "./panels/base";
import type { ModelLike } from "./state";
import { type Theme, observeTheme, readTheme } from "./theme";
import { h } from "./util";

/** Draw one panel; if it throws, put the error in its body instead. False when it threw. */
export function drawPanel(p: Panel): boolean {
  try {
    p.render();
    return true;
  } catch (err) {
    p.body.replaceChildren(h("pre", { class: "ha-error", text: `This panel failed to draw: ${String(err)}` }));
    console.error("hopaudit:", p.name, err);
    return false;
  }
}

export interface Binding {
  /** The model traits whose change rebuilds the view. */
  traits: string[];
  /** The theme the view is drawn with now. */
  theme(): Theme;
  /** The page's theme changed (dark, background or text colour): take it and redraw. */
  onTheme(theme: Theme): void;
  /** A data trait changed: rebuild the view. */
  onChange(): void;
}

/** Follow `root`'s theme and the model's data traits; `view.destroy` then undoes both,
 * destroys the panels and removes the root. */
export function bindView(model: ModelLike, root: HTMLElement, view: { panels: Panel[]; destroy(): void }, b: Binding): void {
  let cleanups: (() => void)[] = [];
  const onTheme = () => {
    const theme = readTheme(root);
    const t = b.theme();
    if (theme.dark === t.dark && theme.bg === t.bg && theme.fg === t.fg) return;
    b.onTheme(theme);
  };
  cleanups.push(observeTheme(onTheme));
  const onChange = () => b.onChange();
  for (const t of b.traits) model.on(`change:${t}`, onChange);
  cleanups.push(() => {
    for (const t of b.traits) model.off(`change:${t}`, onChange);
  });
  view.destroy = () => {
    for (const p of view.panels) p.destroy();
    for (const c of cleanups) c();
    cleanups = [];
    root.remove();
  };
}
