"""Golden arrays for restructurings: what every method and every search computes on fixed inputs.

    python scripts/golden.py capture /tmp/golden_before.npz     # before a change
    python scripts/golden.py capture /tmp/golden_after.npz      # after it
    python scripts/golden.py compare /tmp/golden_before.npz /tmp/golden_after.npz

`compare` demands bit-identical arrays (same dtype, shape and bytes) and the same set of names, so a
change that claims "no numeric change" can show it. The inputs are seeded and built here (clustered
patch features, with injected near-copies of test anomalies); every built-in method runs in the
settings whose code paths differ, and every search in each precision and backend, native kernels on
and off.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from funad import native, search  # noqa: E402
from funad.features import FeatureSet  # noqa: E402
from funad.methods import FitContext, create_method  # noqa: E402
from funad.search import pairs  # noqa: E402

#: (name, method, settings): every built-in method, and the settings whose code paths differ
METHOD_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("funad_default", "funad", {"epochs": 4, "batch_size": 8}),
    ("funad_bf16", "funad", {"epochs": 4, "batch_size": 8, "precision": "bf16", "train_precision": "bf16"}),
    ("funad_tf32", "funad", {"epochs": 3, "batch_size": 8, "precision": "tf32"}),
    ("funad_own", "funad", {"epochs": 3, "batch_size": 8, "exclude_own_image": True}),
    ("funad_bank2", "funad", {"epochs": 4, "batch_size": 8, "bank_every": 2}),
    ("funad_quirks", "funad", {"epochs": 3, "batch_size": 8, "noise_aliasing": True}),
    ("funad_faiss", "funad", {"epochs": 3, "batch_size": 8, "knn_backend": "faiss"}),
    ("patchcore", "patchcore", {}),
    ("patchcore_torch", "patchcore", {"knn_backend": "torch", "coreset_ratio": 0.5}),
    ("softpatch", "softpatch", {}),
    ("inreach", "inreach", {}),
    ("inreach_pool", "inreach", {"seed_order": "pool"}),
)


def feature_sets(seed: int = 0, g: int = 8, c: int = 48) -> tuple[FeatureSet, FeatureSet]:
    """A pool of 28 normal + 4 injected images and a test set of 12 normal + 8 anomalous ones.

    Normal patches come from a few cluster centres (industrial textures repeat), anomalies carry a
    3x3 blob; the injected images are near-copies of test anomalies.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, c)).astype(np.float32)

    def normal(n: int) -> np.ndarray:
        pick = rng.integers(0, len(centres), size=(n, g, g))
        return centres[pick] + 0.3 * rng.standard_normal((n, g, g, c)).astype(np.float32)

    test = normal(20)
    masks = np.zeros((20, 32, 32), bool)
    for j in range(12, 20):
        r, q = rng.integers(0, g - 2, size=2)
        test[j, r : r + 3, q : q + 3] += 2.0 * rng.standard_normal(c).astype(np.float32)
        masks[j, r * 4 : (r + 3) * 4, q * 4 : (q + 3) * 4] = True
    train = np.concatenate([normal(28), test[12:16] + 0.05 * rng.standard_normal((4, g, g, c))])
    return _fs(train, np.r_[np.zeros(28), np.ones(4)]), _fs(test, np.r_[np.zeros(12), np.ones(8)], masks)


def _fs(x: np.ndarray, labels: np.ndarray, masks: np.ndarray | None = None) -> FeatureSet:
    patches = np.ascontiguousarray(x, dtype=np.float16)
    patches.flags.writeable = False
    cls = np.ascontiguousarray(x.mean(axis=(1, 2)), dtype=np.float16)
    cls.flags.writeable = False
    return FeatureSet(image_ids=[f"img{i:03d}" for i in range(len(x))], cls=cls, patches=patches,
                      labels=np.asarray(labels, np.int8), masks=masks)


def method_arrays() -> dict[str, np.ndarray]:
    train, test = feature_sets()
    out: dict[str, np.ndarray] = {}
    for name, method, settings in METHOD_RUNS:
        torch.manual_seed(0)
        m = create_method(method, settings)
        ctx = FitContext(seed=0, device="cpu", map_size=32)
        m.fit(train, ctx)
        s = m.score(test, ctx)
        out[f"{name}/image"] = np.asarray(s.image)
        if s.maps is not None:
            out[f"{name}/maps"] = np.asarray(s.maps)
        for k, v in sorted(m.diagnostics.items()):
            out[f"{name}/diag/{k}"] = np.asarray(v, dtype=np.float64)
        for i, h in enumerate(m.history):
            for k, v in sorted(h.items()):
                if isinstance(v, int | float):
                    out[f"{name}/history/{i}/{k}"] = np.asarray(v, dtype=np.float64)
        print(f"  {name}: {len(out)} arrays so far", flush=True)
    return out


def search_arrays() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(16, 64, generator=g)
    bank = centres[torch.randint(0, 16, (700,), generator=g)] + 0.2 * torch.randn(700, 64, generator=g)
    bank[5] = bank[9]  # an exact duplicate: ties
    query = bank[:300] + 0.01 * torch.randn(300, 64, generator=g)
    owner = torch.arange(700) // 50
    out: dict[str, np.ndarray] = {}

    def put(name: str, result: Any) -> None:
        for j, t in enumerate(result if isinstance(result, tuple) else (result,)):
            out[f"{name}/{j}"] = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)

    runs: list[tuple[str, Callable[[], Any]]] = []
    opts = search.SearchOptions
    for prec in search.PRECISIONS:
        for backend in ("torch", "faiss"):
            if backend == "faiss" and not search.faiss_available():
                continue
            o = opts(precision=prec, backend=backend)
            runs += [
                (f"nearest/{prec}/{backend}", lambda o=o: search.nearest(query, bank, 3, o)),
                (f"nearest_self/{prec}/{backend}", lambda o=o: search.nearest(
                    bank, bank, 2, o, search.Exclusion.self_search(bank))),
                (f"nearest_owner/{prec}/{backend}", lambda o=o: search.nearest(
                    bank[:300], bank, 2, o, search.Exclusion(query_owner=owner[:300], bank_owner=owner))),
            ]
        member = torch.arange(64) % 3 == 0
        runs += [
            (f"batch_search/{prec}", lambda p=prec, m=member: search.batch_search(
                bank[:64], m, bank[300:400], 2, opts(precision=p))),
            (f"mutual_pairs/{prec}", lambda p=prec: search.mutual_pairs(bank[:200], opts(precision=p))),
        ]
    for backend in ("torch", "faiss"):
        if backend == "faiss" and not search.faiss_available():
            continue
        runs.append((f"knn/{backend}", lambda b=backend: search.knn(query, bank, 3, backend=b)))
    runs += [
        ("pairs/cross", lambda: pairs.cross_nearest(
            pairs.seed_columns(pairs.compare_rows(bank[:60])),
            pairs.compare_rows(bank[100:280]).reshape(3, 60, -1).contiguous())),
        ("pairs/mutual", lambda: pairs.mutual_nearest(bank[:100], bank[100:250])),
    ]
    for on in (True, False):
        with native.forced(on):
            for name, fn in runs:
                put(f"{name}/native{int(on)}", fn())
    return out


def capture(path: Path) -> None:
    torch.set_num_threads(1)
    print("methods", flush=True)
    arrays = method_arrays()
    print("searches", flush=True)
    arrays |= search_arrays()
    np.savez(path, **arrays)
    print(f"{len(arrays)} arrays -> {path} (native kernels: {native.status()})")


def compare(a: Path, b: Path) -> int:
    x, y = np.load(a), np.load(b)
    names = sorted(set(x.files) | set(y.files))
    bad = []
    for n in names:
        if n not in x.files or n not in y.files:
            bad.append(f"{n}: only in {'the first' if n in x.files else 'the second'}")
            continue
        u, v = x[n], y[n]
        if u.dtype != v.dtype or u.shape != v.shape or u.tobytes() != v.tobytes():
            bad.append(f"{n}: differs ({u.dtype}{u.shape} vs {v.dtype}{v.shape})")
    for line in bad:
        print(line)
    print(f"{len(names) - len(bad)}/{len(names)} golden arrays bit-identical")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("capture").add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "capture":
        capture(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
