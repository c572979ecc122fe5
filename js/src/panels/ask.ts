// "Ask about a text": a text box whose text goes to the kernel as an anywidget custom message
// ({type: "hopaudit.query", id, text, k}); the kernel runs Audit.query and replies
// ({type: "hopaudit.query_result", id, ...card} or {..., error}: hopaudit/views/widget.py,
// query_message). The answer is a card: the text's membership scores with each score's AUROC
// in this audit beside it, its extraction, its nearest stored sequences per layer; the point
// is placed in the basins view. A report or a snapshot has no kernel: one line says so.
import { fmt, h } from "../util";
import { type Context, Panel } from "./base";
import type { BasinsPanel } from "./basins";

export const QUERY = "hopaudit.query";
export const REPLY = "hopaudit.query_result";
export const NO_KERNEL =
  "No “ask about a text” box here: a query runs the model, so it needs the live widget and its kernel (or audit.query(text) in a notebook).";

interface ScoreRow {
  score: string;
  value: number | null;
  auroc?: number | null;
  lo?: number | null;
  hi?: number | null;
}
interface Neighbour {
  layer: number;
  name: string;
  rank: number;
  sequence: number;
  text: string;
  distance: number | null;
  ratio: number | null;
  inside: boolean;
}
export interface Card {
  type: string;
  id: number;
  error?: string;
  text?: string;
  n_tokens?: number;
  scores?: ScoreRow[];
  extraction?: Record<string, any>;
  nearest?: Neighbour[];
  places?: { name: string; x: number; y: number }[];
  notes?: string[];
  seconds?: number | null;
}

const SCORE_LABEL: Record<string, string> = {
  loss: "loss (−NLL)",
  zlib: "zlib",
  min_k: "Min-K%",
  min_k_pp: "Min-K%++",
  ref_loss_diff: "reference NLL − NLL",
};

export class AskPanel extends Panel {
  input = h("textarea", { rows: "3", placeholder: "Paste a text: a generation that looks copied, a suspected training document…", "aria-label": "A text to ask the audit about", style: "width:100%;box-sizing:border-box;font:inherit" }) as HTMLTextAreaElement;
  button = h("button", { type: "button", text: "ask" }) as HTMLButtonElement;
  status = h("p", { class: "ha-note", "data-role": "status" });
  card = h("div", { "data-role": "card" });
  private next = 1;
  private pending = 0;
  private live: boolean;

  constructor(
    ctx: Context,
    private basins?: BasinsPanel,
  ) {
    super("ask", "Ask about a text", ctx, true);
    const model = ctx.model;
    this.live = !!model && model.get("can_query") === true && typeof (model as any).send === "function";
    if (!this.live) return;
    const onMsg = (msg: Card) => this.onReply(msg);
    model!.on("msg:custom", onMsg);
    this.cleanups.push(() => model!.off("msg:custom", onMsg));
    this.button.addEventListener("click", () => this.ask());
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.ask();
      }
    });
  }

  render(): void {
    if (!this.live) {
      this.body.replaceChildren(h("p", { class: "ha-note", "data-role": "no-kernel", text: NO_KERNEL }));
      this.markReady();
      return;
    }
    if (!this.body.childElementCount) {
      const row = h("div", { style: "display:flex;gap:6px;align-items:flex-start" }, this.input, this.button);
      this.body.append(row, this.status, this.card);
    }
    this.markReady();
  }

  /** Send the box's text to the kernel (ctrl+enter or the button). */
  ask(): void {
    const text = this.input.value;
    if (!text.trim()) {
      this.status.textContent = "Type or paste a text first.";
      return;
    }
    this.pending = this.next++;
    this.el.setAttribute("data-state", "asking");
    this.status.textContent = "Asking the kernel…";
    (this.ctx.model as any).send({ type: QUERY, id: this.pending, text, k: 5 });
  }

  onReply(msg: Card): void {
    if (!msg || msg.type !== REPLY || msg.id !== this.pending) return;
    if (msg.error) {
      this.el.setAttribute("data-state", "error");
      this.status.textContent = msg.error;
      this.card.replaceChildren();
      return;
    }
    this.status.textContent = `${msg.n_tokens ?? "?"} tokens, answered in ${fmt(msg.seconds ?? NaN)} s.`;
    this.card.replaceChildren(...this.cardParts(msg));
    this.el.setAttribute("data-state", "answered");
    this.basins?.placeQuery(msg.places ?? [], msg.nearest ?? []);
  }

  private cardParts(msg: Card): HTMLElement[] {
    const parts: HTMLElement[] = [];
    const scores = h("table", { "data-role": "scores" }, h("thead", {}, h("tr", {}, h("th", { text: "score (higher = member)" }), h("th", { text: "this text" }), h("th", { text: "AUROC in this audit [95 %]" }))));
    const body = h("tbody");
    for (const s of msg.scores ?? []) {
      const auroc = s.auroc == null ? "no membership (heldout=)" : `${fmt(s.auroc)} [${fmt(s.lo ?? NaN)}, ${fmt(s.hi ?? NaN)}]`;
      body.append(h("tr", { "data-score": s.score }, h("td", { text: SCORE_LABEL[s.score] ?? s.score }), h("td", { text: fmt(s.value ?? NaN) }), h("td", { text: auroc })));
    }
    scores.append(body);
    parts.push(scores);
    const ex = msg.extraction ?? {};
    let line: string;
    if (ex.note) line = String(ex.note);
    else {
      const verdict = ex.extracted ? "extracted: greedy decoding reproduces it" : "not extracted";
      line = `Extraction: from its first ${ex.prefix} tokens, greedy decoding reproduced ${ex.extracted_tokens} of the next ${ex.compared_tokens} (of ${ex.suffix}): ${verdict}.`;
    }
    parts.push(h("p", { "data-role": "extraction", text: line }));
    const near = h("table", { "data-role": "nearest" }, h("thead", {}, h("tr", {}, ...["layer", "rank", "sequence", "d / r̂", "in its ball", "text"].map((t) => h("th", { text: t })))));
    const nb = h("tbody");
    for (const n of msg.nearest ?? []) {
      nb.append(
        h("tr", { "data-sequence": String(n.sequence), "data-layer": n.name },
          h("td", { text: n.rank === 1 ? n.name : "" }), h("td", { text: String(n.rank) }), h("td", { text: `#${n.sequence}` }),
          h("td", { text: fmt(n.ratio ?? NaN) }), h("td", { text: n.inside ? "inside" : "" }), h("td", { text: n.text })),
      );
    }
    near.append(nb);
    parts.push(h("div", { class: "ha-table-wrap" }, near));
    for (const note of msg.notes ?? []) parts.push(h("p", { class: "ha-note", text: note }));
    return parts;
  }
}
