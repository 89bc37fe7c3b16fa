"""Cluster topology specs for sharding-plan experiments, and one helper to build TorchRec's Topology.

A :class:`TopologySpec` is a small YAML (or CLI) dataclass validated with :mod:`store_rec.config`::

    name: h100x8
    world_size: 64            # total ranks (GPUs, or CPU processes)
    local_world_size: 8       # ranks per host
    compute_device: cuda      # cuda | cpu
    hbm_cap_gb: 80            # HBM per rank, GB (GiB, as TorchRec counts: 1 GB = 1024**3 bytes)
    ddr_cap_gb: 256           # host memory per rank, GB
    intra_host_bw_gbs: 900    # GB/s between ranks of one host (NVLink/NVSwitch)
    inter_host_bw_gbs: 50     # GB/s per rank between hosts (NIC per GPU)
    hbm_mem_bw_gbs: 3350      # GB/s HBM memory bandwidth per rank
    ddr_mem_bw_gbs: 77        # GB/s host memory bandwidth per rank
    hbm_to_ddr_mem_bw_gbs: 64 # GB/s host<->device (PCIe) per rank, used for UVM caching
    batch_size: 512           # per-rank batch size the planner's cost model assumes

Presets live in ``store_rec/configs/topologies/<name>.yaml`` (package data, :mod:`store_rec.presets`) (``h100x8``, ``a100x8``, ``cpu_gloo``); each file
documents its numbers and their sources. ``world_size`` in a preset is a default: sweeps override it.

:func:`make_topology` hides TorchRec's Topology construction drift: torchrec >= 1.8 wants
``TopologyFactory.create_topology(TrainerConfig, HardwareConfig, KernelConfig)`` (and warns when a
``Topology`` is built directly); older releases only have the ``Topology(...)`` constructor.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Literal, Sequence, Union

from store_rec.config import ConfigError, check, deep_merge, from_dict, load_yaml, parse_overrides

logger = logging.getLogger(__name__)

GB = 1024**3
"""TorchRec's planner counts capacities and bandwidths in GiB (``1024**3`` bytes); so do we."""



@dataclass
class TopologySpec:
    """A cluster for the planner (see module docstring for keys and units)."""

    name: str = "custom"
    world_size: int = 8
    local_world_size: int = 8
    compute_device: Literal["cuda", "cpu"] = "cuda"
    hbm_cap_gb: float = 80.0
    ddr_cap_gb: float = 128.0
    intra_host_bw_gbs: float = 600.0
    inter_host_bw_gbs: float = 12.5
    hbm_mem_bw_gbs: float = 897.0
    ddr_mem_bw_gbs: float = 51.0
    hbm_to_ddr_mem_bw_gbs: float = 32.0
    batch_size: int = 512
    description: str = ""

    def __post_init__(self) -> None:
        check(self.world_size >= 1, "world_size", f"must be >= 1, got {self.world_size}")
        check(self.local_world_size >= 1, "local_world_size", f"must be >= 1, got {self.local_world_size}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.ddr_cap_gb > 0, "ddr_cap_gb", f"must be > 0, got {self.ddr_cap_gb}")
        if self.compute_device == "cuda":
            check(self.hbm_cap_gb > 0, "hbm_cap_gb", f"must be > 0 for compute_device cuda, got {self.hbm_cap_gb}")
        else:
            check(self.hbm_cap_gb >= 0, "hbm_cap_gb", f"must be >= 0, got {self.hbm_cap_gb}")
        for key in ("intra_host_bw_gbs", "inter_host_bw_gbs", "hbm_mem_bw_gbs", "ddr_mem_bw_gbs", "hbm_to_ddr_mem_bw_gbs"):
            v = getattr(self, key)
            check(v > 0, key, f"must be > 0 GB/s, got {v}")

    def with_world_size(self, world_size: int) -> "TopologySpec":
        """Same cluster with ``world_size`` ranks (``local_world_size`` capped at it)."""
        return from_dict(
            TopologySpec,
            {**dataclasses.asdict(self), "world_size": world_size, "local_world_size": min(self.local_world_size, world_size)},
            "topology",
        )


def preset_names() -> Sequence[str]:
    from store_rec.presets import preset_names as shipped

    return shipped("topologies")


def load_topology(spec: Union[str, Path], overrides: Sequence[str] = ()) -> TopologySpec:
    """A preset name (``h100x8``) or a YAML file -> :class:`TopologySpec`; ``key=value`` overrides apply.

    Errors name the file and the key path (``topology.hbm_cap_gb: expected float ...``).
    """
    s = str(spec)
    path = Path(s)
    if not path.exists() and not s.endswith((".yaml", ".yml")):
        from store_rec.presets import find_preset

        path = find_preset(s, "topologies") or path
        if not path.exists():
            raise ConfigError(f"topology {s!r}: neither a YAML file nor a preset (presets: {', '.join(preset_names())})")
    data: Dict[str, Any] = load_yaml(path)
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return from_dict(TopologySpec, data, "topology")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def make_topology(spec: TopologySpec) -> Any:
    """``TopologySpec`` -> ``torchrec.distributed.planner.types.Topology`` with all our numbers applied.

    Uses ``TopologyFactory.create_topology`` (torchrec >= 1.8, hardware-based bandwidths) when it exists,
    else the ``Topology`` constructor. Bandwidths are converted to TorchRec's bytes/ms.
    """
    from torchrec.distributed.planner import types as ptypes

    bw = lambda gbs: gbs * GB / 1000.0  # GB/s -> bytes/ms  # noqa: E731
    hbm = int(spec.hbm_cap_gb * GB) if spec.compute_device == "cuda" else 0
    ddr = int(spec.ddr_cap_gb * GB)
    local = min(spec.local_world_size, spec.world_size)
    factory = getattr(ptypes, "TopologyFactory", None)
    if factory is not None and hasattr(ptypes, "HardwareConfig"):
        return factory.create_topology(
            trainer_config=ptypes.TrainerConfig(
                world_size=spec.world_size, local_world_size=local, hbm_cap_bytes=hbm, ddr_cap_bytes=ddr
            ),
            hardware_config=ptypes.HardwareConfig(
                hbm_cap_bytes=hbm,
                ddr_cap_bytes=ddr,
                intra_host_bw=bw(spec.intra_host_bw_gbs),
                inter_host_bw=bw(spec.inter_host_bw_gbs),
                hbm_mem_bw=bw(spec.hbm_mem_bw_gbs),
                ddr_mem_bw=bw(spec.ddr_mem_bw_gbs),
                hbm_to_ddr_mem_bw=bw(spec.hbm_to_ddr_mem_bw_gbs),
            ),
            kernel_config=ptypes.KernelConfig(compute_device=spec.compute_device, use_hardware_based_bandwidth=True),
        )
    return ptypes.Topology(  # pragma: no cover - torchrec < 1.8
        world_size=spec.world_size,
        local_world_size=local,
        compute_device=spec.compute_device,
        hbm_cap=hbm,
        ddr_cap=ddr,
        intra_host_bw=bw(spec.intra_host_bw_gbs),
        inter_host_bw=bw(spec.inter_host_bw_gbs),
        hbm_mem_bw=bw(spec.hbm_mem_bw_gbs),
        ddr_mem_bw=bw(spec.ddr_mem_bw_gbs),
        hbm_to_ddr_mem_bw=bw(spec.hbm_to_ddr_mem_bw_gbs),
    )
