"""The torch / fbgemm-gpu / torchrec stack under store_rec, and what to do when it is the wrong one.

fbgemm-gpu ships two builds under one import name (``fbgemm_gpu``): ``fbgemm-gpu`` (CUDA) and
``fbgemm-gpu-cpu``. ``pip install torchrec`` pulls the CUDA one (torchrec's metadata requires
``fbgemm-gpu``), and on a machine without CUDA ``import torchrec`` then fails deep inside fbgemm with
``OSError: Could not load this library: .../fbgemm_gpu_config.so`` (or an undefined-symbol error when
the torch build does not match). :func:`diagnose` turns such a failure into one message that names
the installed packages and the pip commands that fix them; ``import store_rec``'s public names and the
``store-rec`` CLI raise / print it instead of the raw traceback.

Tested stack: torch 2.13.0, fbgemm-gpu(-cpu) 1.8.0, torchrec 1.8.0 (``TESTED``).
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Dict, Optional

TESTED = {"torch": "2.13.0", "fbgemm": "1.8.0", "torchrec": "1.8.0"}

CPU_FIX = f"pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && pip install fbgemm-gpu-cpu=={TESTED['fbgemm']}"
CUDA_FIX = f"pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && pip install fbgemm-gpu=={TESTED['fbgemm']}"


def installed() -> Dict[str, Optional[str]]:
    """Installed versions (None = not installed) of the stack's distributions."""
    out: Dict[str, Optional[str]] = {}
    for name in ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "torchrec"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _torch_is_cuda_build() -> Optional[bool]:
    try:
        import torch
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return None
    return torch.version.cuda is not None


def diagnose(exc: Optional[BaseException] = None) -> Optional[str]:
    """A one-paragraph fix for a broken stack, or None when the stack imports (or ``exc`` is unrelated).

    ``exc`` is the failure being explained (reported in the message); it is explained only when
    ``import torchrec`` fails here too, so an unrelated ``ImportError`` / ``OSError`` gets None."""
    try:  # the stack imports: ``exc`` (if any) is some other problem
        import torchrec  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # fbgemm raises OSError for a missing .so
        exc = exc or e
    else:
        return None
    v = installed()
    have = ", ".join(f"{k} {ver}" for k, ver in v.items() if ver) or "none of torch/fbgemm-gpu/torchrec"
    head = f"the torch/fbgemm/torchrec stack does not import ({type(exc).__name__}: {str(exc)[:200]}); installed: {have}."
    if v["torch"] is None:
        return (f"{head} torch is missing: pip install 'store_rec[cpu]' then pip install --no-deps "
                f"torchrec=={TESTED['torchrec']} (CPU), or pip install 'store_rec[cuda]' (CUDA); or bash scripts/setup.sh")
    cuda_torch = _torch_is_cuda_build()
    if v["fbgemm-gpu"] and v["fbgemm-gpu-cpu"]:
        return (f"{head} fbgemm-gpu (the CUDA build) and fbgemm-gpu-cpu are both installed: they share the "
                f"fbgemm_gpu package and the last one installed wins (`pip install torchrec` pulls fbgemm-gpu). "
                f"Keep one. CPU: {CPU_FIX}. CUDA: {CUDA_FIX}.")
    if v["fbgemm-gpu"] and cuda_torch is False:
        return (f"{head} fbgemm-gpu is the CUDA build but torch {v['torch']} is a CPU build: "
                f"on a CPU machine run {CPU_FIX}; for GPUs install a CUDA torch (pip install 'store_rec[cuda]').")
    if v["fbgemm-gpu"] and cuda_torch:
        return (f"{head} fbgemm-gpu {v['fbgemm-gpu']} (CUDA) does not load: its CUDA / torch versions must match "
                f"torch {v['torch']} (tested: torch {TESTED['torch']} + fbgemm-gpu {TESTED['fbgemm']}); "
                f"on a machine without CUDA use the CPU build instead: {CPU_FIX}.")
    if not v["fbgemm-gpu"] and not v["fbgemm-gpu-cpu"]:
        return (f"{head} fbgemm-gpu is missing. CPU: pip install fbgemm-gpu-cpu=={TESTED['fbgemm']}; "
                f"CUDA: pip install fbgemm-gpu=={TESTED['fbgemm']}.")
    if v["fbgemm-gpu-cpu"] and cuda_torch:
        return (f"{head} fbgemm-gpu-cpu does not load with the CUDA torch {v['torch']}: for GPUs run {CUDA_FIX}; "
                f"for CPU training install the CPU torch ({TESTED['torch']}) instead.")
    if v["torchrec"] is None:
        return (f"{head} torchrec is missing: pip install --no-deps torchrec=={TESTED['torchrec']} "
                f"(--no-deps: a plain install pulls the CUDA fbgemm-gpu), or pip install 'store_rec[cuda]' on GPUs.")
    return (f"{head} versions must match each other (tested: torch {TESTED['torch']}, fbgemm-gpu(-cpu) "
            f"{TESTED['fbgemm']}, torchrec {TESTED['torchrec']}); bash scripts/setup.sh installs that stack.")


class StackError(ImportError):
    """``import`` of the torch / fbgemm / torchrec stack failed; the message says how to fix it."""
