"""The columns of a run directory's Parquet files (docs/contract.md, "Result row").

The fixed part of every schema lives here; the per-run part (one hp_<name> column per swept setting,
one diag_<name> column per method diagnostic) is added by the harness, which knows the methods.
The report reads these names without importing the harness.
"""

from __future__ import annotations

import pyarrow as pa

#: the six headline metrics, in docs/contract.md's order
METRIC_KEYS: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1max")
#: best-on-test values (never headline)
ORACLE_KEYS: tuple[str, ...] = ("oracle_image_auroc", "oracle_pixel_auroc", "oracle_epoch")
#: per-epoch test evaluations in history rows (feed the oracle columns only)
EVAL_KEYS: tuple[str, ...] = ("eval_image_auroc", "eval_pixel_auroc")
#: prefixes of the per-run columns
HP_PREFIX = "hp_"
DIAG_PREFIX = "diag_"

#: docs/contract.md's result columns, in order (hp_* and diag_* are inserted per run after these)
RESULT_FIELDS: list[pa.Field] = [
    pa.field("run", pa.string()),
    pa.field("cell_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("method", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("ratio", pa.float64()),
    pa.field("achieved_ratio", pa.float64()),
    pa.field("overlap", pa.bool_()),
    pa.field("seed", pa.int64()),
    pa.field("params", pa.string()),
    pa.field("n_train_normal", pa.int64()),
    pa.field("n_injected", pa.int64()),
    pa.field("n_test_normal", pa.int64()),
    pa.field("n_test_anomalous", pa.int64()),
    pa.field("injected_ids", pa.list_(pa.string())),
    *[pa.field(m, pa.float64()) for m in METRIC_KEYS],
    pa.field("oracle_image_auroc", pa.float64()),
    pa.field("oracle_pixel_auroc", pa.float64()),
    pa.field("oracle_epoch", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("attempt", pa.int64()),
    pa.field("feature_s", pa.float64()),
    pa.field("fit_s", pa.float64()),
    pa.field("eval_s", pa.float64()),
    pa.field("wall_s", pa.float64()),
    pa.field("peak_rss_mb", pa.float64()),
    pa.field("peak_gpu_mb", pa.float64()),
    pa.field("device", pa.string()),
    pa.field("node", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("versions", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]

#: the cell's defining values beyond docs/contract.md: in every result row (after diag_*) and in the plan
CELL_FIELDS: list[pa.Field] = [
    pa.field("dataset_root", pa.string()),
    pa.field("dataset_options", pa.string()),  # JSON of the loader options besides kind/root
    pa.field("backbone_config", pa.string()),  # JSON of every backbone field
    pa.field("requested_count", pa.int64()),
    pa.field("shortfall", pa.string()),
    # the ratio definition (docs/protocol.md): a row of one protocol is never averaged with another's
    pa.field("contamination_source", pa.string()),  # anomalies | all_test | list | dataset
    pa.field("ratio_of", pa.string()),  # normal | train
    pa.field("pool_order", pa.string()),  # sorted | appended
    pa.field("split_list", pa.string()),  # the training list of the cell, or null (drawn)
]

#: what a row from before these columns existed means (today's default protocol)
PROTOCOL_DEFAULTS: dict[str, str] = {"contamination_source": "anomalies", "ratio_of": "normal",
                                     "pool_order": "sorted"}

#: beyond docs/contract.md: facts the report and debugging want, always present (nullable)
EXTRA_RESULT_FIELDS: list[pa.Field] = [
    *CELL_FIELDS,
    pa.field("shortfall_applied", pa.string()),  # null, "cap" or "augment"
    pa.field("split_source", pa.string()),  # "drawn", "dataset:<kind>" or "<list path> sha256:<hex>"
    pa.field("n_injected_normal", pa.int64()),  # injected images that are normal (source all_test)
    pa.field("n_train_pool", pa.int64()),
    pa.field("pixel_level", pa.bool_()),
    pa.field("eval_every", pa.int64()),
    pa.field("hp", pa.string()),  # JSON of the swept values of this cell
    # why a metric is null, grouped: "image_auroc, image_ap, image_f1max: the test set has no anomalous
    # image"; also any all-zero masks (funad.metrics.metric_notes); null when every metric has a value
    pa.field("metric_notes", pa.string()),
]

#: plan.parquet: one row per cell of the spec's grid (hp_* columns follow, typed like the results')
PLAN_FIELDS: list[pa.Field] = [
    pa.field("cell_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("method", pa.string()),
    pa.field("backbone", pa.string()),
    pa.field("ratio", pa.float64()),
    pa.field("overlap", pa.bool_()),
    pa.field("seed", pa.int64()),
    pa.field("params", pa.string()),  # JSON of the method's settings, defaults filled
    *CELL_FIELDS,
    pa.field("min_test_anomalies", pa.int64()),  # null = the contamination default
    pa.field("hp", pa.string()),
]

SCORES_SCHEMA = pa.schema(
    [
        pa.field("cell_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("defect_type", pa.string()),
    ]
)

MAPS_SCHEMA = pa.schema(
    [
        pa.field("cell_id", pa.string()),
        pa.field("image_id", pa.string()),
        pa.field("pick", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        pa.field("image_png", pa.binary()),
        pa.field("map_png", pa.binary()),
        pa.field("mask_png", pa.binary()),
    ]
)

#: history columns every run has; a method's other numeric keys go to diag_* (if declared) or `extra`
HISTORY_BASE_FIELDS: list[pa.Field] = [
    pa.field("cell_id", pa.string()),
    pa.field("method", pa.string()),
    pa.field("epoch", pa.int64()),
    pa.field("iteration", pa.int64()),
    pa.field("loss", pa.float64()),
    pa.field("loss_bce", pa.float64()),
    pa.field("loss_ms", pa.float64()),
]
#: after the diag_* columns
HISTORY_TAIL_FIELDS: list[pa.Field] = [
    *[pa.field(k, pa.float64()) for k in EVAL_KEYS],
    pa.field("extra", pa.string()),  # JSON of any key the schema does not know (nothing is lost)
]
