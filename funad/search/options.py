"""What a certified search is asked to do (`SearchOptions`), apart from the data about its rows (`Exclusion`).

Options are settings: a method builds them once from its own settings and passes the same object to every
search call. An exclusion is data: which bank rows each query row may not match, a tensor per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from funad.search.backends import CERTIFIED, check_backend, resolve_backend
from funad.search.precision import check_precision


@dataclass(frozen=True)
class SearchOptions:
    """How `nearest`, `batch_search` and `mutual_pairs` search; every value is checked here, once.

    rerank:    approximate candidates per query row that stage 2 recomputes exactly (k <= rerank).
    chunk:     query rows per GEMM block (and per re-rank slab).
    precision: the stage-1 ranking GEMM's precision, one of `PRECISIONS` (distances are exact fp32 anyway).
    backend:   `auto`, `torch` or `faiss` for stage 1 (`auto`: `funad.search.backends.AUTO_BACKEND`).
    certify:   search again, with more candidates, every row whose candidates cannot be shown to hold its
               k nearest; None = on for fp32 (the exact default), off for the reduced precisions.
    """

    rerank: int = 8
    chunk: int = 2048
    precision: str = "fp32"
    backend: str = "auto"
    certify: bool | None = None

    def __post_init__(self) -> None:
        if self.rerank < 1:
            raise ValueError(f"search options: need rerank >= 1, got {self.rerank}")
        if self.chunk < 1:
            raise ValueError(f"search options: need chunk >= 1, got {self.chunk}")
        check_precision(self.precision)
        check_backend(self.backend)

    def check_k(self, k: int, where: str = "search") -> None:
        """ValueError unless 1 <= k <= rerank (the re-rank can only return candidates it has)."""
        if k < 1 or self.rerank < k:
            raise ValueError(f"{where}: need 1 <= k <= rerank, got k={k}, rerank={self.rerank}")

    @property
    def certifies(self) -> bool:
        """Whether uncertain rows are searched again (`certify`, None resolved by the precision)."""
        return self.precision == "fp32" if self.certify is None else self.certify

    def backend_on(self, device: torch.device) -> str:
        """The stage-1 backend for tensors on `device` (`auto` resolved by the one rule)."""
        return resolve_backend(self.backend, CERTIFIED, device)

    def widened(self, rerank: int) -> SearchOptions:
        """The options of the certification's second search: `rerank` candidates, certified, on the torch
        stream (only its keys come with the error model that certification needs)."""
        return replace(self, rerank=rerank, certify=True, backend="torch")


#: the options of a search that is given none
DEFAULT_OPTIONS = SearchOptions()


@dataclass(frozen=True, eq=False)  # tensors: no field-wise ==
class Exclusion:
    """Which bank rows each query row may never match (data about the rows of one call, not an option).

    own_row [Q]:     query row i never matches bank row own_row[i] (< 0: no exclusion); a self-search
                     (query IS the bank) is own_row = arange(Q), see `self_search`. By index: duplicates
                     of a row still match it.
    query_owner [Q], bank_owner [B]: rows with equal owner ids never match (own-image exclusion); both or
                     neither.
    """

    own_row: torch.Tensor | None = None
    query_owner: torch.Tensor | None = None
    bank_owner: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.query_owner is None) != (self.bank_owner is None):
            raise ValueError("search exclusion: give both query_owner and bank_owner, or neither")

    @classmethod
    def self_search(cls, query: torch.Tensor) -> Exclusion:
        """The query rows are the bank rows: row i never matches itself."""
        return cls(own_row=torch.arange(query.shape[0], device=query.device))

    @property
    def by_owner(self) -> bool:
        """Whether own-image exclusion applies."""
        return self.query_owner is not None

    def of_rows(self, rows: torch.Tensor) -> Exclusion:
        """The exclusion of the query rows `rows` only (the bank side unchanged)."""
        return Exclusion(
            own_row=None if self.own_row is None else self.own_row[rows],
            query_owner=None if self.query_owner is None else self.query_owner[rows],
            bank_owner=self.bank_owner,
        )


#: no exclusion: every bank row may match every query row
NO_EXCLUSION = Exclusion()
