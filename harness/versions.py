"""Provenance of a result row: library versions, git commit, node, device and peak memory.

Every row carries these so any number can be traced to the code and machine that produced it.
Nothing here runs a subprocess: the git commit is read from the `.git` directory directly, so it
works on worker nodes without a git binary.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

#: import name -> distribution name; versions come from package metadata so nothing heavy is imported.
_LIBRARIES = {
    "torch": "torch",
    "timm": "timm",
    "faiss": "faiss-cpu",
    "ray": "ray",
    "numpy": "numpy",
}

REPO_ROOT = Path(__file__).resolve().parent.parent


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """python, torch, timm, faiss, ray, numpy versions (None where not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _LIBRARIES.items():
        alternatives = (dist, "faiss-gpu", "faiss") if key == "faiss" else (dist,)
        out[key] = _dist_version(*alternatives)
    return out


def native_status() -> str | None:
    """The compiled search kernels (funad.native) this process used, read at each row (a reused
    worker may run a FUN-AD cell after cells that never searched); neither imported nor built here."""
    native = sys.modules.get("funad.native")
    return native.status() if native is not None else None


def versions_json() -> str:
    """The `versions` column: compact JSON with sorted keys (stable, diffable)."""
    row = {**library_versions(), "funad_native": native_status()}
    return json.dumps(row, sort_keys=True, separators=(",", ":"))


def _git_dir(start: Path) -> Path | None:
    for d in (start, *start.parents):
        dot = d / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():  # worktree or submodule: "gitdir: <path>"
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text.split(":", 1)[1].strip())
                return target if target.is_absolute() else (d / target).resolve()
    return None


def _read_ref(git_dir: Path, ref: str) -> str | None:
    loose = git_dir / ref
    if loose.is_file():
        return loose.read_text().strip() or None
    common = git_dir / "commondir"
    roots = [git_dir]
    if common.is_file():
        roots.append((git_dir / common.read_text().strip()).resolve())
    for root in roots:
        if (root / ref).is_file():
            return (root / ref).read_text().strip() or None
        packed = root / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    return None


def git_commit(repo: Path | None = None) -> str:
    """Commit hash of the checkout (env FUNAD_GIT_COMMIT wins, for installed copies); else "unknown"."""
    env = os.environ.get("FUNAD_GIT_COMMIT")
    if env:
        return env
    try:
        git_dir = _git_dir(Path(repo or REPO_ROOT).resolve())
        if git_dir is None:
            return "unknown"
        head = (git_dir / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            return _read_ref(git_dir, head.split(":", 1)[1].strip()) or "unknown"
        return head or "unknown"
    except OSError:
        return "unknown"


def node_name() -> str:
    """Host name of the machine running this process (the `node` column)."""
    return platform.node() or os.environ.get("HOSTNAME", "unknown")


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count (Linux: "5" > /proc/self/clear_refs resets VmHWM).

    Tune reuses a worker process for several trials; without the reset a trial's peak_rss_mb would be
    the peak of every trial the process ran before. False where the kernel does not allow it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since the last `reset_peak_rss` (or its start).

    Linux: VmHWM from /proc/self/status (the counter clear_refs resets); elsewhere ru_maxrss (KiB on
    Linux, bytes on macOS), the peak over the process's life.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def peak_gpu_mb(device: str | None = None) -> float | None:
    """Peak CUDA memory allocated by torch in MiB; None on CPU (null, as docs/contract.md says)."""
    if device is not None and not str(device).startswith("cuda"):
        return None
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return float(torch.cuda.max_memory_allocated()) / (1024.0 * 1024.0)


def device_name(device: str | None) -> str:
    """`cpu`, or the GPU's marketing name (e.g. `NVIDIA H200`) for a CUDA device."""
    if device is None or not str(device).startswith("cuda"):
        return "cpu" if device is None else str(device)
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # a name is provenance only; never fail a cell over it
        return str(device)
