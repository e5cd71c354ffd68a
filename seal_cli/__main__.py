"""``python -m seal_cli ...``: the ``seal`` command, e.g. under ``torchrun --nproc_per_node=N -m seal_cli rank ...``."""

import sys

from .main import main

sys.exit(main())
