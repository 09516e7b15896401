"""Targets, plain-text tables and Markdown tables for ``bench_batchnorm.py`` results.

Works on the JSON-able result dictionary only (no torch), so the tables in
``benchmarks/README.md`` are rendered from exactly the numbers that were measured.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]

NOISE_SHAPE_CLOSE = 1.2  # our reading of "close to one multiply"


def bn_limit(variant: str, layout: str) -> float:
    """The speed target for a bnkit variant, as a ratio to native torch BN."""
    if variant == "plain":
        return 1.05
    if variant == "renorm":
        return 1.4 if layout == "2d" else 1.15
    if variant == "ghost":
        return 1.1 if layout == "nchw" else 2.0
    raise ValueError(variant)


def keras_min_speedup(variant: str) -> float:
    return 5.0 if variant == "ghost" else 2.0


def keras_comparison(results: Row) -> list[Row]:
    """One row per (framework, shape, variant, mode): Keras ms, bnkit ms, speed-up."""
    bnkit_ms = {(r["shape"], r["layout"], r["variant"], r["mode"]): r["bnkit_ms"] for r in results.get("bn", [])}
    bnkit_load = {(r["shape"], r["layout"], r["variant"], r["mode"]): r.get("foreign_load", 0.0) for r in results.get("bn", [])}
    load: dict[tuple[str, str, str, str], float] = {}
    for backend in ("tf_keras", "keras3"):
        for r in results.get("keras", {}).get(backend, {}).get("rows", []):
            key = (backend, r["shape"], r["variant"], r["mode"])
            load[key] = max(load.get(key, 0.0), r.get("foreign_load", 0.0))
    rows: list[Row] = []
    tfk = results.get("keras", {}).get("tf_keras", {})
    by_key: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in tfk.get("rows", []):
        by_key.setdefault((r["shape"], r["variant"], r["mode"]), {})[r["framework"]] = r["median_ms"]
    for (shape, variant, mode), styles in by_key.items():
        layout = "2d" if shape.count("x") == 1 else "nchw"
        ours = bnkit_ms.get((shape, layout, variant, mode))
        ours_cl = bnkit_ms.get((shape, "channels_last", variant, mode))
        best = min(styles.values())
        rows.append({
            "framework": "tf_keras", "shape": shape, "variant": variant, "mode": mode,
            "keras_eager_ms": styles.get("tf_keras (eager)"), "keras_function_ms": styles.get("tf_keras (tf.function)"),
            "bnkit_ms": ours, "bnkit_channels_last_ms": ours_cl, "bnkit_source": "main",
            "speedup": None if ours is None else best / ours, "limit": keras_min_speedup(variant),
            "load": max(load.get(("tf_keras", shape, variant, mode), 0.0), bnkit_load.get((shape, layout, variant, mode), 0.0)),
        })
    k3 = results.get("keras", {}).get("keras3", {})
    pairs: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in k3.get("rows", []):
        pairs.setdefault((r["shape"], r["variant"], r["mode"]), {})[r["framework"]] = r["median_ms"]
    for (shape, variant, mode), ms in pairs.items():
        theirs, ours = ms.get("keras3 (torch)"), ms.get("bnkit")
        rows.append({
            "framework": "keras3 (torch)", "shape": shape, "variant": variant, "mode": mode,
            "keras_eager_ms": theirs, "keras_function_ms": None, "bnkit_ms": ours,
            "bnkit_channels_last_ms": None, "bnkit_source": "same",
            "speedup": None if theirs is None or ours is None else theirs / ours,
            "limit": keras_min_speedup(variant), "load": load.get(("keras3", shape, variant, mode)),
        })
    if k3.get("rows"):
        for shape in sorted({r["shape"] for r in k3["rows"]}):
            for mode in ("train", "infer"):
                rows.append({
                    "framework": "keras3 (torch)", "shape": shape, "variant": "ghost", "mode": mode,
                    "keras_eager_ms": None, "keras_function_ms": None, "bnkit_ms": None,
                    "bnkit_channels_last_ms": None, "bnkit_source": "n/a: no vbs",
                    "speedup": None, "limit": 5.0, "load": None,
                })
    return rows


def targets(results: Row) -> list[Row]:
    """Every checked figure with its limit and verdict (``met`` is None when n/a)."""
    out: list[Row] = []
    for r in results.get("bn", []):
        limit = bn_limit(r["variant"], r["layout"])
        out.append({
            "target": f"{r['variant']} <= {limit:g}x native ({r['layout']})",
            "case": f"{r['shape']} {r['layout']} {r['mode']}", "value": r["ratio"], "limit": limit,
            "met": r["ratio"] <= limit, "kind": "max", "load": r.get("foreign_load"),
        })
    for r in keras_comparison(results):
        value = r["speedup"]
        out.append({
            "target": f"{r['variant']} >= {r['limit']:g}x faster than {r['framework']}",
            "case": f"{r['shape']} {r['mode']}", "value": value, "limit": r["limit"],
            "met": None if value is None else value >= r["limit"], "kind": "min", "load": r.get("load"),
        })
    for r in results.get("dropout", []):
        limit = 0.5 if r["test"] == "dropout" else NOISE_SHAPE_CLOSE
        out.append({
            "target": f"{r['label']} <= {limit:g}x {r['reference']}",
            "case": f"{r['shape']} {r['mode']}", "value": r["ratio"], "limit": limit,
            "met": r["ratio"] <= limit, "kind": "max", "load": r.get("foreign_load"),
        })
    return out


def summarize(checks: Sequence[Row], contended: float) -> list[Row]:
    """Group checks by target: cells met / measured, worst value, verdict.

    Cells whose block ran contended (load above ``contended``) are counted apart and left
    out of the verdict.
    """
    groups: dict[str, list[Row]] = {}
    for c in checks:
        groups.setdefault(c["target"], []).append(c)
    summary: list[Row] = []
    for target, items in groups.items():
        noisy = [c for c in items if c["met"] is not None and (c.get("load") or 0.0) > contended]
        measured = [c for c in items if c["met"] is not None and c not in noisy]
        worst: Row | None = None
        if measured:
            key = (lambda c: c["value"]) if items[0]["kind"] == "max" else (lambda c: -c["value"])
            worst = max(measured, key=key)
        met = sum(1 for c in measured if c["met"])
        verdict = "n/a" if not measured else ("MET" if met == len(measured) else ("NOT MET" if met == 0 else "PARTLY"))
        summary.append({
            "target": target, "met": f"{met}/{len(measured)}" if measured else "n/a",
            "worst": "n/a" if worst is None else f"{worst['value']:.3f} ({worst['case']})", "verdict": verdict,
            "contended": len(noisy),
        })
    return summary


def contended_above(results: Row) -> float:
    """The run's --quiet-threshold: blocks with more foreign load than this were contended."""
    return float(results["info"].get("quiet", {}).get("threshold", 0.25))


def _load(value: float | None, threshold: float) -> str:
    """Foreign load, starred when the block ran contended."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" + ("*" if value > threshold else "")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def bn_table(results: Row) -> tuple[list[str], list[list[str]]]:
    header = ["shape", "layout", "variant", "mode", "bnkit ms", "torch ms", "ratio", "ratio IQR", "target", "met", "load"]
    body = []
    for r in results.get("bn", []):
        limit = bn_limit(r["variant"], r["layout"])
        body.append([
            r["shape"], r["layout"], r["variant"], r["mode"], _fmt(r["bnkit_ms"]), _fmt(r["torch_ms"]),
            _fmt(r["ratio"]), f"{r['pair_p25']:.2f}-{r['pair_p75']:.2f}", f"<= {limit:g}",
            "yes" if r["ratio"] <= limit else "NO", _load(r.get("foreign_load"), contended_above(results)),
        ])
    return header, body


def dropout_table(results: Row) -> tuple[list[str], list[list[str]]]:
    header = ["test", "shape", "mode", "bnkit ms", "reference", "ref ms", "ratio", "target", "met", "load"]
    body = []
    for r in results.get("dropout", []):
        limit = 0.5 if r["test"] == "dropout" else NOISE_SHAPE_CLOSE
        body.append([
            r["label"], r["shape"], r["mode"], _fmt(r["ours_ms"]), r["reference"], _fmt(r["ref_ms"]),
            _fmt(r["ratio"]), f"<= {limit:g}", "yes" if r["ratio"] <= limit else "NO",
            _load(r.get("foreign_load"), contended_above(results)),
        ])
    return header, body


def keras_table(results: Row) -> tuple[list[str], list[list[str]]]:
    header = ["vs", "shape", "variant", "mode", "Keras eager ms", "tf.function ms", "bnkit ms",
              "bnkit measured in", "speed-up", "target", "met", "bnkit channels_last ms", "speed-up vs it", "load"]
    body = []
    for r in keras_comparison(results):
        met = "n/a" if r["speedup"] is None else ("yes" if r["speedup"] >= r["limit"] else "NO")
        body.append([
            r["framework"], r["shape"], r["variant"], r["mode"], _fmt(r["keras_eager_ms"]),
            _fmt(r["keras_function_ms"]), _fmt(r["bnkit_ms"]), r["bnkit_source"],
            "n/a" if r["speedup"] is None else f"{r['speedup']:.3f}x", f">= {r['limit']:g}x", met,
            _fmt(r["bnkit_channels_last_ms"]), _speedup_cl(r), _load(r.get("load"), contended_above(results)),
        ])
    return header, body


def _speedup_cl(r: Row) -> str:
    """tf_keras (NHWC) against bnkit on the same memory order (channels_last), for information."""
    ours = r["bnkit_channels_last_ms"]
    if ours is None:
        return "n/a"
    best = min(v for v in (r["keras_eager_ms"], r["keras_function_ms"]) if v is not None)
    return f"{best / ours:.3f}x"


def summary_table(results: Row) -> tuple[list[str], list[list[str]]]:
    rows = summarize(targets(results), contended_above(results))
    header = ["target", "cells met", "worst", "verdict", "contended cells (left out)"]
    return header, [[r["target"], r["met"], r["worst"], r["verdict"], str(r["contended"])] for r in rows]


def text(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def render(results: Row, fmt: str) -> str:
    """All tables of one run, as plain text (``fmt="text"``) or Markdown."""
    draw = text if fmt == "text" else markdown
    info = results["info"]
    title = (f"allocator: {info['allocator']}; torch {info['torch']}, {info['threads']} threads; "
             f"{info['cpu_model']} ({info['usable_cpus']} usable CPUs)")
    load = (f"load average (1 min) at start / end: {info.get('loadavg_start', 0.0):.2f} / {info.get('loadavg_end', 0.0):.2f};"
            " 'load' = CPUs kept busy by other processes during that block, * = contended (above"
            f" {contended_above(results):g}): its times and ratios are unreliable")
    parts = [title, load]
    if info.get("redo_contended_from"):
        parts.append(f"blocks that ran uncontended were reused from {info['redo_contended_from']}; the rest were re-timed")
    for name, table in (("BatchNormalization: bnkit vs native torch (same run, interleaved)", bn_table),
                        ("Dropout", dropout_table),
                        ("Keras comparison (speed-up = Keras ms / bnkit ms)", keras_table),
                        ("Targets", summary_table)):
        header, body = table(results)
        if body:
            parts += ["", name if fmt == "text" else f"**{name}**", "", draw(header, body)]
    if any(r[0] == "keras3 (torch)" for r in keras_table(results)[1]):
        note = ("bnkit measured in: main = this process (tf_keras ran in another process, at another time);"
                " same = interleaved with Keras 3 in its process; no vbs = Keras 3 has no virtual_batch_size.")
        parts += ["", note]
    for backend, data in results.get("keras", {}).items():
        if "error" in data:
            parts += ["", f"{backend} comparison failed: {data['error']}"]
    return "\n".join(parts) + "\n"


def side_by_side(runs: Sequence[Row], labels: Sequence[str]) -> str:
    """Markdown: the target summary of several runs (e.g. two allocators) next to each other."""
    summaries = [{r["target"]: r for r in summarize(targets(run), contended_above(run))} for run in runs]
    header = ["target"] + [f"{label}: {col}" for label in labels for col in ("cells met", "worst", "verdict")]
    body = []
    for target in summaries[0]:
        row = [target]
        for summary in summaries:
            r = summary.get(target)
            row += ["n/a", "n/a", "n/a"] if r is None else [r["met"], r["worst"], r["verdict"]]
        body.append(row)
    return markdown(header, body) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python _report.py RUN.json [RUN2.json ...]``: Markdown tables of saved runs."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--labels", help="comma-separated names for the side-by-side summary")
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    labels = args.labels.split(",") if args.labels else [path.stem for path in args.runs]
    if len(runs) > 1:
        print(side_by_side(runs, labels))
    for label, run in zip(labels, runs):
        print(f"### {label}\n\n{render(run, 'markdown')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
