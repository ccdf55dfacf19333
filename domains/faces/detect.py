"""Face detection with the Haar cascades that ship inside ``opencv-python-headless`` (Viola & Jones, 2001).

No download at run time: the cascade files are in the wheel (``cv2.data.haarcascades``). OpenCV 5
dropped ``CascadeClassifier`` from the main module, so the ``faces`` extra pins
``opencv-python-headless>=4.9,<5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the frontal-face cascade used everywhere in diffsr (also to measure the portraits' framing)
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
#: crop side over the detector's box: the framing of the training portraits (225 px crops of 143 px boxes)
FACE_MARGIN = 1.6


class DetectorUnavailable(ImportError):
    """OpenCV (with its Haar cascades) is not installed: install the ``faces`` extra."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face: the detector's box in pixels (``top``, ``left``, ``height``, ``width``)."""

    top: int
    left: int
    height: int
    width: int

    @property
    def center(self) -> tuple[float, float]:
        return self.top + self.height / 2, self.left + self.width / 2

    def square(self, margin: float = FACE_MARGIN) -> tuple[int, int, int]:
        """``(top, left, side)`` of the face-centred square ``margin`` times the box (may leave the image)."""
        side = int(round(margin * max(self.height, self.width)))
        cy, cx = self.center
        return int(round(cy - side / 2)), int(round(cx - side / 2)), side


def _cascade(name: str):  # type: ignore[no-untyped-def]
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise DetectorUnavailable(
            "face detection needs OpenCV: pip install 'opencv-python-headless>=4.9,<5' (the 'faces' extra)"
        ) from exc
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it); install opencv-python-headless<5")
    path = Path(cv2.data.haarcascades) / name
    if not path.is_file():
        raise DetectorUnavailable(f"{path}: Haar cascade not found in the OpenCV package")
    clf = cv2.CascadeClassifier(str(path))
    if clf.empty():
        raise DetectorUnavailable(f"{path}: Haar cascade could not be loaded")
    return cv2, clf


def detect_faces(
    image: np.ndarray,
    min_size: int = 24,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    cascade: str = DEFAULT_CASCADE,
    overlap: float = 0.3,
) -> list[FaceBox]:
    """Frontal faces in an image, largest first.

    Args:
        image: ``(C, H, W)`` in [0, 1] (grey or RGB).
        min_size: smallest face box in pixels.
        scale_factor: the cascade's pyramid step.
        min_neighbors: detections a face needs (higher: fewer false positives).
        cascade: Haar cascade file inside ``cv2.data.haarcascades``.
        overlap: a box that overlaps a larger kept one by more than this (intersection over the
            smaller box) is dropped.

    Returns:
        The boxes, largest first (empty when no face is found).
    """
    cv2, clf = _cascade(cascade)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) grey or RGB image, got shape {image.shape}")
    grey = image[0] if image.shape[0] == 1 else 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    grey8 = cv2.equalizeHist((np.clip(grey, 0, 1) * 255).round().astype(np.uint8))
    found = clf.detectMultiScale(grey8, scaleFactor=scale_factor, minNeighbors=min_neighbors, minSize=(min_size, min_size))
    boxes = sorted((FaceBox(int(y), int(x), int(h), int(w)) for x, y, w, h in np.asarray(found).reshape(-1, 4)),
                   key=lambda b: -b.height * b.width)
    kept: list[FaceBox] = []
    for b in boxes:
        if all(_overlap(b, k) <= overlap for k in kept):
            kept.append(b)
    return kept


def _overlap(a: FaceBox, b: FaceBox) -> float:
    """Intersection area over the smaller box's area."""
    h = min(a.top + a.height, b.top + b.height) - max(a.top, b.top)
    w = min(a.left + a.width, b.left + b.width) - max(a.left, b.left)
    if h <= 0 or w <= 0:
        return 0.0
    return h * w / min(a.height * a.width, b.height * b.width)
