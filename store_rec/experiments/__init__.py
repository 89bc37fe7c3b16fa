"""The paper's experiments as data: ``configs/experiments/*.yaml`` -> runs -> ``docs/RESULTS.md``.

``store-rec experiments --config configs/experiments/paper.yaml`` builds the datasets, item embeddings
and SID tables the experiments need (:mod:`.runner`), trains every (experiment, dataset, variant,
value, seed) that is not done yet, and writes RESULTS.md with tables and plots (:mod:`.report`).
"""
