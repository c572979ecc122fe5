// The headline numbers: model, N, D, log10 N against 2 log10 D, cross-entropy against the floor.
import { fmt, fmtBand, fmtCount, fmtInt, fmtSeconds, h } from "../util";
import { type Context, Panel } from "./base";

export class SummaryPanel extends Panel {
  constructor(ctx: Context) {
    super("summary", "Summary", ctx, true);
  }

  render(): void {
    const s = this.ctx.state.summary;
    const num = (k: string) => (typeof s[k] === "number" ? (s[k] as number) : NaN);
    const card = (k: string, v: string, sub = "", warn = false) =>
      h("div", { class: `ha-card${warn ? " ha-warn" : ""}` }, h("div", { class: "ha-k", text: k }), h("div", { class: "ha-v", text: v }), sub ? h("div", { class: "ha-s", text: sub }) : null);

    const ce = num("cross_entropy");
    const lo = num("floor_low");
    const hi = num("floor_high");
    const below = Number.isFinite(ce) && ce < lo;
    const overPacked = lo >= 1e100; // Z < 1e-100, or no finite floor at all
    const ceSub = Number.isFinite(ce)
      ? `${fmtBand(lo, hi)}${Number.isFinite(num("floor_low_lo")) ? ` (its low end 95 %: ${fmt(num("floor_low_lo"))}–${fmt(num("floor_low_hi"))})` : ""} · universal floor 1 nat · Chinchilla ${fmt(num("chinchilla_loss"))}`
      : String(s.loss_note ?? "no loss for this model");
    const nLog = num("log10_N");
    const dLog = num("two_log10_D");
    const regime = Number.isFinite(nLog) && Number.isFinite(dLog) ? (nLog < dLog ? "N < D²: Z can reach 1" : "N ≥ D²: over-parameterized for D") : "";
    const cards = h(
      "div",
      { class: "ha-cards" },
      card("model", String(s.model ?? "–"), `${fmtInt(num("n_layers"))} blocks · hidden ${fmtInt(num("hidden_size"))}`),
      card("parameters N", fmtCount(num("n_params_blocks")), `in blocks · ${fmtCount(num("n_params_total"))} total`),
      card("tokens D", fmtCount(num("n_tokens")), `${fmtInt(num("n_sequences"))} sequences`),
      card("log10 N vs 2 log10 D", `${fmt(nLog)} vs ${fmt(dLog)}`, regime),
      card("cross-entropy", Number.isFinite(ce) ? `${fmt(ce, 4)} nats` : "n/a", ceSub, below),
      card("normalize", String(s.normalize ?? "–"), s.positions != null ? `positions: ${s.positions}` : ""),
      card("run time", fmtSeconds(num("total_seconds")), `capture ${fmtSeconds(num("capture_seconds"))} · ${fmtCount(num("tokens_per_second"))} tok/s${s.compute_dtype ? ` · ${s.compute_dtype}` : ""}${s.compiled ? ` · ${s.compiled}` : ""}`),
    );
    // Extraction, the ground truth (docs/theory.md §6), where it was run.
    const ex = num("extraction_rate");
    if (Number.isFinite(ex)) {
      const held = num("extraction_rate_heldout");
      const pct = (v: number) => `${fmt(100 * v, 3)} %`;
      cards.append(card("extractable", pct(ex), Number.isFinite(held) ? `of stored sequences · held-out ${pct(held)}` : "of the sequences: greedy decoding reproduces their suffix"));
    }
    this.body.replaceChildren(cards);
    for (const key of ["architecture_note", "extraction_note"]) {
      const text = s[key];
      if (typeof text === "string" && text) this.body.append(h("p", { class: "ha-note", "data-note": key, text }));
    }
    const why = overPacked
      ? "The final layer's patterns sit closer together than its critical radius r_c, so Z = d V_n(r̂) is below 1e-100 and the volume-form floor is astronomical: the measured cross-entropy is far below it, and the floor says only that this layer is over-packed in the theory's terms (see the floor panel)."
      : "The measured cross-entropy is below the final layer's floor band: the volume estimate's assumptions do not hold here (see the floor panel).";
    if (below) this.body.append(h("p", { class: "ha-note", text: why }));
    this.markReady();
  }
}
