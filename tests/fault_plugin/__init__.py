"""The test-only method plugin `faulty` (faultmethod.py), installed as a fake distribution.

`install(site)` writes what an installed wheel leaves on disk (`*.dist-info` with METADATA and an
entry point of the group `funad_bench.methods`) next to a copy of the module; a sweep subprocess with
`site` on PYTHONPATH then finds the method like any plugin. Production code has no fault hook.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fault_plugin.faultmethod import NAME

MODULE = "funad_faults_plugin"


def install(site: Path) -> Path:
    """Install the plugin into the folder `site` (created); returns it, for PYTHONPATH."""
    info = site / "funad_bench_faults-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: funad-bench-faults\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[funad_bench.methods]\n{NAME} = {MODULE}:Faulty\n")
    shutil.copyfile(Path(__file__).with_name("faultmethod.py"), site / f"{MODULE}.py")
    return site
