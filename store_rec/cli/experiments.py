"""``store-rec experiments``: the paper's tables and figures, regenerated in one command.

    store-rec experiments --config configs/experiments/paper.yaml \\
        [--out runs/experiments] [--results docs/RESULTS.md] [--jobs N] [--only table1,epochs] [--tiny]

Builds the datasets / item embeddings / SID tables the experiments need, runs every training run
that has no result yet (``--force``: all of them), and writes the results markdown plus its PNG
plots (``<results dir>/results/``). ``--report-only`` rewrites the markdown from existing runs.
``--tiny`` shrinks everything to a smoke test (what CI runs); its output is not a result.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("experiments", help="run the paper's experiments and write RESULTS.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiments YAML (configs/experiments/paper.yaml)")
    p.add_argument("--out", default="runs/experiments", help="artifacts and runs (default runs/experiments)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to write (default docs/RESULTS.md)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: the YAML's jobs)")
    p.add_argument("--only", default=None, help="comma-separated experiment names")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (CI)")
    p.add_argument("--force", action="store_true", help="re-run runs that already have results")
    p.add_argument("--report-only", action="store_true", help="do not train; rewrite the markdown from existing runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from store_rec.experiments.report import write_results
    from store_rec.experiments.runner import execute, plan_runs
    from store_rec.experiments.spec import load_spec

    spec = load_spec(args.config)
    out = Path(args.out)
    only = [x for x in args.only.split(",") if x] if args.only else None
    runs = plan_runs(spec, out, only, tiny=args.tiny)
    if not args.report_only:
        counts = execute(runs, spec.base, args.jobs or spec.jobs, force=args.force)
        print(f"experiments: {counts['runs']} runs ({counts['ran']} trained now)")
    header_file = Path(args.config).with_name("RESULTS_HEADER.md")
    header = header_file.read_text() if header_file.exists() else None
    command = "store-rec " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["experiments"] else \
        f"store-rec experiments --config {args.config}"
    path = write_results(spec, runs, Path(args.results), command, args.tiny, header)
    print(f"wrote {path} and its plots in {path.parent / 'results'}")
    return 0
