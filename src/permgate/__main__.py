"""``python -m permgate`` runs the command line."""

import sys

from permgate.cli import main

sys.exit(main())
