"""OpenCV Haar cascade frontal face detector (Viola-Jones).

A weaker but dependency-light alternative to dlib's HOG detector: the cascade XML files ship
inside the opencv-python(-headless) wheel under `cv2.data.haarcascades`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.judge.interfaces import Detection

CASCADE_FILE = "haarcascade_frontalface_default.xml"


def default_cascade_path() -> Path:
    """Path of the frontal-face cascade inside the installed OpenCV wheel."""
    import cv2

    data = getattr(cv2, "data", None)
    if data is None:  # some OpenCV builds (e.g. system packages) do not ship cv2.data
        raise MissingWeightsError(
            f"this OpenCV build has no cv2.data: run `pip install opencv-python-headless` "
            f"or pass the path of {CASCADE_FILE}"
        )
    return Path(data.haarcascades) / CASCADE_FILE


class HaarFaceDetector:
    """Haar cascade face detector; the score is the cascade's last-stage weight (higher = surer).

    `min_neighbors` trades recall for precision (OpenCV's usual 5); `min_size` is the smallest
    face side in pixels.
    """

    name = "haar"

    def __init__(
        self,
        cascade_path: str | Path | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
    ) -> None:
        import cv2

        path = Path(cascade_path) if cascade_path is not None else default_cascade_path()
        if not path.is_file():
            raise MissingWeightsError(
                f"Haar cascade {path} not found: put {CASCADE_FILE} there "
                "(it ships in opencv-python-headless under cv2.data.haarcascades)"
            )
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise InputError(f"{path} is not a valid OpenCV cascade XML: use {CASCADE_FILE}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} "
                f"{image.shape}: convert the image to 8-bit RGB"
            )
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)  # (H, W)
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        found = []
        for (x, y, w, h), weight in zip(np.reshape(rects, (-1, 4)), np.ravel(weights)):
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            found.append(Detection(box=box, score=float(weight), face_box=box.copy()))
        return sorted(found, key=lambda d: -d.score)
