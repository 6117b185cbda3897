"""Read faces from image batches: detection, 68 landmarks and a 128-d identity descriptor per image.

Images are upscaled to :data:`SIZE` pixels before reading (dlib's HOG detector finds faces of about
80 px and up; the embedded model draws 64 px). Coordinates are in those upscaled pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from olam_edit.eval.judge.models import FaceModels, load_models

SIZE = 256  # pixels a face is read at
N_LANDMARKS = 68


@dataclass
class Faces:
    """What the judge read from a batch of ``B`` images.

    ``detected[i]`` says whether the detector found a face in image ``i``; where it did not, the
    landmarks and descriptor were read in ``boxes[i]``, the box given for that image (the face's box
    before the edit) or, with none given, the whole frame.
    """

    detected: np.ndarray  # [B] bool
    boxes: np.ndarray  # [B, 4] int: left, top, right, bottom
    landmarks: np.ndarray  # [B, 68, 2] float64: x, y
    descriptors: np.ndarray  # [B, 128] float64
    pixels: np.ndarray  # [B, SIZE, SIZE, 3] uint8: the upscaled images

    def __len__(self) -> int:
        return len(self.detected)


def to_pixels(images: Tensor, size: int = SIZE) -> np.ndarray:
    """Images ``[B, 3, H, W]`` in [-1, 1] as uint8 ``[B, size, size, 3]`` (bicubic upscaling)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [B, 3, H, W]
    hwc = arr.permute(0, 2, 3, 1).numpy()  # [B, H, W, 3]
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC)) for a in hwc])


def from_pixels(pixels: np.ndarray, size: int) -> Tensor:
    """uint8 ``[B, S, S, 3]`` back to images ``[B, 3, size, size]`` in [-1, 1] (area downscaling)."""
    small = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BOX)) for p in pixels])
    return torch.from_numpy(small).permute(0, 3, 1, 2).double() / 127.5 - 1  # [B, 3, size, size]


def read_faces(images: Tensor | np.ndarray, boxes: np.ndarray | None = None, *, models: FaceModels | None = None,
               identity: bool = True, progress: bool = False, desc: str = "judge") -> Faces:
    """Read every image of ``images`` (``[B, 3, H, W]`` in [-1, 1], or uint8 pixels ``[B, S, S, 3]``).

    ``boxes`` ``[B, 4]`` (usually the faces' boxes before an edit) is where to read an image whose face
    the detector misses; the largest detection is used otherwise. Without ``identity`` the descriptors
    (nine tenths of the time) are left at zero.
    """
    m = models or load_models()
    pixels = images if isinstance(images, np.ndarray) else to_pixels(images)
    n = len(pixels)
    out = Faces(np.zeros(n, bool), np.zeros((n, 4), int), np.zeros((n, N_LANDMARKS, 2)), np.zeros((n, 128)), pixels)
    for i in tqdm(range(n), disable=not progress, desc=desc, unit="face"):
        _read_one(m, out, i, None if boxes is None else boxes[i], identity)
    return out


def _read_one(m: FaceModels, out: Faces, i: int, fallback: np.ndarray | None, identity: bool) -> None:
    import dlib

    img = out.pixels[i]
    found = list(m.detector(img, 0))
    if found:
        rect = max(found, key=lambda r: r.area())
    elif fallback is not None:
        rect = dlib.rectangle(*(int(v) for v in fallback))
    else:
        rect = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
    shape = m.landmarks(img, rect)
    out.detected[i] = bool(found)
    out.boxes[i] = (rect.left(), rect.top(), rect.right(), rect.bottom())
    out.landmarks[i] = [(p.x, p.y) for p in shape.parts()]
    if identity:
        out.descriptors[i] = np.asarray(m.identity.compute_face_descriptor(img, shape))
