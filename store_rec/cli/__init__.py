"""``store-rec`` command line: one subcommand module per verb.

Each module in :data:`SUBCOMMANDS` exposes ``register(subparsers)``, which adds its parser and sets
``func=<callable(args) -> int>`` as a default. Modules keep heavy imports (torch, torchrec) inside
their ``func`` so ``store-rec --help`` stays fast. Errors the user can fix (bad input, bad config)
are raised as :class:`store_rec.errors.UserError` (or ConfigError/SchemaError/FileNotFoundError) and
printed as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.

Signals: SIGTERM (sent by ``timeout``, slurm, kubernetes) and SIGINT (Ctrl-C) unwind the command like an
error, so atomic outputs remove their hidden temp files/dirs; the exit code is 128 + the signal number
(143 / 130). A closed stdout (``store-rec data info D | head -1``) ends the command quietly with 141, as
unix tools killed by SIGPIPE do.
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
    "embeddings": "embeddings",
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
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    # `key=value` overrides may come after an option (`train --metrics-out F a=1 b=2`): argparse leaves the ones
    # after the option unparsed; they are overrides too, in order. Anything else is an unknown argument.
    if extra and isinstance(getattr(args, "overrides", None), list) and not any(a.startswith("-") for a in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # store_rec logs at INFO (DEBUG with -v); other libraries only from WARNING (fbgemm_gpu logs a dozen
    # "Successfully loaded ..." INFO lines on the root logger at import). force: that import can run
    # before this line and set the root logger up at WARNING, which would swallow our INFO records.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("store_rec").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from store_rec.errors import Terminated, error_message

    restore = _raise_on_sigterm()
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print(f"store-rec {args.command}: interrupted; outputs in progress were removed", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"store-rec {args.command}: {e}; outputs in progress were removed", file=sys.stderr)
        return 128 + e.signum
    except (*USER_ERRORS, ImportError, OSError) as e:  # user errors; a broken torch/fbgemm/torchrec install
        msg = error_message(e)
        if msg is None:
            raise
        print(f"store-rec {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        restore()
    return int(rc or 0)


def _raise_on_sigterm():
    """Install a SIGTERM handler that raises :class:`~store_rec.errors.Terminated` (main thread only);
    returns a function that puts the previous handler back."""
    import signal
    import threading

    from store_rec.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):  # noqa: ARG001
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to flush at exit
        pass


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
