"""`python -m benchmarks.anomalib_tiny [MODEL[:CROP] ...]`: CPU seconds of one tiny cell per anomalib model.

The tiny problem of `funad.methods.conformance.tiny_images` (12 training images with one injected, 8 test
images), each model at its smoke settings (one epoch, batch 4) with the bundled backbone where it takes
ours, one torch thread, `time.process_time` of fit and of score, in one process after anomalib's import
(timed on its own). One JSON line per model; CPU seconds stay meaningful on a shared machine, wall
seconds do not. Needs the `anomalib` extra; Draem gets a generated texture folder.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

#: the models that run offline with their defaults, at the crop they need (docs/methods.md)
DEFAULT_RUNS = ("Padim", "Patchcore", "Dfkde", "Dfm", "Stfpm", "Cflow", "Glass", "Fre", "Patchflow",
                "Ganomaly", "Draem", "Supersimplenet:128", "MHPatchcore:224")


def main(runs: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    start = time.process_time()
    import anomalib.models.image  # noqa: F401 - timed on its own

    print(json.dumps({"import_cpu_s": round(time.process_time() - start, 2)}), flush=True)
    from funad.features import BackboneConfig
    from funad.methods import FitContext, create_method, method_class
    from funad.methods.anomalib import method_name
    from funad.methods.conformance import IMAGE_CROP, texture_folder, tiny_images

    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            model, _, crop = run.partition(":")
            side = int(crop) if crop else IMAGE_CROP
            name = method_name(model)
            settings = dict(method_class(name).smoke_settings)
            if model == "Draem":
                settings["model_args"] = {"dtd_dir": str(texture_folder(Path(tmp) / "dtd"))}
            data = tiny_images(seed=1, preprocessing=BackboneConfig(resize=side + side // 8, crop=side))
            out: dict = {"model": model, "crop": side, "settings": settings}
            try:
                method = create_method(name, settings)
                ctx = FitContext(seed=0, device="cpu", map_size=24)
                t = time.process_time()
                method.fit(data.train, ctx)
                out["fit_cpu_s"] = round(time.process_time() - t, 2)
                t = time.process_time()
                scores = method.score(data.test, ctx)
                out["score_cpu_s"] = round(time.process_time() - t, 2)
                labels = data.test.labels
                out["anomalies_above_normals"] = bool(scores.image[labels == 1].mean()
                                                      > scores.image[labels == 0].mean())
                out["maps"] = scores.maps is not None
            except Exception as e:  # noqa: BLE001 - one model's failure is a result, not the end
                out["error"] = f"{type(e).__name__}: {e}"[:300]
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(DEFAULT_RUNS))
