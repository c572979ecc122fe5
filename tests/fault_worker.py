"""Fault cases for tests/test_faults.py, run as ``python fault_worker.py CASE ARGS_JSON``.

This process imports what the cases use (:func:`preload`) but runs no torch or hnswlib code
itself: every case runs in a child forked from it (so OpenMP and hnswlib start fresh there),
and a case that crashes the child (a signal) or hangs is reported as such instead of taking
the test run down. Prints one JSON list of case results.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import hopaudit
from hopaudit.errors import FormatError

#: What every case's child imports to load an audit.
LOAD_MODULES = (
    "hnswlib",
    "pandas",
    "pyarrow.parquet",
    "hopaudit.storage.load",
    "hopaudit.results.audit",
)
#: What a child that gets past the load imports to use, save, catalog and report the audit.
USE_MODULES = (
    "torch",
    "scipy.stats",
    "hopaudit.storage.save",
    "hopaudit.storage.catalog",
    "hopaudit.evidence.scores",
    "hopaudit.evidence.membership",
    "hopaudit.layer.patterns",
    "hopaudit.views.report",
)
#: The cases whose children stop at the first FormatError, before they use the audit.
LOAD_ONLY = {"crafted"}


def preload(case: str) -> None:
    """Import, once and here, the libraries and modules the case's children use (torch,
    pandas, pyarrow, scipy.stats, hnswlib, hopaudit's own): each forked child inherits them
    instead of importing them again, which took nearly all of a case's time. Imports only: no
    tensor operation and no index, so OpenMP's pool and hnswlib's state are still created in
    each child."""
    import importlib

    for name in LOAD_MODULES + (() if case in LOAD_ONLY else USE_MODULES):
        importlib.import_module(name)


def in_child(fn, timeout: float = 600.0) -> dict:
    """fn() in a forked child: {"status": ok|raised|crashed|hung, "text": ...}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = fn()
            out = {"status": "ok", "text": str(value), "warnings": [str(x.message) for x in caught]}
        except BaseException as exc:  # reported to the parent
            out = {"status": "raised", "type": type(exc).__name__, "text": str(exc)}
            out["format_error"] = isinstance(exc, FormatError)
        data = json.dumps(out).encode()[:60000]
        os.write(w, data)
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    os.set_blocking(r, False)
    status = None
    while True:
        try:
            chunk = os.read(r, 65536)
            if chunk:
                chunks.append(chunk)
        except BlockingIOError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return {"status": "hung"}
        time.sleep(0.002)
    os.set_blocking(r, True)
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    if os.WIFSIGNALED(status):
        return {"status": "crashed", "text": f"signal {os.WTERMSIG(status)}"}
    if not chunks:
        return {"status": "crashed", "text": f"exit {os.WEXITSTATUS(status)} without a result"}
    return json.loads(b"".join(chunks))


def mutate(path: Path, how: str, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if how == "flip" and data:
        i = rng.randrange(len(data))
        data[i] ^= rng.randrange(1, 256)
        what = f"byte {i} of {len(data)}"
    elif how == "truncate":
        n = rng.randrange(len(data)) if data else 0
        data = data[:n]
        what = f"cut to {n} bytes"
    else:  # random bytes of the same size
        data = bytearray(rng.randbytes(len(data)))
        what = "random bytes"
    path.write_bytes(bytes(data))
    return what


def load_summary(path: Path, verify: bool) -> str:
    a = hopaudit.load(path, verify=verify)
    kinds = sorted({r.index.kind for r in a.reports.values() if r.index is not None})
    # touch every array a view would read
    for name in a.layer_names:
        a.activations(name).sum()
    a.layers, a.samples  # noqa: B018
    return json.dumps({"model": a.model_name, "index": kinds, "n": len(a.texts)})


def fuzz(src: str, work: str, seed: int, hows: list[str], verify: bool) -> list[dict]:
    """Every file of the saved audit ``src``, changed each way in ``hows``, loaded in a child."""
    rng = random.Random(seed)
    src_p = Path(src)
    files = sorted(p.relative_to(src_p).as_posix() for p in src_p.rglob("*") if p.is_file())
    out = []
    for rel in files:
        for how in hows:
            case = Path(work) / "case"
            if case.exists():
                shutil.rmtree(case)
            shutil.copytree(src_p, case)
            what = mutate(case / rel, how, rng)
            res = in_child(lambda case=case: load_summary(case, verify))
            out.append({"file": rel, "how": how, "what": what, "verify": verify, **res})
    return out


def kill_save(old: str, new: str, work: str, points: list[list]) -> list[dict]:
    """Save the audit ``new`` over a copy of ``old`` with overwrite=True, SIGKILLed at the n-th
    call of a function (``[name, n]``); then load what is there in another child."""
    import hopaudit.storage.save as persist

    out = []
    for name, nth in points:
        case = Path(work) / "target"
        if case.exists():
            shutil.rmtree(case)
        for stale in Path(work).glob(".target*"):
            shutil.rmtree(stale)
        shutil.copytree(old, case)

        def run(name=name, nth=nth, case=case):
            audit = hopaudit.load(new)
            calls = {"n": 0}
            owner, attr = {
                "fsync": (os, "fsync"),
                "rename": (os, "rename"),
                "exchange": (persist, "exchange"),
                "unlink": (Path, "unlink"),
            }[name]
            original = getattr(owner, attr)

            def killer(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kwargs)

            setattr(owner, attr, killer)
            audit.save(case, overwrite=True)
            return "finished without reaching the kill point"

        saved = in_child(run)
        loaded = in_child(lambda case=case: load_summary(case, True))
        litter = sorted(p.name for p in Path(work).iterdir() if p.name.startswith(".target"))
        out.append({"point": [name, nth], "save": saved, "load": loaded, "litter": litter})
    return out


def concurrent(a: str, b: str, work: str, rounds: int) -> list[dict]:
    """Two children save audits a and b to one path (overwrite) at once, ``rounds`` times."""
    target = Path(work) / "shared"
    out = []
    for _ in range(rounds):

        def writer(src):
            audit = hopaudit.load(src)
            for _ in range(2):
                audit.save(target, overwrite=True)
            return "saved"

        pids = []
        for src in (a, b):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                res = in_child(lambda src=src: writer(src))
                os.write(w, json.dumps(res).encode())
                os._exit(0)
            os.close(w)
            pids.append((pid, r))
        results = []
        for pid, r in pids:
            os.waitpid(pid, 0)
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            os.close(r)
            results.append(json.loads(data))
        loaded = in_child(lambda: load_summary(target, True))
        out.append({"writers": results, "load": loaded})
    return out


def concurrent_html(a: str, b: str, work: str, writes: int) -> dict:
    """Two children write reports of audits a and b to one path, ``writes`` times each, while
    this process reads it: every read must be one of the two complete reports. The reports'
    clock is frozen (in the children too, forked after): a report says the minute it was
    generated, so one written in the next minute would not be the complete report."""
    from datetime import datetime

    import hopaudit.views.report as report

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, tzinfo=tz)

    report.datetime = Frozen
    target = Path(work) / "report.html"
    complete = {}
    for src in (a, b):
        path = Path(work) / f"{Path(src).name}.html"
        hopaudit.load(src).to_html(path)
        complete[path.read_bytes()] = Path(src).name
    pids = []
    for src in (a, b):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                audit = hopaudit.load(src)
                for _ in range(writes):
                    audit.to_html(target)
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    reads, partial, seen = 0, 0, set()
    running = set(pids)
    codes = []
    while running:
        if target.exists():
            data = target.read_bytes()
            reads += 1
            if data in complete:
                seen.add(complete[data])
            else:
                partial += 1
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                codes.append(status)
    final = complete.get(target.read_bytes())
    litter = sorted(p.name for p in Path(work).iterdir() if p.name.startswith(".report"))
    return {"reads": reads, "partial": partial, "seen": sorted(seen), "final": final,
            "codes": codes, "litter": litter}  # fmt: skip


def fingerprint(a) -> dict:
    """What identifies a loaded audit in every part a load reads: texts, the capture's arrays,
    activations, the kNN graph (a mixed load matches no saved audit)."""
    import numpy as np

    name = a.layer_names[0]
    rep = a.reports[name]
    return {
        "texts": len(a.texts) * 1000 + len(a.texts[0]),
        "rows": int(np.asarray(a.capture.row_sequence).sum()),
        "acts": round(float(np.asarray(a.activations(name), np.float64).sum()), 3),
        "graph": int(np.asarray(rep.knn_ids, np.int64).sum()),
    }


def index_answers_itself(a) -> bool:
    """Every layer's index finds each of the first rows of its own patterns at distance 0:
    the index answers from the audit it was loaded with."""
    import numpy as np

    from hopaudit.layer.patterns import layer_patterns

    for name in a.layer_names:
        rep = a.reports[name]
        x = layer_patterns(a.capture.store, name, rep.valid_rows, rep.normalize)[:8]
        ids, dists = rep.index.query(x, 1)
        if not (np.array_equal(ids[:, 0], np.arange(len(x))) and np.all(dists[:, 0] < 1e-3)):
            return False
    return True


def concurrent_load(a: str, b: str, work: str, seconds: float, saves: int) -> dict:
    """One child overwrites ``work/target`` with audits a and b in turn for ``seconds`` while
    two children load it (and catalog it) again and again, each checking what it got is a or b
    whole, and that
    the audit it loaded before (held across a save) still answers from its own index. The
    writer goes on until ``seconds`` passed and it saved ``saves`` times (however loaded the
    machine is); the readers until it is done."""
    target = Path(work) / "target"
    shutil.copytree(a, target)
    expected = {}
    for src in (a, b):
        got = in_child(lambda src=src: json.dumps(fingerprint(hopaudit.load(src))))
        expected[json.dumps(json.loads(got["text"]), sort_keys=True)] = Path(src).name
    done = Path(work) / "writer-done"

    def writer():
        audits = [hopaudit.load(src) for src in (b, a)]
        deadline, n = time.time() + seconds, 0
        try:
            while time.time() < deadline or n < saves:
                audits[n % 2].save(target, overwrite=True)
                n += 1
        finally:
            done.touch()
        return n

    def reader():
        seen = {"loads": 0, "mixed": [], "damaged": [], "held_wrong": 0, "names": []}
        held = None
        while not done.exists() or seen["loads"] < 3:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # a rebuilt index: its file was not its own
                    audit = hopaudit.load(target)
                    fp = json.dumps(fingerprint(audit), sort_keys=True)
                    hopaudit.catalog(target, "samples")  # each file checked: no mix passes
            except Exception as exc:  # counted, not raised: every failure is a finding
                seen["damaged"].append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            seen["loads"] += 1
            if fp not in expected:
                seen["mixed"].append(fp)
            else:
                seen["names"].append(expected[fp])
            try:
                seen["held_wrong"] += held is not None and not index_answers_itself(held)
            except Exception:  # a held audit that cannot answer is as wrong
                seen["held_wrong"] += 1
            held = audit
        seen["names"] = sorted(set(seen["names"]))
        return json.dumps(seen)

    jobs = []
    for fn in (writer, reader, reader):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            res = in_child(fn, timeout=seconds + 1200)
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        jobs.append((pid, r))
    results = []
    for pid, r in jobs:
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.waitpid(pid, 0)
        os.close(r)
        results.append(json.loads(data))
    return {"writer": results[0], "readers": results[1:]}


def _patch_index(root: Path, at: int, fmt: str, value) -> None:
    """Write ``value`` (struct ``fmt``) at byte ``at`` of layer 0's HNSW index file."""
    import struct

    file = root / "indexes" / "layer_000.bin"
    data = bytearray(file.read_bytes())
    struct.pack_into(fmt, data, at, value)
    file.write_bytes(bytes(data))


def _first_upper(root: Path) -> int:
    """The byte offset of the first upper-level link list in layer 0's index file."""
    import struct

    data = (root / "indexes" / "layer_000.bin").read_bytes()
    count, per = struct.unpack_from("<QQ", data, 16)
    pos = 96 + count * per
    while struct.unpack_from("<I", data, pos)[0] == 0:
        pos += 4
    return pos + 4  # the first level's link count


def _edit_meta(root: Path, edit) -> None:
    """Change audit.json's content (resign then recomputes its digest)."""
    meta = json.loads((root / "audit.json").read_text())
    edit(meta)
    (root / "audit.json").write_text(json.dumps(meta))


def _edit_npz(root: Path, rel: str, edit) -> None:
    import numpy as np

    with np.load(root / rel) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(root / rel, **arrays)


def _edit_json(root: Path, rel: str, edit) -> None:
    value = json.loads((root / rel).read_text())
    (root / rel).write_text(json.dumps(edit(value)))


def _first_report(meta: dict) -> dict:
    return next(iter(meta["reports"].values()))


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _set(d: dict, key: str, value) -> None:
    d[key] = value


def _store_layer(meta: dict, **values) -> dict:
    meta["layers"][0].update(values)
    return meta


CRAFTS = {
    # hnswlib's layout (hopaudit/search/hnsw_file.py): header, then level-0 records from byte 96
    "index_link_past_end": lambda r: _patch_index(r, 96 + 4, "<I", 2_000_000_000),
    "index_link_count": lambda r: _patch_index(r, 96, "<I", 60_000),
    "index_entry_point": lambda r: _patch_index(r, 52, "<I", 1_000_000),
    "index_max_level": lambda r: _patch_index(r, 48, "<i", 40),
    "index_upper_link": lambda r: _patch_index(r, _first_upper(r) + 4, "<I", 3_000_000_000),
    # audit.json (its digest made to match again)
    "meta_count_nan": lambda r: _edit_meta(r, lambda m: _set(_first_report(m), "n", math.nan)),
    "meta_count_inf": lambda r: _edit_meta(r, lambda m: _set(m["audit"], "hidden_size", math.inf)),
    "meta_count_zero": lambda r: _edit_meta(r, lambda m: _set(_first_report(m), "n", 0)),
    "meta_nested": lambda r: _edit_meta(r, lambda m: _set(m["summary"], "x", _nested(900))),
    "meta_saved_at_text": lambda r: _edit_meta(r, lambda m: _set(m, "saved_at", "yesterday")),
    "meta_saved_at_huge": lambda r: _edit_meta(r, lambda m: _set(m, "saved_at", 1e300)),
    # the other files
    "texts_empty": lambda r: _edit_json(r, "texts.json", lambda t: []),
    "texts_short": lambda r: _edit_json(r, "texts.json", lambda t: t[:3]),
    "store_meta_huge": lambda r: _edit_json(
        r, "activations/meta.json", lambda m: _store_layer(m, rows=0, hidden=10**11)
    ),
    "rows_past_texts": lambda r: _edit_npz(
        r, "capture.npz", lambda a: a["row_sequence"].__setitem__(0, 10**9)
    ),
    "valid_rows_past": lambda r: _edit_npz(
        r, "reports/layer_000.npz", lambda a: a["valid_rows"].__setitem__(0, 10**6)
    ),
    "fortran_member": lambda r: _edit_npz(
        r,
        "capture.npz",
        lambda a: _set(a, "seq_nll", __import__("numpy").asfortranarray(a["seq_nll"][:, None])),
    ),
}


def use_all(root: Path, work: Path) -> str:
    """Load a saved audit and use every part: each index queried with its own patterns, the
    tables, the summary, the report, the catalog."""
    from hopaudit.layer.patterns import layer_patterns

    a = hopaudit.load(root)
    for name in a.layer_names:
        rep = a.reports[name]
        x = layer_patterns(a.capture.store, name, rep.valid_rows, rep.normalize)[:4]
        rep.index.query(x, 2)
    a.layers, a.samples, a.summary()
    a.to_html(work / "report.html")
    hopaudit.catalog(root, "audits"), hopaudit.catalog(root, "samples")
    return "used"


def crafted(src: str, work: str, cases: list[str]) -> list[dict]:
    """Each crafted change of the saved audit ``src`` (:data:`CRAFTS`), with every digest made
    to match again (tests/fakes.py's resign), then used whole in a child."""
    from fakes import resign

    out = []
    for case in cases:
        root = Path(work) / case
        shutil.copytree(src, root)
        CRAFTS[case](root)
        resign(root)
        out.append({"case": case, **in_child(lambda root=root: use_all(root, Path(work)))})
    return out


CASES = {
    "fuzz": fuzz,
    "kill_save": kill_save,
    "concurrent": concurrent,
    "concurrent_html": concurrent_html,
    "concurrent_load": concurrent_load,
    "crafted": crafted,
}

if __name__ == "__main__":
    case, args = sys.argv[1], json.loads(sys.argv[2])
    preload(case)
    print(json.dumps(CASES[case](**args)))
