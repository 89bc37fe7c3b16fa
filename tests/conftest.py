"""Shared fixtures. Real data samples live in ../shared/datasets (licensed: read in place, never copied)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets_dir() -> Path:
    env = os.environ.get("STORE_REC_SHARED")
    if env:
        return Path(env) / "datasets"
    return REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of ../shared/datasets; tests using it are skipped when it is absent."""
    d = shared_datasets_dir()
    if not d.is_dir():
        pytest.skip(f"real data samples not found at {d} (set STORE_REC_SHARED)")
    return d


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # CI has 2 cores; keep torch from oversubscribing when tests spawn worker processes.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    yield


@pytest.fixture(autouse=True)
def _drop_stale_log_handlers():
    # store_rec.cli.main calls logging.basicConfig(force=True): under capsys its root handler writes to the
    # test's capture stream, which is closed after the test; a later test's log record then prints
    # "--- Logging error --- Traceback ..." into that test's stderr. Drop such handlers after each test.
    yield
    for h in list(logging.root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
            logging.root.removeHandler(h)
