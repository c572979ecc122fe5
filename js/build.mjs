// Bundle the widget into one self-contained ESM file (every dependency inlined, no CDN).
import { mkdirSync, copyFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = resolve(here, "../hopaudit/static");
mkdirSync(outdir, { recursive: true });

const options = {
  entryPoints: [resolve(here, "src/index.ts")],
  outfile: resolve(outdir, "widget.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "none",
  sourcemap: false,
  // UMD dependencies must not see a require.js `define` on notebook pages.
  define: { "define.amd": "false" },
  logLevel: "info",
};

// The HTML report's bootstrap (hopaudit/report.py inlines it): it loads the bundle above.
const bootstrap = {
  ...options,
  entryPoints: [resolve(here, "src/bootstrap.ts")],
  outfile: resolve(outdir, "bootstrap.js"),
};

copyFileSync(resolve(here, "css/widget.css"), resolve(outdir, "widget.css"));
if (process.argv.includes("--watch")) {
  for (const o of [options, bootstrap]) await (await esbuild.context(o)).watch();
} else {
  await Promise.all([esbuild.build(options), esbuild.build(bootstrap)]);
}
