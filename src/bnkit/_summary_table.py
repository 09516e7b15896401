"""The text tables of :class:`bnkit.summary.Summary`: the classic Keras 2 layout and a torch one.

Columns have the classic widths (Keras 2: 29/26/10 characters, ending at 29/55/65; torch:
40/30/20) and widen to fit their longest cell, so full layer type names such as
``BatchNormalization`` are never cut.  Optional columns: ``MACs`` (multiply-adds of the row's
calls) and ``Param bytes``/``Output bytes``; their totals follow the parameter totals.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .summary import OutputShape, Row, Shape, Summary

__all__ = ["keras2_lines", "torch_lines"]

_KERAS2_WIDTHS = (29, 26, 10)  # int(65 * [.45, .85, 1.]) as column ends
_TORCH_WIDTHS = (40, 30, 20)
_EXTRA_WIDTHS = {"MACs": 16, "Param bytes": 14, "Output bytes": 14}


def _cells(fields: Sequence[str], widths: Sequence[int]) -> str:
    """One row: each cell padded to its column, one space at least before the next column."""
    line, end = "", 0
    for i, (field, width) in enumerate(zip(fields, widths)):
        if i:
            line = line[:-1] + " "
        end += width
        line = (line + field)[:end]
        line += " " * (end - len(line))
    return line


def _widths(base: Sequence[int], headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(b, len(h) + 1, *(len(r[i]) + 1 for r in rows)) for i, (b, h) in enumerate(zip(base, headers))]


def _extra(s: Summary) -> tuple[list[str], list[int]]:
    headers = (["MACs"] if s.show_macs else []) + (["Param bytes", "Output bytes"] if s.show_memory else [])
    return headers, [_EXTRA_WIDTHS[h] for h in headers]


def _extra_cells(s: Summary, row: Row) -> list[str]:
    cells = [f"{row.macs:,}"] if s.show_macs else []
    if s.show_memory:
        cells += [f"{row.param_bytes:,}", f"{row.output_bytes:,}"]
    return cells


_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def _scaled(count: int) -> str:
    """``15.47 G``; counts under a thousand as they are."""
    for size, unit in _SI:
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return str(count)


def _mib(count: int) -> str:
    return f"{count / 2**20:.2f} MiB"


def _totals(s: Summary) -> list[str]:
    lines = [f"Total params: {s.total:,}", f"Trainable params: {s.trainable:,}",
             f"Non-trainable params: {s.non_trainable:,}"]
    if s.show_macs:
        lines.append(f"Total MACs (multiply-adds): {s.macs:,} = {_scaled(s.macs)}")
    if s.show_memory:
        what = "parameters and moving statistics" if s.style == "keras" else "parameters"
        lines += [f"Input size: {s.input_bytes:,} bytes ({_mib(s.input_bytes)})",
                  f"Forward activations: {s.activation_bytes:,} bytes ({_mib(s.activation_bytes)}; "
                  "the outputs of every row)",
                  f"Params size: {s.param_bytes:,} bytes ({_mib(s.param_bytes)}; {what})",
                  f"Estimated total: {s.estimated_bytes:,} bytes ({_mib(s.estimated_bytes)})"]
    return lines


def keras_shape(shape: OutputShape) -> str:
    return "(unused)" if shape is None else str(shape)


def keras2_lines(s: Summary) -> list[str]:
    extra, extra_widths = _extra(s)
    headers = ["Layer (type)", "Output Shape", "Param #", *extra]
    rows = [[f"{row.name} ({row.type})", keras_shape(row.output_shape), str(row.params), *_extra_cells(s, row)]
            for row in s.rows]
    widths = _widths((*_KERAS2_WIDTHS, *extra_widths), headers, rows)
    width = sum(widths)
    lines = [f'Model: "{s.model_name}"', "_" * width, _cells(headers, widths), "=" * width]
    for i, row in enumerate(rows):
        lines.append(_cells(row, widths))
        lines.append("=" * width if i == len(rows) - 1 else "_" * width)
    return lines + _totals(s) + ["_" * width]


def torch_shape(shape: OutputShape) -> str:
    if shape is None or isinstance(shape, str):
        return keras_shape(shape)

    def one(dims: Shape) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in dims) + "]"

    return one(shape) if isinstance(shape, tuple) else "[" + ", ".join(one(d) for d in shape) + "]"


def torch_lines(s: Summary) -> list[str]:
    extra, extra_widths = _extra(s)
    headers = ["Layer (type)", "Output Shape", "Param #", *extra]
    rows = [["  " * max(row.depth - 1, 0) + f"{row.name} ({row.type})", torch_shape(row.output_shape),
             f"{row.params:,}", *_extra_cells(s, row)] for row in s.rows]
    widths = _widths((*_TORCH_WIDTHS, *extra_widths), headers, rows)
    width = sum(widths)
    lines = ["=" * width, _cells(headers, widths), "=" * width]
    lines += [_cells(row, widths) for row in rows]
    return lines + ["=" * width, *_totals(s), "=" * width]
