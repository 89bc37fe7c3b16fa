"""The training app, one module per job; read in this order:

* ``config``     -- the YAML ``TrainConfig`` (data, model, optim, loss, train, sharding, checkpoint, output).
* ``trainer``    -- :func:`run` / :class:`Trainer`: the loop (segments, evals, early stop, checkpoints, summary).
* ``data``       -- prepared ``data.dir``, SID-table check, rank-sharded loaders.
* ``sharding``   -- planner constraints, ``DistributedModelParallel``, pre-trained item vectors into shards.
* ``optim``      -- sparse (fused, in backward) + dense/rotation optimizers, LR schedule, ``SparseLR``.
* ``evaluate``   -- exact gathered AUC / GAUC / LogLoss, early-stop comparison.
* ``metrics``    -- the metric functions and the cross-rank gather.
* ``checkpoint`` -- save / load / latest / clear, resume config check, RNG states.
* ``recorder``   -- ``metrics.jsonl`` + TensorBoard on rank 0.
* ``__main__``   -- ``python -m store_rec.train`` (the torchrun / torchx entry point; ``store-rec train``).

The model side (``RankingModel``, the ``RankingTrain`` wrapper and its ``TrainOutput``) is in
:mod:`store_rec.models.ranking`.
"""
