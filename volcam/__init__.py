"""volcam: class activation maps for 2D and 3D medical image segmentation networks."""

__version__ = "0.1.0"
