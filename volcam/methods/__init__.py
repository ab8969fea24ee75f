"""CAM methods (one small class per file), the registry that finds them by name
(:mod:`volcam.methods.registry`, filled from the classes: a new method is one file here
and nothing else), and :func:`explain_methods` (several methods from one pass)."""

from __future__ import annotations

from volcam.methods.ablationcam import AblationCAM
from volcam.methods.base import BaseCAM, CAMResult, LayerContext
from volcam.methods.eigencam import EigenCAM, EigenGradCAM
from volcam.methods.fullgrad import FullGrad
from volcam.methods.gradcam import GradCAM
from volcam.methods.gradcam_plusplus import GradCAMPlusPlus
from volcam.methods.hirescam import HiResCAM
from volcam.methods.layercam import LayerCAM
from volcam.methods.registry import ATTENTION_METHODS, METHODS, get_method, register_method
from volcam.methods.rollout import AttentionRollout
from volcam.methods.scorecam import ScoreCAM
from volcam.methods.shared import SHARED_METHODS, explain_methods
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
    "AblationCAM",
    "FullGrad",
    "AttentionRollout",
    "METHODS",
    "ATTENTION_METHODS",
    "get_method",
    "register_method",
    "explain_methods",
    "SHARED_METHODS",
]
