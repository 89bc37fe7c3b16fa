"""STORE dropped into a TorchRec DLRM training loop, with STORE's full objective.

    python -m store_rec.examples.dropin_dlrm                                  # one process
    torchrun --nproc-per-node 2 -m store_rec.examples.dropin_dlrm --steps 30  # 2 ranks (gloo on CPU)

What a TorchRec user's loop looks like after the two-line change of README "STORE inside your TorchRec
DLRM code": ``DLRM_STORE`` (a ``torchrec.models.dlrm.DLRM`` with ``StoreInteractionArch``) trained
through ``DLRMStoreTrain`` (``DLRMTrain``'s place: BCE + diversity loss) inside
``DistributedModelParallel`` + ``TrainPipelineSparseDist``, with ``alternating_optimizer`` stepping the
rotations on ``rotation.schedule``. The data are random batches with a learnable label (no files).
Prints one JSON line per ``--log-every`` steps on rank 0 (loss, bce, diversity, which optimizer stepped).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Iterator, List, Optional

import torch


def batches(n: int, batch_size: int, vocab: int, features: List[str], seed: int) -> Iterator:
    """``n`` torchrec ``Batch`` es: one id per feature, 4 dense features; the label depends on two features."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, vocab, (len(features), batch_size), generator=g)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=features, values=ids.flatten(),
                                                  lengths=torch.ones(len(features) * batch_size, dtype=torch.int64))
        dense = torch.randn(batch_size, 4, generator=g)
        labels = (((ids[0] % 2) + (ids[2] < vocab // 2).long() + (dense[:, 0] > 0).long()) >= 2).float()
        yield Batch(dense_features=dense, sparse_features=kjt, labels=labels)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--log-every", type=int, default=5)
    args = p.parse_args(argv)

    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from store_rec import DLRM_STORE, DLRMStoreTrain, alternating_optimizer

    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    rank, device = dist.get_rank(), torch.device("cpu")
    torch.manual_seed(0)
    D, vocab = 16, 100
    features = ["item", "user", "age", "gender", "hour"]
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=vocab,
                                                            feature_names=[f]) for f in features], device=torch.device("meta"))
    dlrm = DLRM_STORE(ebc, dense_in_features=4, dense_arch_layer_sizes=[32, D], over_arch_layer_sizes=[32, 1],
                      static_groups={"user": ["age", "gender"], "context": ["hour"]},
                      rotation={"diversity_weight": 0.1, "schedule": "4:1"},
                      attention={"num_layers": 1, "num_heads": 2, "ffn_dim": 32, "block_size": 2})

    # --- the TorchRec loop, with DLRMTrain -> DLRMStoreTrain and the dense optimizer -> alternating_optimizer
    train = DLRMStoreTrain(dlrm)
    apply_optimizer_in_backward(torch.optim.Adagrad, train.model.sparse_arch.parameters(), {"lr": 0.05})
    model = DistributedModelParallel(train, device=device)
    opt = alternating_optimizer(model, main=lambda ps: torch.optim.Adam(ps, lr=3e-3),
                                rotation=lambda ps: torch.optim.Adam(ps, lr=1e-3))
    pipeline = TrainPipelineSparseDist(model, opt, device)
    it = batches(args.steps, args.batch_size, vocab, features, seed=1000 + rank)
    t = 0
    while True:
        try:
            out = pipeline.progress(it)  # TrainOutput
        except StopIteration:
            break
        if rank == 0 and (t % args.log_every == 0 or t == args.steps - 1):
            print(json.dumps({"step": t, "loss": round(float(out.loss), 5), "bce": round(float(out.losses["bce"]), 5),
                              "diversity": round(float(out.losses["diversity"]), 5),
                              "stepped": "rotation" if opt.schedule.steps_rotation(t) else "main"}), flush=True)
        t += 1
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
