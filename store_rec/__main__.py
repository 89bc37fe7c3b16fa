import sys

from store_rec.cli import main

sys.exit(main())
