"""Quantization error (SQNR, dB) of NVFP4 1D, NVFP4 2D, NVFP4 + RHT and MXFP4 on three inputs.

    python bench/quant_error.py [--rows 2048] [--cols 2048] [--device cpu] [--json PATH]

SQNR = 10 log10(sum x^2 / sum (x - dequantize(quantize(x)))^2), higher is better; each
format's expected edge (NVFP4's finer block and E4M3 scale over MXFP4's 32-element
power-of-two scale) is checked here, not assumed. For NVFP4 + RHT the reference is the
transformed tensor (RHT is orthogonal, so the error is the same in either basis).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import nvfp4_compile as nc

SCHEMES = {
    "NVFP4 1x16": dict(),
    "NVFP4 16x16 (2D)": dict(block=(16, 16)),
    "NVFP4 1x16 + RHT": dict(rht=True),
    "MXFP4 1x32": dict(format="mxfp4"),
}


def inputs(rows: int, cols: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(rows, cols, generator=gen)
    student_t = torch.distributions.StudentT(3.0).sample((rows, cols))
    outlier_rows = torch.randn(rows, cols, generator=gen)
    outlier_rows[torch.randperm(rows, generator=gen)[: max(1, rows // 64)]] *= 100.0
    data = {"Gaussian": gaussian, "Student-t (3 dof)": student_t, "outlier rows (1/64 at 100x)": outlier_rows}
    return {k: v.to(device=device, dtype=torch.bfloat16) for k, v in data.items()}


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.double(), x_hat.double()
    return (10 * torch.log10(x.pow(2).sum() / (x - x_hat).pow(2).sum())).item()


def measure(x: torch.Tensor, options: dict) -> float:
    reference = nc.rht(x).to(torch.bfloat16) if options.get("rht") else x
    return sqnr_db(reference, nc.dequantize(nc.quantize(x, **options)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("bench/out/quant_error.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    console = Console()
    start = time.perf_counter()
    results = {name: {scheme: measure(x, opts) for scheme, opts in SCHEMES.items()}
               for name, x in inputs(args.rows, args.cols, args.device).items()}

    table = Table(title=f"Quantization SQNR (dB), {args.rows}x{args.cols} BF16 on {args.device}")
    table.add_column("input")
    for scheme in SCHEMES:
        table.add_column(scheme, justify="right")
    for name, row in results.items():
        best = max(row.values())
        table.add_row(name, *(f"[bold]{v:.2f}[/bold]" if v == best else f"{v:.2f}" for v in row.values()))
    console.print(table)

    for name, row in results.items():
        gap = row["NVFP4 1x16"] - row["MXFP4 1x32"]
        verdict = "NVFP4 beats MXFP4" if gap > 0 else "MXFP4 is not worse than NVFP4"
        console.print(f"{name}: {verdict} by {abs(gap):.2f} dB")
    console.print(f"[dim]{time.perf_counter() - start:.1f} s, torch {torch.__version__}[/dim]")

    report = {"rows": args.rows, "cols": args.cols, "device": args.device, "torch": torch.__version__,
              "sqnr_db": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
