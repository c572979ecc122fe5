// A notebook output of an audit is two outputs: a static snapshot (hopaudit/snapshot.py) for
// whatever shows the notebook without a kernel, then this live view. The view hides the
// snapshot that carries its token (the `snapshot_id` trait), wherever the front end put it.
import type { ModelLike } from "./state";

function hide(token: string): void {
  if (!token) return;
  for (const el of document.querySelectorAll<HTMLElement>("[data-hopaudit-snapshot]")) {
    if (el.getAttribute("data-hopaudit-snapshot") !== token) continue;
    el.style.display = "none";
    // JupyterLab and Notebook 7: the output's row too (its prompt and margins)
    const row = el.closest<HTMLElement>(".jp-OutputArea-child");
    if (row) row.style.display = "none";
  }
}

export function hideSnapshot(model: ModelLike): () => void {
  const run = () => hide(String(model.get("snapshot_id") ?? ""));
  run();
  // the snapshot may be attached after the view (front ends render outputs asynchronously)
  const timer = setTimeout(run, 500);
  model.on("change:snapshot_id", run);
  return () => {
    clearTimeout(timer);
    model.off("change:snapshot_id", run);
  };
}
