"""volcam: class activation maps for 2D and 3D medical image segmentation networks.

    import volcam
    cam = volcam.GradCAM(model, target_layers="model.2.0.conv")
    heat = cam(x, targets=volcam.SegmentationTarget(category=1))   # [B, 1, *S] in [0, 1]
    res = cam.explain_classes(x, [1, 2, 3])                        # res.heat [B, 3, *S], one forward pass
    maps = volcam.explain_methods(model, x, "model.2.0.conv", targets=1)   # every gradient method, one pass

The engine and methods are imported here; the edges (``volcam.io``, ``volcam.figures``,
``volcam.monai``, ``volcam.metrics``) are imported on demand and pull in nibabel,
matplotlib or ignite only then.
"""

from volcam.errors import (
    ArgumentError,
    ConfigError,
    EmptyMapWarning,
    EmptyTargetWarning,
    ImageReadError,
    LayerCallError,
    LayerCallWarning,
    LayerNotFoundError,
    LayerNotReachedError,
    MethodNotFoundError,
    ModelStateError,
    SelectorError,
    ShapeError,
    TargetError,
    TrainingModeWarning,
    ValueRangeError,
    VolcamError,
    VolcamWarning,
)
from volcam.methods import (
    ATTENTION_METHODS,
    METHODS,
    AblationCAM,
    AttentionRollout,
    BaseCAM,
    CAMResult,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    explain_methods,
    get_method,
    register_method,
)
from volcam.result import MapNote
from volcam.targets import ClassifierTarget, SegmentationTarget

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it

__all__ = [
    "BaseCAM",
    "CAMResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "XGradCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "ScoreCAM",
    "AblationCAM",
    "FullGrad",
    "AttentionRollout",
    "METHODS",
    "ATTENTION_METHODS",
    "get_method",
    "register_method",
    "explain_methods",
    "SegmentationTarget",
    "ClassifierTarget",
    "sliding_window_cam",
    "compare",
    "CompareOptions",
    "VolcamError",
    "ShapeError",
    "LayerNotFoundError",
    "LayerNotReachedError",
    "SelectorError",
    "TargetError",
    "MethodNotFoundError",
    "ConfigError",
    "ImageReadError",
    "ArgumentError",
    "ValueRangeError",
    "ModelStateError",
    "LayerCallError",
    "VolcamWarning",
    "EmptyTargetWarning",
    "EmptyMapWarning",
    "TrainingModeWarning",
    "LayerCallWarning",
    "MapNote",
]


def __getattr__(name: str) -> object:
    # sliding.py builds on MONAI's inferer; imported on first use to keep `import volcam` light.
    if name == "sliding_window_cam":
        from volcam.sliding import sliding_window_cam

        return sliding_window_cam
    # volcam compare's library function builds on the run layer (MONAI transforms, metrics)
    if name in ("compare", "CompareOptions"):
        from volcam.run import compare as compare_module

        return getattr(compare_module, name)
    raise AttributeError(f"module 'volcam' has no attribute {name!r}")
