"""``python -m transferlab ...``: the same CLI as the ``transferlab`` script (handy for
``python -X importtime -m transferlab extract ...`` and for environments without the script on PATH)."""

from transferlab.cli import entry

entry()
