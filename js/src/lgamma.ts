// log Gamma by the Lanczos approximation (g = 7, n = 9 coefficients, as in Numerical Recipes /
// the widely used port), with the reflection formula for x < 0.5. Relative error ~1e-15.

const G = 7;
const COEF = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
  -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
  1.5056327351493116e-7,
];

export function lgamma(x: number): number {
  if (!Number.isFinite(x)) return x === Infinity ? Infinity : NaN;
  if (x < 0.5) {
    // Gamma(x) Gamma(1 - x) = pi / sin(pi x)
    const s = Math.sin(Math.PI * x);
    if (s === 0) return Infinity;
    return Math.log(Math.PI / Math.abs(s)) - lgamma(1 - x);
  }
  const z = x - 1;
  let a = COEF[0];
  const t = z + G + 0.5;
  for (let i = 1; i < G + 2; i++) a += COEF[i] / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

/** log of the volume of the n-ball of radius r: (n/2) log pi + n log r - lgamma(n/2 + 1). */
export function logBallVolume(n: number, r: number): number {
  return (n / 2) * Math.log(Math.PI) + n * Math.log(r) - lgamma(n / 2 + 1);
}

/** F(Z) = log Z + 1/Z from log Z; +Infinity when exp(-log Z) overflows (never clipped). */
export function lossFloor(logZ: number): number {
  const inv = Math.exp(-logZ);
  return logZ + inv;
}

/** The volume-form floor F(log d + log V_n(r)) of THEORY.md section 3. */
export function floorAt(n: number, d: number, r: number): number {
  return lossFloor(Math.log(d) + logBallVolume(n, r));
}

/** Critical radius r_c where d V_n(r) = 1: log r_c = (lgamma(n/2+1) - (n/2) log pi - log d) / n. */
export function criticalRadius(n: number, d: number): number {
  return Math.exp((lgamma(n / 2 + 1) - (n / 2) * Math.log(Math.PI) - Math.log(d)) / n);
}

/** r_star(n) = sqrt(n / (2 pi e)). */
export function rStar(n: number): number {
  return Math.sqrt(n / (2 * Math.PI * Math.E));
}

/**
 * The floor curve: `steps + 1` points x spaced evenly on a log axis from lo to hi, each with
 * F = floorAt(n, d, x · unit) (x in units of `unit`, e.g. r / r*). F is left as computed
 * (possibly not finite); what to do with such points is the caller's choice.
 */
export function floorCurve(n: number, d: number, lo: number, hi: number, steps: number, unit = 1): { x: number; F: number }[] {
  const out: { x: number; F: number }[] = [];
  for (let k = 0; k <= steps; k++) {
    const x = lo * (hi / lo) ** (k / steps);
    out.push({ x, F: floorAt(n, d, x * unit) });
  }
  return out;
}
