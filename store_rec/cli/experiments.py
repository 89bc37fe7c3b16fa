"""``store-rec experiments``: the paper's tables and figures, regenerated in one command.

    store-rec experiments --config configs/experiments/paper.yaml \\
        [--out runs/experiments] [--results docs/RESULTS.md] [--jobs N] [--only table1,epochs]
        [--datasets movielens] [--variants STORE,DLRM] [--tiny]

Builds the datasets / item embeddings / SID tables the experiments need (under OUT/data/, or
OUT/data-tiny/ with --tiny), runs every training run that has no current result yet (under OUT/runs/,
or OUT/runs-tiny/; ``--force``: all of them), and writes the results markdown plus its PNG plots
(``<results dir>/results/``). ``--tiny`` shrinks everything to a smoke test (what CI runs); its output
is not a result.

Every artifact has a build record (``<artifact>.build.json``: the store-rec arguments it was built with
and its inputs' records) and every run a ``run.json`` (its overrides, the sha256 of the base training
config and of the records of the data / SID table it read). When the config now asks for something
else, the artifact is rebuilt, with everything built from it, and the runs that used it are rerun.

``--report-only`` trains and builds nothing: it rewrites the markdown from the runs whose results are
current; runs whose artifacts or results are missing or out of date are left out (each experiment
says "N of M runs").

``--adopt-artifacts`` is for an OUT directory made before build records existed: artifacts without a
record, and finished runs whose run.json has no base config hash, are recorded as if they had been
made with the current config (and the current base config), instead of being rebuilt / rerun. Use it
once, only when that is true (and not for an OUT made with --tiny before this change: those artifacts
sit under OUT/data/); artifacts and runs with a record that differs are still rebuilt / rerun. With
--report-only it adopts without training anything:

    store-rec experiments --config configs/experiments/paper.yaml --out runs/experiments --adopt-artifacts --report-only

``--replot JSON [JSON ...]`` only redraws figures: each ``<results dir>/results/<name>.json`` (the plotted
numbers, written beside every PNG) becomes ``<name>.png`` again with the current plotting code; no config,
runs or training are needed:

    store-rec experiments --replot docs/results/*.json
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("experiments", help="run the paper's experiments and write RESULTS.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiments YAML (configs/experiments/paper.yaml); required unless --replot")
    p.add_argument("--out", default="runs/experiments", help="artifacts and runs (default runs/experiments)")
    p.add_argument("--results", default="docs/RESULTS.md", help="markdown to write (default docs/RESULTS.md)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs (default: the YAML's jobs)")
    p.add_argument("--only", default=None, help="comma-separated experiment names")
    p.add_argument("--datasets", default=None, help="comma-separated dataset names: run / report only these")
    p.add_argument("--variants", default=None, help="comma-separated variant (model) names: run / report only these")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (CI); artifacts and runs go to OUT/data-tiny, OUT/runs-tiny")
    p.add_argument("--force", action="store_true", help="re-run runs that already have results")
    p.add_argument("--report-only", action="store_true",
                   help="build and train nothing; rewrite the markdown from the runs whose results are current")
    p.add_argument("--adopt-artifacts", action="store_true",
                   help="for an OUT made before build records existed: record existing artifacts without a build record, "
                        "and finished runs without a base config hash, as made with the current config instead of "
                        "rebuilding / rerunning them (explicit opt-in; see the description above)")
    p.add_argument("--replot", nargs="+", metavar="JSON", default=None,
                   help="only redraw the PNGs of these figure JSONs (results/<name>.json); needs no --config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import shlex
    import sys
    from pathlib import Path

    from store_rec.experiments.report import write_results
    from store_rec.experiments.runner import base_config_sha256, execute, finished_runs, plan_runs
    from store_rec.experiments.spec import load_spec, restrict

    log = logging.getLogger("store_rec.experiments")
    if args.replot:
        from store_rec.experiments.report import replot

        for j in args.replot:
            print(f"{j}: wrote {replot(Path(j))}")
        return 0
    if not args.config:
        from store_rec.errors import UserError

        raise UserError("--config: required (unless --replot)")
    from store_rec.fileio import check_output_path

    spec = load_spec(args.config)
    if args.datasets or args.variants:
        spec = restrict(spec, [x for x in args.datasets.split(",") if x] if args.datasets else None,
                        [x for x in args.variants.split(",") if x] if args.variants else None)
    # every output checked before anything is built: none equals, contains or sits inside an input
    inputs = [("--config", args.config), ("base", spec.base)] + [
        (f"datasets.{n}.prepare.source", d.prepare.source) for n, d in spec.datasets.items()]
    check_output_path(args.out, inputs=inputs, kind="dir")
    check_output_path(args.results, inputs=inputs, flag="--results")
    check_output_path(Path(args.results).parent / "results", inputs=inputs, kind="dir", flag="--results (plots folder)")
    base_sha = base_config_sha256(spec.base, args.config)
    out = Path(args.out)
    only = [x for x in args.only.split(",") if x] if args.only else None
    runs = plan_runs(spec, out, only, tiny=args.tiny, build=not args.report_only, adopt=args.adopt_artifacts)
    if not args.report_only:
        counts = execute(runs, spec.base, args.jobs or spec.jobs, force=args.force, base_sha=base_sha, adopt=args.adopt_artifacts)
        print(f"experiments: {counts['runs']} runs ({counts['ran']} trained now)")
    done = finished_runs(runs, base_sha, adopt=args.adopt_artifacts)
    if args.report_only:
        log.info("experiments: --report-only: %d of %d planned runs have current results", len(done), len(runs))
    # the config's own header (fair.yaml -> fair.header.md), else the directory's RESULTS_HEADER.md
    own = Path(args.config).with_suffix(".header.md")
    header_file = own if own.exists() else Path(args.config).with_name("RESULTS_HEADER.md")
    header = header_file.read_text() if header_file.exists() else None
    # --adopt-artifacts is a one-off migration and --report-only only rewrites the markdown: neither is
    # part of how the results are made (a plain re-run reuses the current runs and writes the same file)
    command = "store-rec experiments " + " ".join(
        shlex.quote(a) for a in sys.argv[2:] if a not in ("--adopt-artifacts", "--report-only")) \
        if sys.argv[1:2] == ["experiments"] else f"store-rec experiments --config {args.config}"
    path = write_results(spec, runs, Path(args.results), command, args.tiny, header, done=done)
    print(f"wrote {path} and its plots in {path.parent / 'results'}")
    return 0
