"""Every nearest-neighbour search of the project: FUN-AD's certified exact search and the plain flat knn.

FUN-AD's searches (bank search, mutual pairs; `nearest`, `batch_search`, `mutual_pairs`) run in two
stages:
1. an approximate, chunked matmul ranking (the squared distance of mean-centred vectors as ONE
   GEMM, the norms riding along as extra columns, in the configured precision: fp32, tf32 or
   bf16; or faiss) that keeps `rerank` candidates per query;
2. the candidates' squared distances recomputed exactly in fp32 from differences, then ordered by
   (distance, index).
Stage 2 makes an exact self-match exactly 0 (so the eps0 rule cannot be broken by matmul rounding,
which in bf16 is far above eps0 = 0.01), makes ties break by the smallest index whatever the
GEMM's summation order, and makes the torch and faiss backends agree. The result is exact whenever
the true neighbours are among the `rerank` approximate candidates; `certify` (on by default in fp32)
searches again, with more candidates, every row for which that cannot be proven from the key-error
model `KEY_SLACK`.

How a search runs is one frozen `SearchOptions(rerank, chunk, precision, backend, certify)`, built once
by a method from its settings; which bank rows a query row may not match (its own row, its own image)
is data, an `Exclusion`, given per call.

In the training loop, `batch_search` does the bank search and the pair search in one pass: the
batch x batch distance matrix is symmetric, so each upper-triangle block is computed once and
serves its rows and its columns, and the batch images that are also bank images share those
blocks with the bank search; only the bank images outside the batch need extra blocks.

On the CPU, the per-block selection (merging each GEMM block's smallest keys into running per-row
and per-column candidate sets) and the exact re-rank run in small compiled kernels
(`funad.native`, built on first use; FUNAD_NATIVE=0 or no C compiler: the torch ops, same
candidates up to ties, and tested to agree). GPU tensors always take the torch ops.

`knn` is the plain flat search of PatchCore and SoftPatch (torch or faiss, no re-rank). What
`knn_backend: auto` means, for both kinds of search, is one table (`backends.AUTO_BACKEND`).

Modules: `options` (SearchOptions, Exclusion), `backends` (backend names, faiss's presence, the `auto`
rule), `precision` (precision names, matmul setting, operand dtype, key slack), `operands` (the
ranking GEMM's operands), `blocks` (per-block selection, running top-k), `candidates` (stage 1),
`rerank` (stage 2 and certification), `nearest` (the certified searches), `flat` (knn), `pairs`
(InReaCh's two-way nearest patches).
"""

from funad.search.backends import (
    BACKENDS,
    CERTIFIED,
    FLAT,
    Backend,
    faiss_available,
    faiss_gpus,
    resolve_backend,
)
from funad.search.flat import knn
from funad.search.nearest import batch_search, mutual_pairs, nearest
from funad.search.options import DEFAULT_OPTIONS, NO_EXCLUSION, Exclusion, SearchOptions
from funad.search.precision import KEY_SLACK, PRECISIONS, matmul_precision, search_dtype

__all__ = [
    "BACKENDS",
    "CERTIFIED",
    "FLAT",
    "Backend",
    "DEFAULT_OPTIONS",
    "Exclusion",
    "NO_EXCLUSION",
    "SearchOptions",
    "KEY_SLACK",
    "PRECISIONS",
    "batch_search",
    "faiss_available",
    "faiss_gpus",
    "knn",
    "matmul_precision",
    "mutual_pairs",
    "nearest",
    "resolve_backend",
    "search_dtype",
]
