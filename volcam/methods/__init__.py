"""CAM methods (one small class per file) and the registry that finds them by name."""

from __future__ import annotations

import difflib

from volcam.errors import MethodNotFoundError
from volcam.methods.base import BaseCAM, CAMResult, LayerContext
from volcam.methods.eigencam import EigenCAM, EigenGradCAM
from volcam.methods.gradcam import GradCAM
from volcam.methods.gradcam_plusplus import GradCAMPlusPlus
from volcam.methods.hirescam import HiResCAM
from volcam.methods.layercam import LayerCAM
from volcam.methods.scorecam import ScoreCAM
from volcam.methods.xgradcam import XGradCAM

__all__ = [
    "BaseCAM",
    "CAMResult",
    "LayerContext",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "XGradCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "METHODS",
    "get_method",
    "register_method",
]

#: name -> method class. Names are lower case; ``get_method`` also accepts the aliases below.
METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
}

_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}


def register_method(name: str, cls: type[BaseCAM]) -> None:
    """Add a method to the registry under ``name`` (lower case)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseCAM)):
        raise TypeError(f"a registered method must be a BaseCAM subclass, not {cls!r}")
    METHODS[name.lower()] = cls


def get_method(name: str) -> type[BaseCAM]:
    """The method class registered under ``name`` (case, '-' and '_' ignored).

    Raises:
        MethodNotFoundError: with the closest registered names.
    """
    key = str(name).lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, list(METHODS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise MethodNotFoundError(f"`method` must be one of {sorted(METHODS)}, not {name!r}{hint}")
