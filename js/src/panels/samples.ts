// The most memorized sequences by each score the audit has (hopaudit/widget.py, SAMPLE_COLUMNS),
// with their text. "Rank by" picks the score, extraction first where it was run; where the audit
// was evaluated against held-out data each score's AUROC stands beside its name. Every header
// sorts the table too.
import { fmt, h, select } from "../util";
import { type Context, Panel } from "./base";

interface Column {
  label: string;
  title: string;
  /** +1: higher = more memorized; -1: lower; 0: shown, not a ranking score. */
  dir: number;
}

const KNOWN: Record<string, Column> = {
  extracted_tokens: { label: "extracted", title: "leading suffix tokens greedy decoding reproduced from the prefix (all of them = extracted: the ground truth)", dir: 1 },
  loss: { label: "loss", title: "−(mean token NLL); higher = memorized", dir: 1 },
  zlib: { label: "zlib", title: "−(NLL sum) over the text's zlib-compressed bytes; higher = memorized", dir: 1 },
  min_k: { label: "Min-K%", title: "mean of the lowest k% token log-probs; higher = memorized", dir: 1 },
  min_k_pp: { label: "Min-K%++", title: "Min-K% of log-probs standardized by the next-token distribution; higher = memorized", dir: 1 },
  ref_loss_diff: { label: "ref − model", title: "the reference model's NLL minus this model's; higher = memorized", dir: 1 },
  cross_entropy: { label: "cross-entropy", title: "mean token cross-entropy (nats); lower = memorized", dir: -1 },
  distance_ratio: { label: "nn / r̂", title: "final layer's nearest-pattern distance over r̂; lower = packed", dir: -1 },
  top1: { label: "top-1", title: "next-token top-1 accuracy", dir: 0 },
  basin: { label: "basin", title: "the sequence of the nearest other pattern in the final layer", dir: 0 },
};

/** The membership score a samples column is evaluated as (the AUROC beside its name). */
const AS_SCORE: Record<string, string> = { cross_entropy: "loss", distance_ratio: "geometric" };

export class SamplesPanel extends Panel {
  sortKey: string;
  ascending: boolean;
  table = h("table", {});
  wrap = h("div", { class: "ha-table-wrap" }, this.table);
  columns: string[];

  constructor(ctx: Context) {
    super("samples", "Most memorized sequences", ctx, true);
    const st = ctx.state;
    this.columns = st.sampleColumns;
    const ranking = this.columns.filter((c) => (KNOWN[c]?.dir ?? 0) !== 0 && this.hasValues(c));
    this.sortKey = ranking[0] ?? this.columns[0] ?? "";
    this.ascending = (KNOWN[this.sortKey]?.dir ?? 1) < 0;
    if (ranking.length) {
      this.header.append(
        select("rank by", ranking.map((c) => ({ value: c, label: this.scoreLabel(c) })), this.sortKey, (v) => {
          this.sortKey = v;
          this.ascending = (KNOWN[v]?.dir ?? 1) < 0;
          this.render();
        }),
      );
    }
    this.body.append(this.wrap, h("p", { class: "ha-note", text: `${st.sampleSeq.length} of ${st.nSequences.toLocaleString("en-US")} sequences: the most memorized by each score. Texts are cut at ${st.textChars} characters. Click a column header (or focus it and press Enter) to sort.` }));
  }

  private hasValues(column: string): boolean {
    const st = this.ctx.state;
    const j = this.columns.indexOf(column);
    for (let i = 0; i < st.sampleSeq.length; i++) if (Number.isFinite(st.sampleValues[i * this.columns.length + j])) return true;
    return false;
  }

  /** A score's name with its AUROC [95 % interval] where the audit evaluated it. */
  private scoreLabel(column: string): string {
    const label = KNOWN[column]?.label ?? column;
    const score = AS_SCORE[column] ?? column;
    const rows = this.ctx.state.membership.filter((m) => m.score === score);
    const row = score === "geometric" ? rows[rows.length - 1] : rows[0];
    if (!row || !Number.isFinite(row.auroc ?? NaN)) return label;
    // cross-entropy ranks as the loss score does, nn / r̂ as the geometric score (its negation)
    return `${label} (AUROC ${fmt(row.auroc!)} [${fmt(row.auroc_lo ?? NaN)}, ${fmt(row.auroc_hi ?? NaN)}])`;
  }

  sort(key: string): void {
    if (this.sortKey === key) this.ascending = !this.ascending;
    else {
      this.sortKey = key;
      this.ascending = (KNOWN[key]?.dir ?? 1) < 0;
    }
    this.render();
  }

  render(): void {
    const st = this.ctx.state;
    const v = st.sampleValues;
    const width = this.columns.length;
    const k = st.sampleSeq.length;
    const idx = Array.from({ length: k }, (_, i) => i);
    const j = this.columns.indexOf(this.sortKey);
    const sign = this.ascending ? 1 : -1;
    idx.sort((a, b) => {
      const x = v[a * width + j];
      const y = v[b * width + j];
      if (!Number.isFinite(x)) return Number.isFinite(y) ? 1 : 0;
      if (!Number.isFinite(y)) return -1;
      return sign * (x - y);
    });
    const head = h("tr", {}, h("th", { text: "#" }));
    const shown = this.columns.filter((c) => c !== "basin");
    for (const c of shown) {
      const active = c === this.sortKey;
      const info = KNOWN[c] ?? { label: c, title: c, dir: 0 };
      const b = h("button", { type: "button", title: info.title, "data-sort": c, text: `${info.label}${active ? (this.ascending ? " ▲" : " ▼") : ""}` });
      b.addEventListener("click", () => this.sort(c));
      head.append(h("th", { "aria-sort": active ? (this.ascending ? "ascending" : "descending") : "none" }, b));
    }
    head.append(h("th", { text: "basin" }), h("th", { text: "text" }));
    const body = h("tbody", {});
    const at = (i: number, c: string) => {
      const jj = this.columns.indexOf(c);
      return jj < 0 ? NaN : v[i * width + jj];
    };
    for (const i of idx) {
      const seq = st.sampleSeq[i];
      const row = h("tr", { "data-sequence": String(st.sequenceId(seq)) }, h("td", { class: "ha-num", text: String(st.sequenceId(seq)) }));
      for (const c of shown) {
        const x = at(i, c);
        const text = c === "extracted_tokens" && Number.isFinite(x) ? String(Math.round(x)) : fmt(x);
        row.append(h("td", { class: "ha-num", "data-column": c, text }));
      }
      const basin = at(i, "basin");
      row.append(h("td", { class: "ha-num", text: Number.isFinite(basin) && basin >= 0 ? String(basin) : "–" }));
      row.append(h("td", { class: "ha-text", text: st.text(seq) }));
      body.append(row);
    }
    this.table.replaceChildren(h("thead", {}, head), body);
    this.markReady();
  }
}
