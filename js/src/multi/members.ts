// The compare and timeline views hold several audits: `members` (one JSON dict per audit, its
// single-audit state without arrays) and one binary `blob` holding every member's arrays at
// members[i].buffers[key] = [offset, length] (see hopaudit/comparison.py). A member is read
// through a ModelLike of its own, so the single view's AuditState and panels read it unchanged.
import { AuditState, type ModelLike } from "../state";

export interface MemberInfo {
  label: string;
  depth: number[];
  is_final: boolean[];
  n_blocks: number;
  step?: number;
  buffers: Record<string, [number, number]>;
  [key: string]: unknown;
}

function slice(blob: unknown, offset: number, length: number): DataView {
  if (blob instanceof ArrayBuffer) return new DataView(blob, offset, length);
  if (ArrayBuffer.isView(blob)) return new DataView(blob.buffer, blob.byteOffset + offset, length);
  return new DataView(new ArrayBuffer(0));
}

/** A read-only model of member `i`: its JSON keys, and its arrays as views into the blob. */
export function memberModel(model: ModelLike, i: number): ModelLike {
  const info: MemberInfo = (model.get("members") ?? [])[i];
  const blob = model.get("blob");
  return {
    get(name: string) {
      const ref = info?.buffers?.[name];
      if (ref) return slice(blob, ref[0], ref[1]);
      return info?.[name];
    },
    on: () => undefined,
    off: () => undefined,
  };
}

/** Every member's info, and its decoded AuditState (made on first use, then kept). */
export class Members {
  infos: MemberInfo[];
  labels: string[];
  private states: (AuditState | undefined)[];

  constructor(private model: ModelLike) {
    this.infos = model.get("members") ?? [];
    this.labels = model.get("labels") ?? this.infos.map((m) => m.label);
    this.states = new Array(this.infos.length);
  }

  get length(): number {
    return this.infos.length;
  }

  state(i: number): AuditState {
    let s = this.states[i];
    if (!s) {
      s = new AuditState(memberModel(this.model, i));
      this.states[i] = s;
    }
    return s;
  }

  /** Index of the layer of member i nearest to relative depth `depth` (blocks only), or the
   *  final layer when `depth` is "final". */
  layerAt(i: number, depth: number | "final"): number {
    const info = this.infos[i];
    if (depth === "final") {
      const f = info.is_final.lastIndexOf(true);
      return f >= 0 ? f : info.depth.length - 1;
    }
    let best = 0;
    let gap = Infinity;
    info.depth.forEach((d, j) => {
      if (info.is_final[j]) return;
      if (Math.abs(d - depth) < gap - 1e-12) {
        gap = Math.abs(d - depth);
        best = j;
      }
    });
    return best;
  }
}
