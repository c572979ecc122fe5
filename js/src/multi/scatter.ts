// The basins scatter of the single view, for views that show several at once. Every instance
// draws through the one shared regl renderer of panels/basins.ts (one WebGL context for the
// whole view, however many scatters). The single view probes WebGL once per page with a
// throwaway context; here the shared renderer's own start is the probe, so N scatters make
// exactly one WebGL context, and a failure shows the same message as the single view.
import { BasinsPanel, NO_WEBGL } from "../panels/basins";
import { h, observeSize } from "../util";
import type { Context } from "../panels/base";

export class SharedScatterPanel extends BasinsPanel {
  private started = false;

  constructor(ctx: Context, name: string, title: string) {
    super(ctx);
    this.el.setAttribute("data-panel", name);
    this.el.setAttribute("aria-label", title);
    const h3 = this.header.querySelector("h3");
    if (h3) h3.textContent = title;
  }

  get context(): Context {
    return this.ctx;
  }

  render(): void {
    if (!this.ctx.state.scatter.length) {
      super.render(); // the "no UMAP" message; returns before any WebGL probe
      return;
    }
    if (this.sp) {
      this.applyTheme();
      this.draw();
      return;
    }
    if (this.started) return;
    this.started = true;
    this.box.addEventListener("keydown", (e) => this.onKey(e));
    this.cleanups.push(
      observeSize(this.box, (w, hgt) => {
        if (w <= 0 || hgt <= 0) return;
        this.size = [w, hgt];
        if (this.sp) {
          this.sp.set({ width: w, height: hgt });
          return;
        }
        if (this.box.querySelector("[data-webgl]")) return;
        this.create();
        if (!this.sp) {
          this.box.replaceChildren(h("div", { class: "ha-message", "data-webgl": "missing", text: NO_WEBGL }));
          this.markReady();
        }
      }),
    );
  }

  /** Point the panel at another audit's state (the timeline's step) and redraw. */
  setState(state: Context["state"]): void {
    this.ctx.state = state;
    this.el.removeAttribute("data-ready");
    if (this.sp) this.draw();
    else if (!state.scatter.length) super.render();
  }
}
