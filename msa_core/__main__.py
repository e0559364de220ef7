"""``python -m msa_core`` runs the ``msa`` CLI."""

import sys

from msa_core.cli import main

sys.exit(main())
