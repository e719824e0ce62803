"""``python -m recvae.experiment CONFIG [--output-dir DIR] [--no-progress] [--check]``."""

import sys

from recvae.experiment.runner import main

sys.exit(main())
