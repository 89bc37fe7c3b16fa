"""torchx components of store_rec (:mod:`store_rec.launch.components`) and the rules that turn their
arguments into job specs (:mod:`store_rec.launch.jobspec`). Needs torchx (``pip install store_rec[launch]``).

Run them by name once store_rec is installed (entry point ``torchx.components``)::

    torchx run -s local_cwd store_rec.train --config smoke
    torchx run -s kubernetes -cfg queue=default --workspace "" store_rec.train --config store_synthetic \\
        --j 2x8 --gpu 8 --checkpoint_dir /mnt/ckpt/run1 --image REGISTRY/store-rec:0.2.0-cuda

or, in a checkout, by file: ``torchx run launch/components.py:train`` (``launch/components.py`` is a
link to this package's file).
"""
