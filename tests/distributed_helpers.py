"""A network for the distributed tests that ends its process hard on one rank (imported by torchrun's workers)."""

from __future__ import annotations

import os

from monai.networks.nets import UNet


class ExitOnRank(UNet):
    """The tiny U-Net of the runner tests, but the process of rank ``rank`` exits with status
    ``code`` (no cleanup, like a crash) at its first forward pass."""

    def __init__(self, rank: int = 1, code: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.rank = rank
        self.code = code

    def forward(self, x):
        if os.environ.get("RANK") == str(self.rank):
            os._exit(self.code)
        return super().forward(x)
