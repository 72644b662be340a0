"""``python -m transferlab ...``: the same CLI as the ``transferlab`` script (handy for
``python -X importtime -m transferlab extract ...`` and for environments without the script on PATH)."""

import sys

from transferlab.cli import main

sys.exit(main())
