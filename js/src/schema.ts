// Read a packed array of a view's state: { dtype, shape, view } (hopaudit/schema.py). The dtype
// and shape travel with the bytes, so no reader keeps a table of its own.

export interface Packed {
  dtype: string;
  shape: number[];
  view: unknown;
}

/** The typed array each dtype name reads as (float16 is widened: Float16Array is not in every
 *  browser yet). */
export interface DTypes {
  uint8: Uint8Array;
  uint16: Uint16Array;
  uint32: Uint32Array;
  float16: Float64Array;
  float32: Float32Array;
  float64: Float64Array;
}

type TypedCtor = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): ArrayBufferView;
  new (length: number): ArrayBufferView;
  BYTES_PER_ELEMENT: number;
};

const CTORS: Record<Exclude<keyof DTypes, "float16">, TypedCtor> = {
  uint8: Uint8Array,
  uint16: Uint16Array,
  uint32: Uint32Array,
  float32: Float32Array,
  float64: Float64Array,
};

/** IEEE 754 half precision to a JS number. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** The bytes of a DataView, ArrayBuffer or typed array as (buffer, offset, length). */
function bytesOf(value: unknown): [ArrayBufferLike, number, number] | null {
  if (value instanceof ArrayBuffer) return [value, 0, value.byteLength];
  if (ArrayBuffer.isView(value)) return [value.buffer, value.byteOffset, value.byteLength];
  return null;
}

/** View bytes as a typed array of `Ctor`, copying only when misaligned. */
function view(buffer: ArrayBufferLike, offset: number, length: number, Ctor: TypedCtor): ArrayBufferView {
  const size = Ctor.BYTES_PER_ELEMENT;
  const n = Math.floor(length / size);
  if (offset % size === 0) return new Ctor(buffer, offset, n);
  const copy = new Uint8Array(n * size);
  copy.set(new Uint8Array(buffer, offset, n * size));
  return new Ctor(copy.buffer, 0, n);
}

export function isPacked(value: unknown): value is Packed {
  return !!value && typeof value === "object" && "dtype" in value && "shape" in value && "view" in value;
}

/**
 * The data of a packed array, as the typed array of its dtype. `accept` lists the dtypes the
 * caller reads; anything else (or a missing array) throws, so a change of dtype on the Python
 * side fails loudly instead of being read as other numbers. A missing array is empty.
 */
export function ndarray<K extends keyof DTypes>(value: unknown, ...accept: K[]): DTypes[K] {
  if (value == null) return (accept[0] === "float16" ? new Float64Array(0) : new CTORS[accept[0] as Exclude<K, "float16">](0)) as DTypes[K];
  if (!isPacked(value)) throw new Error("not a packed array");
  const dtype = value.dtype as K;
  if (!accept.includes(dtype)) throw new Error(`expected ${accept.join(" or ")}, got ${value.dtype}`);
  const raw = bytesOf(value.view);
  const [buffer, offset, length] = raw ?? [new ArrayBuffer(0), 0, 0];
  if (dtype === "float16") {
    const halves = view(buffer, offset, length, Uint16Array) as Uint16Array;
    const out = new Float64Array(halves.length);
    for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
    return out as DTypes[K];
  }
  return view(buffer, offset, length, CTORS[dtype as Exclude<K, "float16">]) as DTypes[K];
}

/** The shape of a packed array ([] when it is missing). */
export function shapeOf(value: unknown): number[] {
  return isPacked(value) ? value.shape : [];
}
