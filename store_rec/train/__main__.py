"""``python -m store_rec.train --config FILE [key=value ...]``: the entry point torchrun / torchx launch."""

import sys

from store_rec.train.app import main

if __name__ == "__main__":
    sys.exit(main())
