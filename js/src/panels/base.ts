// What every panel shares: its element (data-panel=NAME), the decoded state, the theme.
import type { AuditState, ModelLike } from "../state";
import type { Theme } from "../theme";
import { h, observeSize } from "../util";

export interface Context {
  state: AuditState;
  theme: Theme;
  /** Mark a panel drawn (sets data-ready on it; the root once all are). */
  ready(panel: Panel): void;
  /** The widget's model, where a panel writes back (the basins view's `selection`). */
  model?: ModelLike;
}

export abstract class Panel {
  el: HTMLElement;
  body: HTMLElement;
  header: HTMLElement;
  protected cleanups: (() => void)[] = [];
  /** The last width seen by `redrawOnResize` (0 until the first observation). */
  width = 0;

  constructor(
    readonly name: string,
    title: string,
    protected ctx: Context,
    wide = false,
  ) {
    this.header = h("header", {}, h("h3", { text: title }));
    this.body = h("div", { class: "ha-body" });
    this.el = h("section", { class: `ha-panel${wide ? " ha-wide" : ""}`, "data-panel": name, "aria-label": title });
    this.el.append(this.header, this.body);
  }

  /** Draw (again) with the current theme and sizes. */
  abstract render(): void;

  /** Draw again whenever `el` settles at a new, non-zero width (kept in `this.width`). */
  protected redrawOnResize(el: Element): void {
    this.cleanups.push(
      observeSize(el, (w) => {
        if (w > 0 && w !== this.width) {
          this.width = w;
          this.render();
        }
      }),
    );
  }

  markReady(): void {
    this.el.setAttribute("data-ready", "true");
    this.ctx.ready(this);
  }

  destroy(): void {
    for (const c of this.cleanups.splice(0)) c();
  }
}

/** The panels that carry a validity line (hopaudit/views/validity.py: PANELS, and the
 *  membership panel's line on the per-sequence geometric scores). */
export const VALIDITY_PANELS = ["distances", "radii", "floor", "basins", "membership"];

/** The line a geometric panel carries: what the validity study measured its quantity to
 *  predict, or that it predicted nothing measurable (hopaudit/views/validity.py), with where the
 *  study is described; null where the state has no line for this panel. */
export function validityNote(ctx: Context, panel: string): HTMLElement | null {
  if (!VALIDITY_PANELS.includes(panel)) return null;
  const v = ctx.state.validity ?? {};
  const line = v.lines?.[panel];
  if (!line) return null;
  const doc = v.doc ?? "docs/validity.md";
  return h(
    "p",
    { class: "ha-note ha-validity", "data-validity": panel, title: v.grid ? `Measured on ${v.grid}` : "" },
    h("b", { text: "Validity study: " }),
    `${line} See `,
    h("code", { text: doc }),
    " in hopaudit's repository.",
  );
}
