"""``python -m fusionseg`` (also what ``torchrun -m fusionseg`` runs)."""

import sys

from fusionseg.cli import main

sys.exit(main())
