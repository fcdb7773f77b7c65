"""Results tables in the paper's layout: one row per method, scale and degradation, PSNR/SSIM per
benchmark, as markdown and CSV (``dlsn eval --table``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .utils import atomic_write

__all__ = ["PAPER_BENCHMARKS", "results_row", "markdown_table", "write_results_table"]

# The benchmark order of the paper's tables.
PAPER_BENCHMARKS = ("Set5", "Set14", "B100", "Urban100", "Manga109")

_FIXED_COLUMNS = ("method", "scale", "degradation")


def results_row(method, scale, degradation, means):
    """The table row of ``method`` at ``scale`` and ``degradation``; ``means``: {benchmark: {"psnr", "ssim"}}."""
    row = {"method": method, "scale": f"x{scale}", "degradation": degradation.upper()}
    for name, mean in means.items():
        row[f"{name} PSNR"] = f"{mean['psnr']:.2f}"
        row[f"{name} SSIM"] = f"{mean['ssim']:.4f}"
    return row


def _ordered_benchmarks(names):
    known = [b for b in PAPER_BENCHMARKS if b in names]
    return known + [n for n in names if n not in known]


def markdown_table(rows, benchmarks):
    """The paper's layout: one row per method and scale, `PSNR/SSIM` per benchmark."""
    header = ["Method", "Scale", "Degradation", *benchmarks]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + [":---:"] * len(benchmarks)) + "|"]
    for row in rows:
        cells = [row["method"], row["scale"], row["degradation"]]
        for name in benchmarks:
            psnr, ssim = row.get(f"{name} PSNR", ""), row.get(f"{name} SSIM", "")
            cells.append(f"{psnr}/{ssim}" if psnr else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_rows(csv_path: Path):
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not set(_FIXED_COLUMNS) <= set(reader.fieldnames):
            raise ValueError(f"--table: {csv_path} exists but is not a dlsn results table")
        return [dict(row) for row in reader]


def write_results_table(path, method, scale, degradation, means):
    """Add (or replace) the row `method` x `scale` x `degradation` with `means` ({benchmark: {"psnr",
    "ssim"}}) in the table at `path` (`.md` and `.csv`, suffixes added); other rows are kept.
    Rows sort by degradation, scale, then method. Returns the two paths written."""
    base = Path(path)
    if base.suffix in (".md", ".csv"):
        base = base.with_suffix("")
    csv_path, md_path = base.with_suffix(".csv"), base.with_suffix(".md")
    new = results_row(method, scale, degradation, means)
    rows = [r for r in _read_rows(csv_path)
            if tuple(r[c] for c in _FIXED_COLUMNS) != tuple(new[c] for c in _FIXED_COLUMNS)]
    rows.append(new)
    rows.sort(key=lambda r: (r["degradation"], int(r["scale"].lstrip("x")), r["method"]))
    names = {key[: -len(" PSNR")] for r in rows for key in r if key.endswith(" PSNR") and r[key]}
    benchmarks = _ordered_benchmarks(sorted(names))
    fields = [*_FIXED_COLUMNS] + [f"{b} {m}" for b in benchmarks for m in ("PSNR", "SSIM")]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=fields, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in fields})
    atomic_write(csv_path, lambda handle: handle.write(table.getvalue().encode()))
    markdown = ("PSNR (dB) / SSIM on the Y channel, borders of `scale` pixels shaved.\n\n"
                + markdown_table(rows, benchmarks) + "\n")
    atomic_write(md_path, lambda handle: handle.write(markdown.encode()))
    return [md_path, csv_path]
