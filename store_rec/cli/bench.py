"""``store-rec bench <suite>``: benchmarks writing JSON + markdown table + PNG plot.

Each suite is a module ``store_rec.bench.<suite>`` exposing ``add_arguments(parser)`` and
``run(args) -> store_rec.bench.common.BenchResult``. Suites not present yet are not listed.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "attention": ("store_rec.bench.attention", "MoBA vs dense SDPA: fwd+bwd time and FLOPs vs sequence length and sparsity"),
    "train": ("store_rec.bench.train", "end-to-end training samples/s and TFLOPs per batch of 1024, STORE vs baselines"),
    "data": ("store_rec.bench.data", "loader samples/s (Avazu-shaped and synthetic schemas)"),
    "tokenizer": ("store_rec.bench.tokenizer", "tokenizer encode items/s and training time"),
    "prepare": ("store_rec.bench.prepare", "`data prepare table` on a generated wide CSV: peak RSS and rows/s"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark suite (JSON + table + plot)")
    sub = p.add_subparsers(dest="suite", metavar="SUITE")
    sub.required = True
    for name, (mod, help_) in SUITES.items():
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--out", required=True, help="output JSON path (OUT.md and OUT.png are written beside it)")
        sp.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke mode)")
        module.add_arguments(sp)
        sp.set_defaults(func=_runner(module))


def _runner(module):
    def run(args) -> int:
        from pathlib import Path

        from store_rec.bench.common import markdown_table, write_result
        from store_rec.fileio import check_output_path

        out = Path(args.out)
        for path in (out, out.with_suffix(".md"), out.with_suffix(".png")):  # before the (long) run
            check_output_path(path, flag="--out")
        result = module.run(args)
        paths = write_result(result, args.out)
        sys.stdout.write(markdown_table(result.records, result.columns))
        for k, v in result.summary.items():
            sys.stdout.write(f"{k}: {v}\n")
        sys.stdout.write("wrote " + ", ".join(str(p) for p in paths.values()) + "\n")
        return 0

    return run
