// Membership evidence (docs/theory.md §6): with held-out data, the stored sequences are the
// members and the held-out ones the non-members. Left: the ROC curve of every per-sequence score
// and of the geometric score nn / r̂ at the last layer. Right: the geometric score's AUROC per
// layer with its 95 % bootstrap interval, against the loss score's AUROC and chance (0.5).
import * as Plot from "@observablehq/plot";
import type { MembershipRow } from "../state";
import { fmt, h } from "../util";
import { type Context, Panel } from "./base";

const LABELS: Record<string, string> = {
  loss: "loss",
  zlib: "zlib",
  min_k: "Min-K%",
  min_k_pp: "Min-K%++",
  ref_loss_diff: "reference",
  geometric: "nn / r̂",
  // the geometric scores the validity study kept (hopaudit/evidence/geometric.py, KEPT_SCORES)
  nn_ratio_layers: "nn / r̂, mean of layers",
  member_vs_heldout: "nearest held-out / nearest stored",
  norm_reversed: "−‖h‖ at the last block",
  extracted: "extraction",
};

const ok = (v: number | null | undefined): v is number => typeof v === "number" && Number.isFinite(v);

export class MembershipPanel extends Panel {
  left = h("div", { class: "ha-chart ha-roc" });
  right = h("div", { class: "ha-chart ha-auroc" });
  note = h("p", { class: "ha-note" });

  constructor(ctx: Context) {
    super("membership", "Membership: stored against held-out", ctx);
    this.body.append(h("div", { class: "ha-row" }, this.left, this.right), this.note);
    this.redrawOnResize(this.body);
  }

  private label(row: MembershipRow): string {
    const name = LABELS[row.score] ?? row.score;
    return row.score === "geometric" && row.layer !== null ? `${name} (${row.layer})` : name;
  }

  render(): void {
    const { state: st, theme } = this.ctx;
    const rows = st.membership;
    if (!rows.length) {
      this.left.replaceChildren(h("div", { class: "ha-message", text: st.membershipNote ?? "This audit has no membership evaluation: pass heldout= to audit()." }));
      this.right.replaceChildren();
      this.note.textContent = "";
      this.markReady();
      return;
    }
    const common = { height: 240, marginLeft: 44, style: { background: "transparent", color: theme.fg, fontSize: "11px" } };
    const leftW = Math.max(220, this.left.clientWidth || this.width * 0.5 || 260);
    const rightW = Math.max(220, this.right.clientWidth || this.width * 0.5 || 260);
    const curves = rows.flatMap((r) => st.roc(r).map((p) => ({ ...p, score: this.label(r) })));
    const roc = Plot.plot({
      ...common,
      width: leftW,
      x: { label: "false-positive rate (held-out called stored)", domain: [0, 1], grid: true },
      y: { label: "true-positive rate", domain: [0, 1], grid: true },
      color: { legend: true },
      marks: [
        Plot.line([{ x: 0, y: 0 }, { x: 1, y: 1 }], { x: "x", y: "y", stroke: theme.border, strokeDasharray: "4,3" }),
        Plot.line(curves, { x: "fpr", y: "tpr", stroke: "score", strokeWidth: 1.6, curve: "step-after" }),
      ],
    });
    const geometric = rows
      .filter((r) => r.score === "geometric" && ok(r.auroc))
      .map((r) => ({ ...r, i: st.layers.findIndex((l) => l.name === r.layer || l.id === r.layer) }))
      .filter((r) => r.i >= 0);
    const loss = rows.find((r) => r.score === "loss" && ok(r.auroc));
    const refs = [{ y: 0.5, label: "chance", color: theme.border }];
    if (loss) refs.push({ y: loss.auroc as number, label: `loss ${fmt(loss.auroc as number)}`, color: theme.lines.ce });
    const byLayer = geometric.length
      ? Plot.plot({
          ...common,
          width: rightW,
          x: { label: "layer", domain: [0, Math.max(1, st.nLayers - 1)], tickFormat: (i: number) => st.layers[i]?.name === "final" ? "final" : String(st.layers[i]?.id ?? "") },
          y: { label: "AUROC of nn / r̂ (95 % interval)", domain: [0, 1], grid: true },
          marks: [
            Plot.ruleY(refs, { y: "y", stroke: "color", strokeDasharray: "5,3" }),
            Plot.text(refs, { y: "y", text: "label", frameAnchor: "left", dx: 4, dy: -7, fill: "color" }),
            Plot.areaY(geometric.filter((r) => ok(r.auroc_lo) && ok(r.auroc_hi)), { x: "i", y1: "auroc_lo", y2: "auroc_hi", fill: theme.accent, fillOpacity: 0.18 }),
            Plot.line(geometric, { x: "i", y: "auroc", stroke: theme.accent, strokeWidth: 1.6 }),
            Plot.dot(geometric, { x: "i", y: "auroc", fill: theme.accent, r: 2.5, tip: true, title: (d: any) => `${d.layer}\nAUROC ${fmt(d.auroc)} [${fmt(d.auroc_lo)}, ${fmt(d.auroc_hi)}]\nTPR at 1 % FPR ${fmt(d.tpr_at_1pct_fpr)}` }),
          ],
        })
      : h("div", { class: "ha-message", text: "The geometric score was not evaluated." });
    this.left.replaceChildren(roc);
    this.right.replaceChildren(byLayer);
    const scored = rows.filter((r) => r.score !== "geometric" && ok(r.auroc));
    const best = [...scored].sort((a, b) => (b.auroc as number) - (a.auroc as number))[0];
    const bestGeo = [...geometric].sort((a, b) => (b.auroc as number) - (a.auroc as number))[0];
    const sizes = `${rows[0].n_members ?? "?"} stored sequences (members) against ${rows[0].n_nonmembers ?? "?"} held-out (non-members)`;
    const parts = [`${sizes}; every score is oriented higher = more likely memorized, and AUROC 0.5 is chance.`];
    if (best) parts.push(`Best per-sequence score: ${this.label(best)}, AUROC ${fmt(best.auroc as number)} [${fmt(best.auroc_lo ?? NaN)}, ${fmt(best.auroc_hi ?? NaN)}].`);
    if (bestGeo) {
      const lo = bestGeo.auroc_lo ?? NaN;
      const verdict = ok(lo) && lo > 0.5 ? "separates them (its interval is above 0.5)" : "does not separate them beyond chance (its interval reaches 0.5)";
      parts.push(`nn / r̂ is best at ${bestGeo.layer}, AUROC ${fmt(bestGeo.auroc as number)} [${fmt(lo)}, ${fmt(bestGeo.auroc_hi ?? NaN)}]: it ${verdict}.`);
    }
    this.note.textContent = parts.join(" ");
    this.markReady();
  }
}
