"""Score files that SegmentMeIfYouCan's code and evaluation server read.

Format (road-anomaly-benchmark at 1c7804e, ``road_anomaly_benchmark/evaluation.py`` ``save_output`` and
``datasets/dataset_io.py`` ``ChannelLoaderHDF5``; ../shared/docs/SMIYC.md section 2):
``<out>/anomaly_p/<method>/<persistence name>/<fid>.hdf5`` holding one dataset ``value``: the score map at
the image's full resolution, (H, W) float16, gzip level 9; higher = more anomalous. The persistence name
is the folder the official code reads a frame's scores from (``AnomalyTrack-all``, ``ObstacleTrack-all``,
``LostAndFound-test`` / ``-train``; :meth:`anomseg.data.SegmentationDataset.group`).

Every file is written atomically (a ``.tmp`` beside it, then renamed); a score outside float16's range
is refused before its file is written. :meth:`SmiycExporter.zip` packs one method's tree for submission.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import h5py
import numpy as np

from anomseg.errors import AnomsegError
from anomseg.files import write_with
from anomseg.metrics.smiyc import to_float16

EXPORTS = ("none", "smiyc")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # never "." or "..": a name is a folder


class ExportError(AnomsegError, ValueError):
    """A score map cannot be exported as asked."""


class SmiycExporter:
    """Writes SMIYC score files under ``<root>/anomaly_p``.

    Args:
        root: the output folder (the reference's ``DIR_OUTPUTS``).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, method: str, group: str, fid: str) -> Path:
        for what, name in (("method", method), ("persistence name", group), ("frame id", fid)):
            if not _SAFE.match(name):
                raise ExportError(f"{what} {name!r} cannot name a score file; use letters, digits and . _ + - only")
        return self.root / "anomaly_p" / method / group / f"{fid}.hdf5"

    def write(self, method: str, group: str, fid: str, score: np.ndarray, image_size: tuple[int, int]) -> Path:
        """Write one frame's score map.

        Args:
            score: float (H, W) at the image's full resolution ``image_size`` = (H, W).
        """
        score = np.asarray(score)
        if score.shape != tuple(image_size):
            raise ExportError(f"method {method!r}, frame {fid!r}: score map {score.shape} is not at the image's full "
                              f"resolution {tuple(image_size)}; SMIYC indexes the scores with the label's ROI (remove "
                              f"data.options.label_scale)")
        try:
            s16 = to_float16(score)
        except ValueError as exc:
            raise ExportError(f"method {method!r}, frame {fid!r}: {exc}") from None
        path = self.path(method, group, fid)

        def write(tmp):
            with h5py.File(tmp, "w") as f:
                f.create_dataset("value", data=s16, compression=9)

        return write_with(path, write)

    def files(self, method: str) -> list[Path]:
        return sorted((self.root / "anomaly_p" / method).glob("*/*.hdf5"))

    def zip(self, method: str) -> Path:
        """``<root>/smiyc_<method>.zip`` holding ``anomaly_p/<method>/<persistence name>/<fid>.hdf5``."""
        out = self.root / f"smiyc_{method}.zip"
        files = self.files(method)

        def write(tmp):
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:  # the files are gzip already
                for f in files:
                    z.write(f, f.relative_to(self.root).as_posix())

        return write_with(out, write)


def read_score_file(path: str | Path) -> np.ndarray:
    """float16 (H, W) of a score file (what the official loader reads, squeezed)."""
    with h5py.File(path, "r") as f:
        return np.squeeze(f["value"][()])
