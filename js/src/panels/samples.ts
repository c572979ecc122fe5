// The most memorized sequences (lowest cross-entropy, highest Min-K%, lowest distance ratio),
// sortable by each score, with their text.
import { fmt, h } from "../util";
import { type Context, Panel } from "./base";

const COLUMNS = [
  { key: 0, label: "cross-entropy", title: "mean token cross-entropy (nats); low = memorized", asc: true },
  { key: 1, label: "Min-K%", title: "mean of the lowest k% token log-probs; high = memorized", asc: false },
  { key: 3, label: "nn / r̂", title: "final layer's nearest-pattern distance over r̂; low = packed", asc: true },
  { key: 2, label: "top-1", title: "next-token top-1 accuracy", asc: false },
] as const;

export class SamplesPanel extends Panel {
  sortKey = 0;
  ascending = true;
  table = h("table", {});
  wrap = h("div", { class: "ha-table-wrap" }, this.table);

  constructor(ctx: Context) {
    super("samples", "Most memorized sequences", ctx, true);
    const st = ctx.state;
    const v = st.sampleValues;
    if (!Array.from({ length: st.sampleSeq.length }, (_, i) => v[i * 5]).some(Number.isFinite)) {
      this.sortKey = 3;
    }
    this.body.append(this.wrap, h("p", { class: "ha-note", text: `${st.sampleSeq.length} of ${st.nSequences.toLocaleString("en-US")} sequences: the most memorized by each score. Texts are cut at ${st.textChars} characters. Click a column header (or focus it and press Enter) to sort.` }));
  }

  sort(key: number): void {
    if (this.sortKey === key) this.ascending = !this.ascending;
    else {
      this.sortKey = key;
      this.ascending = COLUMNS.find((c) => c.key === key)?.asc ?? true;
    }
    this.render();
  }

  render(): void {
    const st = this.ctx.state;
    const v = st.sampleValues;
    const k = st.sampleSeq.length;
    const idx = Array.from({ length: k }, (_, i) => i);
    const key = this.sortKey;
    const sign = this.ascending ? 1 : -1;
    idx.sort((a, b) => {
      const x = v[a * 5 + key];
      const y = v[b * 5 + key];
      if (!Number.isFinite(x)) return Number.isFinite(y) ? 1 : 0;
      if (!Number.isFinite(y)) return -1;
      return sign * (x - y);
    });
    const head = h("tr", {}, h("th", { text: "#" }));
    for (const c of COLUMNS) {
      const active = c.key === key;
      const b = h("button", { type: "button", title: c.title, "data-sort": String(c.key), text: `${c.label}${active ? (this.ascending ? " ▲" : " ▼") : ""}` });
      b.addEventListener("click", () => this.sort(c.key));
      const th = h("th", { "aria-sort": active ? (this.ascending ? "ascending" : "descending") : "none" }, b);
      head.append(th);
    }
    head.append(h("th", { text: "basin" }), h("th", { text: "text" }));
    const body = h("tbody", {});
    for (const i of idx) {
      const seq = st.sampleSeq[i];
      const row = h("tr", { "data-sequence": String(st.sequenceId(seq)) }, h("td", { class: "ha-num", text: String(st.sequenceId(seq)) }));
      for (const c of COLUMNS) row.append(h("td", { class: "ha-num", text: fmt(v[i * 5 + c.key]) }));
      const basin = v[i * 5 + 4];
      row.append(h("td", { class: "ha-num", text: Number.isFinite(basin) && basin >= 0 ? String(basin) : "–" }));
      row.append(h("td", { class: "ha-text", text: st.text(seq) }));
      body.append(row);
    }
    this.table.replaceChildren(h("thead", {}, head), body);
    // keep focus on the header button that was used
    this.markReady();
  }
}
