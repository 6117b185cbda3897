"""Find and load the judge's dlib models from the ``face-recognition-models`` wheel.

The wheel's own ``__init__`` imports ``pkg_resources`` (gone from new setuptools), so its folder is
located with :func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from olam_edit.errors import OlamEditError, explain

INSTALL = "pip install 'olam-edit[judge]'"
FILES = {"landmarks": "shape_predictor_68_face_landmarks.dat",
         "identity": "dlib_face_recognition_resnet_model_v1.dat"}


class JudgeUnavailableError(OlamEditError, ImportError):
    """The judge's packages are not installed."""


@dataclass(frozen=True)
class FaceModels:
    """dlib's HOG face detector, its 68-point landmark predictor and its 128-d identity descriptor."""

    detector: Any
    landmarks: Any
    identity: Any


def model_folder() -> Path:
    """The folder of the ``.dat`` files inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeUnavailableError(explain("the judge's face models are not installed",
                                            expected="the face-recognition-models package", fix=f"Run {INSTALL}."))
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise JudgeUnavailableError(explain("the face-recognition-models package lacks its model files",
                                            got=f"missing {missing} in {folder}", fix=f"Reinstall: {INSTALL}."))
    return folder


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as e:
        raise JudgeUnavailableError(explain("the judge needs dlib", got=str(e), fix=f"Run {INSTALL}.")) from e
    return dlib


@lru_cache(maxsize=1)
def load_models() -> FaceModels:
    """The three models, loaded once per process (about 0.3 s); JudgeUnavailableError without the extra."""
    folder, dlib = model_folder(), _dlib()
    return FaceModels(detector=dlib.get_frontal_face_detector(),
                      landmarks=dlib.shape_predictor(str(folder / FILES["landmarks"])),
                      identity=dlib.face_recognition_model_v1(str(folder / FILES["identity"])))
