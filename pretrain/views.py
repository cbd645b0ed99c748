"""The typed values passed from augmentation through the encoder to the objectives.

`pretrain.augment.make_views` cuts two temporal views from each clip (`View.input`, `time`,
and `landmarks` where frames were aligned); `PretrainModel.encode` adds what the encoder made of
them (`features`, `au`, `clip`, and `maps` when an objective reads feature maps); the model then mines the memory bank once for the objectives
that ask (`Encoded.mining`). A field an objective needs but the run does not give is None, and
the objective says so (its `needs` are checked against the data before training starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from pretrain.bank import Mining


@dataclass
class View:
    """One augmented temporal view of a batch of B clips, L frames each."""

    input: Optional[torch.Tensor] = None  # [B, L, 3, H, W] normalised frames the encoder saw
    time: Optional[torch.Tensor] = None  # [B, L] frames since the view's first frame
    landmarks: Optional[torch.Tensor] = None  # [B, L, 68, 2] in the aligned crop, before augmentation
    frames: Optional[torch.Tensor] = None  # [B, L, 3, H, W] uint8, the aligned frames before augmentation
    features: Optional[torch.Tensor] = None  # [B, L, F] pooled backbone features
    au: Optional[torch.Tensor] = None  # [B, L, D] AU embeddings
    clip: Optional[torch.Tensor] = None  # [B, D] clip embedding (through the temporal module)
    maps: Optional[torch.Tensor] = None  # [B, L, C, h, w] last-stage feature maps, when an objective reads them


@dataclass
class Encoded:
    views: list[View]
    mining: Optional["Mining"] = None  # per anchor frame: cross-identity positives, identity-hard negatives
    # the encoder itself, for objectives that encode inputs of their own (masked frames)
    encoder: Optional[torch.nn.Module] = None
    # the step's random stream (seeded by seed, step, rank: see pretrain.augment.step_generator),
    # for objectives that draw (masks): a resumed run draws what the uninterrupted one drew
    generator: Optional[torch.Generator] = None

    def anchors(self) -> torch.Tensor:
        """The AU embeddings of both views as one clip of anchors, [B, 2L, D], in fp32: row n is
        frame n of view 0 for n < L, frame n - L of view 1 after. The rows the memory bank is
        asked about and the cross-identity objectives score."""
        return torch.cat([v.au for v in self.views], dim=1).float()

    def anchor_rows(self, view: int) -> slice:
        """Where view `view`'s frames sit among the rows of `anchors()` (and so of `mining`)."""
        start = sum(v.au.shape[1] for v in self.views[:view])
        return slice(start, start + self.views[view].au.shape[1])
