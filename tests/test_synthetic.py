"""The embedded synthetic dataset: determinism, layout, masks, train/test disjointness, install logic."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import fft as sfft
from scipy import ndimage

from funad.data import synthetic
from funad.data.records import DatasetError
from funad.data.synthetic import DEFECT_TYPES, SyntheticDataset, generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "a"
    generate(root)
    return root


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_two_generations_are_byte_identical(full_root: Path, tmp_path: Path) -> None:
    # The second run is a fresh interpreter: no shared caches, its own hash seed.
    other = tmp_path / "b"
    code = (
        "import sys; from pathlib import Path; from funad.data.synthetic import generate; "
        "generate(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(other)], check=True, cwd=REPO, timeout=300)
    a, b = _digest_tree(full_root), _digest_tree(other)
    assert list(a) == list(b)
    assert a == b
    assert len(a) > 3 * 100


def test_counts_layout_and_image_format(full_root: Path) -> None:
    assert (full_root / "VERSION").read_text().startswith(synthetic.GENERATOR_VERSION)
    cats = sorted(p.name for p in full_root.iterdir() if p.is_dir())
    assert cats == sorted(synthetic.CATEGORIES) and {"brick", "grass", "gravel"} <= set(cats)
    for cat in cats:
        base = full_root / cat
        assert len(list((base / "train" / "good").glob("*.png"))) >= 40
        assert len(list((base / "test" / "good").glob("*.png"))) >= 20
        defects = sorted(d.name for d in (base / "test").iterdir() if d.name != "good")
        assert len(defects) >= 3 and set(defects) == set(DEFECT_TYPES)
        assert sum(len(list((base / "test" / d).glob("*.png"))) for d in defects) >= 24
        sample = sorted((base / "train" / "good").glob("*.png"))[:3]
        sample += sorted((base / "test").glob("*/000.png"))
        for p in sample:
            with Image.open(p) as im:
                assert im.mode == "RGB" and im.size == (256, 256)
                assert not im.info, f"{p} carries PNG metadata {im.info}"


def test_every_anomaly_has_a_fitting_mask_and_goods_have_none(full_root: Path) -> None:
    for cat in synthetic.CATEGORIES:
        base = full_root / cat
        gt = base / "ground_truth"
        assert sorted(d.name for d in gt.iterdir()) == sorted(DEFECT_TYPES)  # no masks for good images
        fractions = []
        for defect in DEFECT_TYPES:
            images = sorted((base / "test" / defect).glob("*.png"))
            masks = sorted((gt / defect).glob("*.png"))
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
            for m in masks:
                arr = np.asarray(Image.open(m))
                assert arr.shape == (256, 256) and set(np.unique(arr)) == {0, 255}
                fractions.append(float((arr > 0).mean()))
                # The defect lies inside the 224 px centre crop the benchmark evaluates at.
                ys, xs = np.nonzero(arr)
                assert ys.min() >= 16 and xs.min() >= 16 and ys.max() < 240 and xs.max() < 240
        # Varied sizes: from thin scratches / ~1% pits up to ~8% patches.
        assert min(fractions) < 0.01 and max(fractions) > 0.04 and max(fractions) < 0.15


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_covers_exactly_the_changed_pixels(defect: str) -> None:
    # Outside the mask grown by the widest soft edge (stains fade over <= 5.5 px) nothing changed;
    # inside, the image did change. Checked against the defect-free crop the defect was painted on.
    for cat in synthetic.CATEGORIES:
        for index in range(3):
            img, mask = synthetic.make_anomaly(cat, defect, index)
            base = synthetic._to_u8(synthetic.anomaly_base(cat, defect, index))
            diff = np.abs(img.astype(int) - base.astype(int)).max(-1)
            inside = mask > 0
            near = ndimage.distance_transform_edt(~inside) <= 6.0
            assert diff[~near].max() == 0, f"{cat}/{defect}/{index}: pixels changed outside the mask"
            assert diff[inside].mean() > 3.0, f"{cat}/{defect}/{index}: mask marks unchanged pixels"
            assert (diff[inside] > 0).mean() > 0.8


def _phase_corr_peaks(queries: list[np.ndarray], bank: list[np.ndarray]) -> np.ndarray:
    """Best phase-correlation peak of each query, over all 8 flips/rotations, against any bank image.

    The peak of the normalised cross-power spectrum of two crops of one source is about the fraction
    of area they share at some shift (1.0 for identical crops); for unrelated texture it stays near
    noise. So it detects near-duplicates even when shifted, flipped, rotated or re-exposed.
    """
    spec = sfft.rfft2(np.stack(bank), workers=1)
    out = []
    for q in queries:
        best = 0.0
        for r in range(4):
            for v in (np.rot90(q, r), np.fliplr(np.rot90(q, r))):
                cross = sfft.rfft2(np.ascontiguousarray(v), workers=1)[None] * np.conj(spec)
                cross /= np.abs(cross) + 1e-6
                best = max(best, float(sfft.irfft2(cross, s=q.shape, workers=1).max()))
        out.append(best)
    return np.asarray(out)


def _grey(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("L"), np.float32)
    return a - a.mean()


@pytest.mark.parametrize("category", sorted(synthetic.CATEGORIES))
def test_train_and_test_crops_come_from_disjoint_regions(full_root: Path, category: str) -> None:
    base = full_root / category
    train = [_grey(p) for p in sorted((base / "train" / "good").glob("*.png"))]
    test = [_grey(p) for p in sorted((base / "test" / "good").glob("*.png"))[:12]]
    test += [_grey(base / "test" / d / "000.png") for d in DEFECT_TYPES]
    test_peaks = _phase_corr_peaks(test, train)
    # Positive control: train crops overlap each other (same region), so the measure must fire there.
    control = [_phase_corr_peaks([train[i]], train[:i] + train[i + 1 :])[0] for i in (0, 1)]
    assert min(control) > 0.3, control
    assert test_peaks.max() < 0.25, test_peaks.max()
    bounds = synthetic.region_bounds(category)
    assert bounds["train"][1] <= bounds["test"][0]


def test_dataset_records(full_root: Path) -> None:
    ds = SyntheticDataset(root=full_root)
    assert ds.kind == "synthetic" and ds.pixel_level
    assert ds.categories() == sorted(synthetic.CATEGORIES)
    recs = ds.records("grass")
    ids = [r.image_id for r in recs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(r.category == "grass" and (full_root / r.image_id) == r.path for r in recs)
    train = [r for r in recs if r.split == "train"]
    test = [r for r in recs if r.split == "test"]
    assert len(train) == synthetic.N_TRAIN and all(r.label == 0 and r.mask_path is None for r in train)
    goods = [r for r in test if r.label == 0]
    bad = [r for r in test if r.label == 1]
    assert len(goods) == synthetic.N_TEST_GOOD
    assert all(r.defect_type == "good" and r.mask_path is None for r in goods)
    assert len(bad) == synthetic.N_PER_DEFECT * len(DEFECT_TYPES)
    for r in bad:
        assert r.mask_path is not None and r.mask_path.is_file()
        assert r.mask_path.name == f"{r.path.stem}_mask.png" and r.defect_type in DEFECT_TYPES
    assert ids[0] == "grass/test/foreign/000.png"
    with pytest.raises(DatasetError, match="unknown"):
        ds.records("carpet")
    assert ds.resolve_categories("all") == sorted(synthetic.CATEGORIES)


def test_default_root_is_in_the_data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNAD_CACHE", str(tmp_path))
    assert SyntheticDataset().root == tmp_path / "data" / "synthetic-v1"
    assert not (tmp_path / "data").exists()  # nothing is generated before first use


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the counts so install/regeneration tests run in a fraction of a second."""
    monkeypatch.setattr(synthetic, "N_TRAIN", 2)
    monkeypatch.setattr(synthetic, "N_TEST_GOOD", 1)
    monkeypatch.setattr(synthetic, "N_PER_DEFECT", 1)


def test_stale_or_incomplete_root_is_regenerated(tiny: None, tmp_path: Path) -> None:
    root = tmp_path / "syn"
    (root / "brick" / "train" / "good").mkdir(parents=True)
    (root / "brick" / "train" / "good" / "000.png").write_bytes(b"half-written")  # crash leftover, no VERSION
    ds = SyntheticDataset(root=root)
    assert ds.categories() == sorted(synthetic.CATEGORIES)
    assert synthetic.is_complete(root)
    Image.open(root / "brick" / "train" / "good" / "000.png").load()  # the garbage file was replaced
    assert len(ds.records("brick")) == 2 + 1 + len(DEFECT_TYPES)

    (root / "VERSION").write_text("funad-synthetic 0.0\ncategories: brick,grass,gravel\n")  # old version
    assert not synthetic.is_complete(root)
    SyntheticDataset(root=root).categories()
    assert synthetic.is_complete(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temp or stale dirs left behind


def test_foreign_folder_is_never_overwritten(tiny: None, tmp_path: Path) -> None:
    root = tmp_path / "mydata"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        SyntheticDataset(root=root).categories()
    assert (root / "precious.txt").read_text() == "keep me"


def test_concurrent_first_use_installs_one_complete_tree(tiny: None, tmp_path: Path) -> None:
    root = tmp_path / "shared" / "synthetic-v1"
    errors: list[BaseException] = []

    def use() -> None:
        try:
            SyntheticDataset(root=root).records("gravel")
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert synthetic.is_complete(root)
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic-v1"]


def test_contact_sheet(full_root: Path, tmp_path: Path) -> None:
    """scripts/make_contact_sheet.py draws the docs picture of the dataset from an existing tree."""
    out = tmp_path / "sheet.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_contact_sheet.py"), "--root", str(full_root),
                    "--out", str(out), "--thumb", "64"], check=True, capture_output=True, cwd=REPO)
    with Image.open(out) as im:
        n_cols = 2 + 2 + 2 * len(DEFECT_TYPES)
        assert im.size == (64 + n_cols * (64 + 4), 16 + len(synthetic.CATEGORIES) * (64 + 4))
        arr = np.asarray(im.convert("RGB"))
    assert ((arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 0)).sum() > 50  # red mask outlines
