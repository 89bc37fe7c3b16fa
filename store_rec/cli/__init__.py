"""``store-rec`` command line: one subcommand module per verb.

Each module in :data:`SUBCOMMANDS` exposes ``register(subparsers)``, which adds its parser and sets
``func=<callable(args) -> int>`` as a default. Modules keep heavy imports (torch, torchrec) inside
their ``func`` so ``store-rec --help`` stays fast. Errors the user can fix (bad input, bad config)
are raised as :class:`store_rec.errors.UserError` (or ConfigError/SchemaError/FileNotFoundError) and
printed as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

# verb -> module (relative to store_rec.cli). Modules that are not present yet are skipped.
SUBCOMMANDS = {
    "quickstart": "quickstart",
    "data": "data",
    "pretrain": "pretrain",
    "tokenize": "tokenize",
    "train": "train",
    "predict": "predict",
    "export": "export",
    "plan": "plan",
    "bench": "bench",
    "experiments": "experiments",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="store-rec",
        description="STORE ranking models on TorchRec: data, pre-training, tokenization, training, planning, benchmarks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for verb, mod in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"store_rec.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"store_rec.cli.{mod}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from store_rec.errors import USER_ERRORS

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    # store_rec logs at INFO (DEBUG with -v); other libraries only from WARNING (fbgemm_gpu logs a dozen
    # "Successfully loaded ..." INFO lines on the root logger at import). force: that import can run
    # before this line and set the root logger up at WARNING, which would swallow our INFO records.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("store_rec").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        rc = args.func(args)
    except USER_ERRORS as e:
        msg = str(e)
        if isinstance(e, KeyError) and len(e.args) == 1:
            msg = str(e.args[0])
        print(f"store-rec {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
