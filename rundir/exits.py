"""The exit codes of every command (`python -m harness.sweep`, `harness.status`, `harness.splits`,
`reports.build`), so a script or a scheduler reads any of them the same way."""

from __future__ import annotations

#: it did what was asked: the sweep or run is complete, the report or the lists are written
EXIT_OK = 0
#: it ran, but the outcome is not whole: a cell failed, a run is incomplete
EXIT_FAILED = 1
#: it refused its input before doing anything: bad arguments (argparse's own 2), a bad spec, a path
#: that is not a run directory, unreadable input files
EXIT_USAGE = 2
#: stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's convention); a rerun resumes
EXIT_INTERRUPTED = 130
