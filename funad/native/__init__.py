"""Optional compiled CPU kernels for the FUN-AD search (kernels.c), loaded through ctypes.

Why: on the CPU the search's GEMM runs at the matmul peak, but selecting the k smallest keys of each
GEMM block with torch ops (group minima, two top-k calls, gathers) and re-ranking the candidates
(gather, cast, subtract, square, sum: six passes over [pairs, D] temporaries) took as long as the
GEMM itself. The kernels do each in one pass (see kernels.c). They are an implementation choice,
not a change of method: the merge keeps a k-smallest set of the keys exactly as the torch path
does (ties may keep other members), and the re-rank computes the same fp32 differences.

Build: on first use, kernels.c is compiled with the system C compiler ($CC, else cc/gcc/clang) into
$FUNAD_NATIVE_DIR (default: <cache_root>/native), named by a hash of the source, flags and CPU, and
written atomically, so concurrent trial processes share one build. No compiler, a failed build or
FUNAD_NATIVE=0 means the torch path (a one-line warning says why, once per process). GPU tensors
always take the torch path.

Threads: ctypes releases the GIL, so each call splits its lines over `torch.get_num_threads()`
Python threads that work on disjoint line ranges.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from funad.paths import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-std=c99", "-shared", "-fPIC"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
#: whether a search asked for the kernels since the last `reset_usage()` (one cell's provenance)
_asked = False
_pool: ThreadPoolExecutor | None = None

_i64, _p, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
#: argument types per kernel kind; each kind exists as <name>_bf16 and <name>_f32 (see kernels.c)
_ARGS = {
    # d, ld, line range a..b, other extent, vals, idx, k, index offset, scratch
    "funad_merge_rows": [_p, _i64, _i64, _i64, _i64, _p, _p, _int, _i64, _p],
    "funad_merge_cols": [_p, _i64, _i64, _i64, _i64, _p, _p, _int, _i64, _p],
    # q, ldq, s, lds, dim, qi, si, pair range a..b, out
    "funad_pair_sqdist": [_p, _i64, _p, _i64, _i64, _p, _p, _i64, _i64, _p],
}
_SIZES = {"funad_merge_rows_scratch": [_i64], "funad_merge_cols_scratch": [_i64, _i64]}
_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}
_KEY = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def enabled_by_env() -> bool:
    """FUNAD_NATIVE=0/off/false/no turns the kernels off (the torch path runs instead)."""
    return os.environ.get("FUNAD_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _cpu_tag() -> str:
    """What -march=native depends on: the machine and its CPU feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()}|{flags}"


def build_dir() -> Path:
    env = os.environ.get("FUNAD_NATIVE_DIR")
    return Path(env).expanduser() if env else cache_root() / "native"


def _build(cc: str) -> Path:
    """Compile kernels.c once per (source, compiler, flags, CPU); returns the shared library path."""
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + "|".join([cc, *FLAGS, _cpu_tag()]).encode()).hexdigest()[:16]
    out_dir = build_dir()
    lib = out_dir / f"funad_kernels_{tag}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=lib.name, suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, str(SOURCE), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}: {res.stderr.strip()[:500]}")
        os.replace(tmp, lib)  # atomic: a concurrent process sees no library or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, no compiler, or the build failed: warned once)."""
    global _lib, _tried
    if _lib is not None or _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if not enabled_by_env():
            return None
        cc = _compiler()
        if cc is None:
            log.warning("funad.native: no C compiler (set CC); the search uses the slower torch path")
            return None
        try:
            lib = ctypes.CDLL(str(_build(cc)))
            for name, args in _ARGS.items():
                for suffix in _SUFFIX.values():
                    fn = getattr(lib, f"{name}_{suffix}")
                    fn.argtypes, fn.restype = args, None
            for name, args in _SIZES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, _i64
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.warning("funad.native: kernels unavailable (%s); the search uses the slower torch path", exc)
            return None
        _lib = lib
        return _lib


def status() -> str | None:
    """For result provenance, without building anything: the loaded library's name, "off"
    (FUNAD_NATIVE=0), "unavailable" (tried, no library) or None (no search asked for the kernels
    since `reset_usage()`: a reused worker's row says what ITS cell used, not an earlier cell)."""
    if not _asked:
        return None
    if _lib is not None:
        return Path(_lib._name).stem  # noqa: SLF001
    if not enabled_by_env():
        return "off"
    return "unavailable" if _tried else None


@contextlib.contextmanager
def forced(on: bool) -> Iterator[None]:
    """Run a block with the kernels on or off (FUNAD_NATIVE), whatever the environment says, then
    restore it (benchmarks compare both paths on the same inputs)."""
    saved = os.environ.get("FUNAD_NATIVE")
    os.environ["FUNAD_NATIVE"] = "1" if on else "0"
    reset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FUNAD_NATIVE", None)
        else:
            os.environ["FUNAD_NATIVE"] = saved
        reset()


def reset_usage() -> None:
    """Start a new provenance record (one per cell): `status()` is None until a search asks again."""
    global _asked
    _asked = False


def reset() -> None:
    """Forget the loaded library (tests switch FUNAD_NATIVE on and off)."""
    global _lib, _tried, _asked
    with _lock:
        _lib, _tried, _asked = None, False, False


def _forget_pool() -> None:
    """A forked child inherits the pool object but not its threads: start a new one there."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernels can take these 2-D tensors: CPU, rows of unit stride (any row stride),
    one dtype of bf16/fp32, library loaded."""
    global _asked
    _asked = True
    if not tensors or any(t.device.type != "cpu" or t.ndim != 2 or t.stride(1) != 1 for t in tensors):
        return False
    if tensors[0].dtype not in _SUFFIX or any(t.dtype != tensors[0].dtype for t in tensors):
        return False
    return library() is not None


def _parallel(n: int, work: Callable[[int, int], None], min_per_thread: int) -> None:
    """work(a, b) over [0, n) split into contiguous ranges, one per thread (GIL released in C)."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), n // max(1, min_per_thread)))
    if threads == 1:
        work(0, n)
        return
    if _pool is None or _pool._max_workers < threads:  # noqa: SLF001
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="funad-native")
    bounds = [n * t // threads for t in range(threads + 1)]
    futures = [_pool.submit(work, a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    for f in futures:
        f.result()


def _check_sets(d: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, lines: int) -> None:
    """The C loops trust their arguments: unit-stride rows of d, and one contiguous (fp32 value,
    int64 index) set of k slots per line."""
    if not (usable(d) and vals.is_contiguous() and idx.is_contiguous()):
        raise ValueError("native merge: the block must be a unit-stride CPU fp32/bf16 tensor and the sets "
                         "contiguous")
    if vals.shape != idx.shape or vals.ndim != 2 or vals.shape[0] != lines:
        raise ValueError(f"native merge: sets of shape {tuple(vals.shape)} / {tuple(idx.shape)} do not "
                         f"fit {lines} lines")
    if vals.dtype != torch.float32 or idx.dtype != torch.int64:
        raise ValueError(f"native merge: sets must be float32 / int64, got {vals.dtype} / {idx.dtype}")


def merge_rows(d: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, col_offset: int) -> None:
    """Merge block d [R, C] into the running sets of its rows: vals [R, k] fp32, idx [R, k] int64
    (contiguous views, updated in place); a key at column c enters with index col_offset + c."""
    _check_sets(d, vals, idx, d.shape[0])
    lib = library()
    fn = getattr(lib, f"funad_merge_rows_{_SUFFIX[d.dtype]}")
    k, n_keys = vals.shape[1], lib.funad_merge_rows_scratch(d.shape[1])

    def work(a: int, b: int) -> None:
        scratch = torch.empty(n_keys, dtype=_KEY[d.dtype])
        fn(d.data_ptr(), d.stride(0), a, b, d.shape[1], vals.data_ptr(), idx.data_ptr(), k, col_offset,
           scratch.data_ptr())

    _parallel(d.shape[0], work, 64)


def merge_cols(d: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, row_offset: int) -> None:
    """Merge block d [R, C] into the running sets of its columns: vals [C, k], idx [C, k]; a key
    at row r enters with index row_offset + r."""
    _check_sets(d, vals, idx, d.shape[1])
    lib = library()
    fn = getattr(lib, f"funad_merge_cols_{_SUFFIX[d.dtype]}")
    k = vals.shape[1]

    def work(a: int, b: int) -> None:
        scratch = torch.empty(lib.funad_merge_cols_scratch(d.shape[0], b - a), dtype=_KEY[d.dtype])
        fn(d.data_ptr(), d.stride(0), d.shape[0], a, b, vals.data_ptr(), idx.data_ptr(), k, row_offset,
           scratch.data_ptr())

    _parallel(d.shape[1], work, 128)


def pair_sqdist(
    query: torch.Tensor, source: torch.Tensor, qi: torch.Tensor, si: torch.Tensor
) -> torch.Tensor:
    """fp32 sum_j (query[qi[p], j] - source[si[p], j])^2 for every pair p."""
    if not usable(query, source) or query.shape[1] != source.shape[1]:
        raise ValueError("pair_sqdist: query and source must be unit-stride CPU tensors of one dtype "
                         "(fp32 or bf16) and equal width")
    fn = getattr(library(), f"funad_pair_sqdist_{_SUFFIX[query.dtype]}")
    qi, si = qi.contiguous().long(), si.contiguous().long()
    # the C loop trusts the indices: check them here, not with a crash
    if qi.numel() and not (0 <= int(qi.min()) and int(qi.max()) < query.shape[0]):
        raise IndexError("pair_sqdist: a query row index is out of range")
    if si.numel() and not (0 <= int(si.min()) and int(si.max()) < source.shape[0]):
        raise IndexError("pair_sqdist: a source row index is out of range")
    out = torch.empty(qi.shape[0], dtype=torch.float32)

    def work(a: int, b: int) -> None:
        fn(query.data_ptr(), query.stride(0), source.data_ptr(), source.stride(0), query.shape[1],
           qi.data_ptr(), si.data_ptr(), a, b, out.data_ptr())

    _parallel(qi.shape[0], work, 256)
    return out
