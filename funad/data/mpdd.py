"""MPDD (Metal Parts Defect Detection; Jezek et al., ICUMT 2021) reader.

MPDD ships in the MVTec AD layout (`<category>/train/good`, `<category>/test/<defect>`,
`<category>/ground_truth/<defect>/<stem>_mask.png`), so the MVTec rules read it unchanged. It is a
kind of its own rather than an option of `mvtec` because the kind is part of every result row and
cell id: MPDD numbers must never be mistaken for MVTec AD ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from funad.data.mvtec import MVTecDataset


@dataclass
class MPDDDataset(MVTecDataset):
    """MPDD categories (bracket_black, bracket_brown, bracket_white, connector, metal_plate, tubes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "mpdd"
