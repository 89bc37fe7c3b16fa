"""``store-rec bench <suite>``: benchmarks writing JSON + markdown table + PNG plot.

Each suite is a module ``store_rec.bench.<suite>`` exposing ``add_arguments(parser)`` and
``run(args) -> store_rec.bench.common.BenchResult``. Suites not present yet are not listed.

``store-rec bench replot OUT.json [...]`` redraws ``OUT.md`` and ``OUT.png`` from benchmark JSONs with
the suites' current table and plot code (nothing is re-measured; the JSON is only read).
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
    "sequence": ("store_rec.bench.sequence", "STORE with behaviour sequences: MoBA vs vanilla step time, FLOPs and memory vs history length"),
    "speed": ("store_rec.bench.speed", "training speed options side by side: fp32 / bf16 / torch.compile (ratios, AUC parity)"),
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
    rp = sub.add_parser("replot", help="redraw OUT.md and OUT.png from existing benchmark JSONs (no re-run)")
    rp.add_argument("json", nargs="+", help="benchmark JSON(s) written by store-rec bench SUITE --out")
    rp.set_defaults(func=_replot)


def _replot(args) -> int:
    import json
    from pathlib import Path

    from store_rec.bench.common import replot
    from store_rec.errors import UserError

    for path in args.json:
        p = Path(path)
        try:
            suite = json.loads(p.read_text()).get("suite")
        except (OSError, ValueError) as e:
            raise UserError(f"{p}: cannot read a benchmark JSON ({e})") from None
        if suite not in SUITES:
            raise UserError(f"{p}: suite {suite!r} is not one of {', '.join(SUITES)}")
        paths = replot(p, importlib.import_module(SUITES[suite][0]))
        sys.stdout.write(f"{p}: wrote " + ", ".join(str(v) for v in paths.values()) + "\n")
    return 0


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
