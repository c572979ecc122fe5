// The compare and timeline views hold several audits: `members` (one JSON dict per audit, its
// single-audit state, each packed array's bytes replaced by `blob: [offset, length]`) and one
// packed uint8 `blob` holding every member's array bytes (see hopaudit/comparison.py). A member
// is read through a ModelLike of its own, so the single view's AuditState and panels read it
// unchanged.
import { ndarray } from "../schema";
import { AuditState, type ModelLike } from "../state";

export interface MemberInfo {
  label: string;
  depth: number[];
  is_final: boolean[];
  stack?: (string | null)[];
  n_blocks: number;
  step?: number;
  [key: string]: unknown;
}

interface BlobRef {
  dtype: string;
  shape: number[];
  blob: [number, number];
}

function isBlobRef(value: unknown): value is BlobRef {
  return !!value && typeof value === "object" && "blob" in value && "dtype" in value;
}

/** A read-only model of member `i`: its JSON keys, and its arrays as packed arrays whose bytes
 *  are views into the blob. */
export function memberModel(model: ModelLike, i: number): ModelLike {
  const info: MemberInfo = (model.get("members") ?? [])[i];
  const blob = ndarray(model.get("blob"), "uint8");
  return {
    get(name: string) {
      const value = info?.[name];
      if (isBlobRef(value)) {
        const [offset, length] = value.blob;
        return { dtype: value.dtype, shape: value.shape, view: new DataView(blob.buffer, blob.byteOffset + offset, length) };
      }
      return value;
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
