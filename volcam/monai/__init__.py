"""MONAI integration: an Ignite handler that writes CAMs during training or validation, and
a dictionary transform that adds a CAM to a data dictionary.

    from volcam.monai import CAMHandler, CAMd

This module imports ignite (through ``monai.utils.optional_import``: a missing ignite is
reported when a handler is attached), nibabel and matplotlib (on export); ``import volcam``
does not import it.
"""

from volcam.monai.handler import EXPORTS, CAMHandler, default_batch_transform, default_output_transform, overlay
from volcam.monai.transforms import CAMd

__all__ = ["CAMHandler", "CAMd", "EXPORTS", "default_batch_transform", "default_output_transform", "overlay"]
