"""Convergence study: a GPT trained in high precision, with the NVFP4 recipe, and with each
part of the recipe removed, on the same data, seed and schedule.

    python bench/convergence.py --size tiny                      # CPU, minutes (CI runs a shorter one)
    python bench/convergence.py --size small --out DIR           # ~32M parameters, one GPU, < 8 minutes
    python bench/convergence.py --size medium --out DIR          # ~127M parameters, one GPU, hours
    python bench/convergence.py --runs baseline,nvfp4,mxfp4      # a subset of the runs
    python bench/convergence.py --plot DIR/results.json          # redraw the table and plot only (into --out)

Runs (``--runs``; all by default, in this order):

    baseline       the default Inductor backend; high precision (BF16 autocast on GPU, FP32 on CPU)
    nvfp4          backend="nvfp4": the paper's recipe
    no_sr          recipe {"stochastic_rounding": False}
    no_rht         recipe {"rht": False}
    weight_1d      recipe {"weight_2d": False}: 1x16 weight scales instead of 16x16
    no_bf16_tail   bf16_last_blocks_fraction 0: every block quantized (the head stays high precision)
    mxfp4          recipe {"format": "mxfp4"}: the rest of the recipe unchanged
    baseline_repeat  the baseline again (same seed and data): its gap to the baseline is the
                   run-to-run noise of nondeterministic GPU kernels (zero on CPU), the scale
                   against which the other gaps are read

Model: ``nvfp4_compile.gpt`` (RMSNorm, rotary embeddings, SwiGLU, blocks in ``blocks.<i>``,
``lm_head``), byte-level tokens. Corpus: the ``*.py`` files of the running Python's standard
library, test directories and site-packages skipped, split by a hash of each file's path
(5% validation); its file list and SHA-256 are recorded in the results. Training: AdamW,
warmup-stable-decay learning rate (linear decay over the last 20% of the steps), gradient
clipping at 1.0. The training loop is ``nvfp4_compile.demo`` (shared with
``nvfp4-compile demo``).

Output (``--out``, default ``bench/out/convergence_<size>``): ``results.json`` (per run: the
validation curve, final validation loss and its relative gap to the baseline, the same at the
decay start, tokens/s, peak memory, GEMMs in FP4 and in high precision, compile time; the
corpus and the configuration), ``summary.txt`` (the table), ``loss_curves.png`` (needs
matplotlib; without it the plot is skipped with a message, and ``--plot`` draws it later).

Budgets: ``tiny`` (0.25M parameters, 100 steps of 512 tokens) takes minutes on a 2-core CPU.
``small`` (31.9M parameters, 80 steps of 16k tokens) was sized for all eight runs within 8
minutes on one H100: measured 361 s there (torch 2.11, part of the compile cache warm); in an
earlier run of the same shapes on a fresh machine the seven compilations took 232 s, 51 s more
than in the measured one, so about 7 minutes from cold. At this size an NVFP4 step took as
long at 8k tokens as at 16k (165 and 167 ms). ``medium`` (127M parameters, 4000 steps of 32k
tokens) is hours.

This script prints numbers; it draws no conclusions. Tokens/s of the quantized runs measure
the current kernels (CUDA: Triton quantize/RHT plus dequantize and a BF16 GEMM for NVFP4; the
plain-PyTorch reference for MXFP4 and on CPU), not FP4 hardware.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from nvfp4_compile import demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(demo.SIZES), default="tiny")
    parser.add_argument("--runs", default=",".join(demo.RUNS),
                        help=f"comma-separated subset of {','.join(demo.RUNS)} (default: all)")
    parser.add_argument("--steps", type=int, help="training steps (default: the size's)")
    parser.add_argument("--out", help="output directory (default: bench/out/convergence_<size>)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    parser.add_argument("--dtype", choices=sorted(demo.DTYPES),
                        help="high-precision compute: bf16 autocast (default on GPU) or fp32 (default on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", action="store_true", help="write graph dumps of each quantized run")
    parser.add_argument("--plot", metavar="RESULTS_JSON", help="only redraw the table and plot of a results file")
    args = parser.parse_args(argv)
    console = Console()

    if args.plot:
        path = Path(args.plot)
        out = Path(args.out) if args.out else path.parent
        out.mkdir(parents=True, exist_ok=True)
        demo.write_results(json.loads(path.read_text()), out, console)
        return 0

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    out = args.out or f"bench/out/convergence_{args.size}"
    demo.run_study(runs, size_name=args.size, steps=args.steps, device=args.device, dtype=args.dtype,
                   seed=args.seed, out=out, threads=args.threads, dump=args.dump, console=console,
                   command="python bench/convergence.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
