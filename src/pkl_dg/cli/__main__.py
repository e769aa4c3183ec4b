"""``python -m pkl_dg.cli``: the same as the ``pkl-dg`` console script."""

import sys

from pkl_dg.cli import main

sys.exit(main())
