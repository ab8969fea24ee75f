"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def model_state(model: nn.Module) -> dict:
    """Everything a CAM call must leave untouched."""
    return {
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [(n, p.grad) for n, p in model.named_parameters()],
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "inplace": [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")],
        "hooks": hook_count(model),
    }


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def assert_same_state(before: dict, after: dict) -> None:
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for _, g in after["grads"])
    assert after["inplace"] == before["inplace"]
    assert after["hooks"] == before["hooks"] == 0
    for n, p in before["params"].items():
        assert torch.equal(after["params"][n], p), n
    for n, b in before["buffers"].items():
        assert torch.equal(after["buffers"][n], b), n


class TinySeg(nn.Module):
    """x -> feat (1x1 conv, 1 -> 2 channels, weights [1, 2]) -> ReLU -> head (1x1 conv 2 -> 2).

    feat = [x, 2x]; logits[0] = relu(x) + relu(2x) = 3 relu(x); logits[1] = -relu(2x).
    """

    def __init__(self, dims: int = 2, inplace: bool = True):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.feat = conv(1, 2, 1, bias=False)
        self.act = nn.ReLU(inplace=inplace)
        self.head = conv(2, 2, 1, bias=False)
        shape = (1,) * dims
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, *shape))
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, -1.0]]).view(2, 2, *shape))

    def forward(self, x):
        return self.head(self.act(self.feat(x)))


class NegativeFeatures(nn.Module):
    """x -> feat (1x1 conv, 1 -> 2 channels, weights [-1, -2], no activation) -> head (1x1 conv).

    feat = [-x, -2x]; logits[0] = -3x, logits[1] = 3x: on a positive image class 1 everywhere,
    with gradients [-1, -1] at ``feat``. LayerCAM (positive gradients only) is all zero there;
    HiResCAM (sum of gradient x activation = 3x) is not.
    """

    def __init__(self, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.feat = conv(1, 2, 1, bias=False)
        self.head = conv(2, 2, 1, bias=False)
        shape = (1,) * dims
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([-1.0, -2.0]).view(2, 1, *shape))
            self.head.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]).view(2, 2, *shape))

    def forward(self, x):
        return self.head(self.feat(x))


class Pyramid(nn.Module):
    """A small encoder-decoder whose 3D version with kernels (1, k, k) equals the 2D one."""

    def __init__(self, dims: int = 2, classes: int = 3):
        super().__init__()
        self.dims = dims
        k3 = 3 if dims == 2 else (1, 3, 3)
        s2 = 2 if dims == 2 else (1, 2, 2)
        p1 = 1 if dims == 2 else (0, 1, 1)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.enc = nn.Sequential(conv(1, 6, k3, padding=p1), nn.ReLU(inplace=True))
        self.down = nn.Sequential(conv(6, 8, k3, stride=s2, padding=p1), nn.ReLU(inplace=True))
        self.up = nn.Upsample(scale_factor=s2, mode="nearest")
        self.dec = nn.Sequential(conv(8 + 6, 6, k3, padding=p1), nn.ReLU())
        self.head = conv(6, classes, 1)

    def forward(self, x):
        e = self.enc(x)
        d = self.down(e)
        return self.head(self.dec(torch.cat([self.up(d), e], 1)))

    @classmethod
    def pair(cls, classes: int = 3):
        m2, m3 = cls(2, classes), cls(3, classes)
        with torch.no_grad():
            for p2, p3 in zip(m2.parameters(), m3.parameters()):
                p3.copy_(p2.unsqueeze(2) if p2.ndim > 1 else p2)
        return m2.eval(), m3.eval()
