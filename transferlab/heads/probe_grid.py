"""The linear probe's default C grid, in a module without torch so `--help` of the CLI can show it.

The one owner: ``LinearProbe`` (heads.probe, which re-exports it), the study's ``ProbeConfig``
and the ``probe`` / ``select`` commands all default to it. Changing it changes the evaluation
hash of every default study config (tests/test_honest.py pins that hash).
"""

from __future__ import annotations

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


def cs_text(cs: tuple[float, ...] | list[float] = DEFAULT_CS) -> str:
    """The grid as the CLIs' ``--Cs`` text: ``0.01,0.1,1,10,100``."""
    return ",".join(f"{c:g}" for c in cs)
