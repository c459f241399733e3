"""Sweeps: many runs from one file, in parallel, resumable, summarised over seeds.

``fedshrink sweep FILE`` (or :func:`load_sweep` + :func:`run_sweep`) reads a
sweep file (:mod:`.spec`), names each run by a hash of its settings
(:mod:`.hashing`), makes the runs not finished yet on a process pool or a Ray
cluster (:mod:`.runner`, :mod:`.execute`) into the sweep's directory
(:mod:`.layout`), and writes a table over seeds with comparison plots
(:mod:`.table`, :mod:`.plots`). :func:`open_sweep` reads the runs back
(:mod:`.results`). See ``docs/sweeps.md``.
"""

from fedshrink.sweep.results import SweepRuns, open_sweep
from fedshrink.sweep.runner import SweepResult, run_sweep
from fedshrink.sweep.spec import PlannedRun, SweepSpec, load_sweep

__all__ = ["PlannedRun", "SweepResult", "SweepRuns", "SweepSpec", "load_sweep", "open_sweep", "run_sweep"]
