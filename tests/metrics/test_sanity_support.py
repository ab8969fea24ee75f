"""The randomisation verdict rests on the maps' supports: padding a volume with zeros does not
change it (over all voxels, the shared zero background inflates the correlation)."""

import torch
from torch import nn

import volcam
from volcam.metrics import model_randomisation
from volcam.metrics.similarity import body_region, spearman, spearman_in


def test_padding_inflates_spearman_over_all_voxels_but_not_over_the_supports():
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    body = ((grid - 7.5) ** 2).sum(0) < 70  # most of the volume
    smooth = torch.exp(-((grid - 6.0) ** 2).sum(0) / 20) * body  # a blob inside the body
    speckle = torch.rand(16, 16, 16, generator=g) * body  # noise over the body
    a, b = smooth[None, None], speckle[None, None]
    pad = (8, 8, 8, 8, 8, 8)
    pa, pb = nn.functional.pad(a, pad), nn.functional.pad(b, pad)
    assert float(spearman(pa, pb)) > float(spearman(a, b)) + 0.1  # the padding raises it
    assert float(spearman_in(pa, pb)) == float(spearman_in(a, b))  # not over the supports
    image = body[None, None].float() + 0.1 * a
    region, padded_region = body_region(image), body_region(nn.functional.pad(image, pad))
    assert int(region.sum()) == int(padded_region.sum()) == int(body.sum())
    assert float(spearman_in(pa, pb, padded_region)) == float(spearman_in(a, b, region))  # nor inside the body
    assert float(spearman_in(a, b, region)) < 0.5


class Body(nn.Module):
    """Two 3x3x3 convolutions and a 1x1x1 head: the map of a random copy is speckle over the body."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1))
        self.act = nn.ReLU()
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x):
        return self.head(self.act(self.features(x)))


def test_the_randomisation_verdict_is_the_same_on_a_padded_volume():
    """A randomised HiResCAM map is speckle over the body: over all voxels (the zero background
    one big tie) it still correlates above 0.5 with the original, padded or not; inside the body
    it does not, the same on both volumes."""
    torch.manual_seed(0)
    net = Body().eval()
    with torch.no_grad():  # a "trained" network: class 1 follows the image's brightness
        net.head.weight.zero_()
        net.head.weight[1] = 1.0
    grid = torch.stack(torch.meshgrid(*[torch.arange(20.0)] * 3, indexing="ij"))
    body = ((grid - 9.5) ** 2).sum(0) < 64
    x = (body * (1 + torch.exp(-((grid - 9.5) ** 2).sum(0) / 30)))[None, None]  # a body in air
    cam = volcam.HiResCAM(net, "features.2")
    results = []
    for pad in (0, 10):
        image = nn.functional.pad(x, (pad,) * 6)
        target = volcam.SegmentationTarget(1, mask=nn.functional.pad(body.float(), (pad,) * 6))
        results.append(model_randomisation(cam, image, target, mode="cascading", seed=3))
    plain, padded = results
    assert plain.unchanged.tolist() == padded.unchanged.tolist() == [False]
    torch.testing.assert_close(plain.spearman_support, padded.spearman_support, atol=1e-4, rtol=0)
    assert bool((plain.spearman[-1] >= 0.5).all() and (padded.spearman[-1] >= 0.5).all())  # all voxels: "unchanged"
