"""AU datasets for fine-tuning, as frame tables (one labelled frame per record).

* `load_bp4d`, `load_disfa`, `load_csv` read the released layouts (shards.datasets) into a
  `FrameTable`; bad input raises `ValueError` / `FileNotFoundError` naming the file before any
  training starts.
* The evaluation protocol (subject-exclusive folds, the few-label draw) is `finetune.protocol`.
* `read_frame` returns a record's face crop as `uint8 [size, size, 3]` (the box:
  `shards.geometry.crop_box`); `VideoFrames` reads DISFA's video frames by index (decoded on
  demand; see `shards.datasets.video`).

Labels follow `finetune.metrics`: occurrence int8 with -1 unknown, intensity float32 with NaN
unknown. The implementation lives in `shards.datasets`, one module per job.
"""

from shards.datasets.bp4d import load_bp4d
from shards.datasets.csvtable import load_csv
from shards.datasets.disfa import PRESENT_AT, load_disfa
from shards.datasets.pixels import load_pixels, read_frame
from shards.datasets.table import (BP4D_AUS, BP4D_INTENSITY_AUS, DISFA_AUS, DISFA_INTENSITY_AUS, FrameRecord,
                                     FrameTable, au_name, au_number)  # fmt: skip
from shards.datasets.video import VideoFrames, video_frame_count

__all__ = ["BP4D_AUS", "BP4D_INTENSITY_AUS", "DISFA_AUS", "DISFA_INTENSITY_AUS", "PRESENT_AT", "FrameRecord",
           "FrameTable", "au_name", "au_number", "load_bp4d", "load_disfa", "load_csv", "read_frame", "load_pixels",
           "VideoFrames", "video_frame_count"]  # fmt: skip
