"""Sliding-window CAMs: one window equals the plain CAM; on a larger volume the peak lies on the target."""

import pytest
import torch
from torch import nn

import volcam
from volcam.errors import TargetError
from volcam.sliding import sliding_window_cam


def small_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_one_window_equals_plain_cam(method):
    model = small_unet()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 16, 12)
    cam = volcam.get_method(method)(model, "model.1.submodule")
    targets = [volcam.SegmentationTarget(1), volcam.SegmentationTarget(2, mask="all")]
    plain = cam.explain(x, targets=targets)
    heat, out = sliding_window_cam(cam, x, roi_size=(16, 16, 12), sw_batch_size=2, targets=targets)
    assert heat.shape == (2, 1, 16, 16, 12) and out.shape == (2, 3, 16, 16, 12)
    torch.testing.assert_close(out, plain.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(heat, plain.heat, atol=1e-5, rtol=1e-4)
    assert float(heat.amax()) == pytest.approx(1.0) and cam.normalize  # normalised once; cam left as it was


def test_one_window_with_user_mask_and_default_target():
    model = small_unet()
    torch.manual_seed(2)
    x = torch.randn(1, 1, 12, 12, 12)
    cam = volcam.GradCAM(model, "model.1.submodule")
    mask = torch.zeros(12, 12, 12)
    mask[2:7, 3:9, 4:10] = 1
    plain = cam(x, targets=volcam.SegmentationTarget(2, mask=mask))
    heat, _ = sliding_window_cam(cam, x, roi_size=-1, targets=volcam.SegmentationTarget(2, mask=mask))
    torch.testing.assert_close(heat, plain, atol=1e-5, rtol=1e-4)
    # None: the class with the largest predicted volume, as cam(x) chooses it
    torch.testing.assert_close(sliding_window_cam(cam, x, 12).heat, cam(x), atol=1e-5, rtol=1e-4)
    raw = volcam.GradCAM(model, "model.1.submodule", normalize=False)
    torch.testing.assert_close(sliding_window_cam(raw, x, 12, targets=1).heat, raw(x, targets=1), atol=1e-6, rtol=1e-4)


class BlobNet(nn.Module):
    """feat = [box3(x), -box3(x)] -> ReLU -> logits [background = 0.5 - f0, blob = f0 - 0.5].

    A voxel is predicted as class 1 where the 3x3x3 mean intensity exceeds 0.5.
    """

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv3d(1, 2, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Conv3d(2, 2, 1)
        with torch.no_grad():
            self.feat.weight.copy_(torch.stack([torch.ones(1, 3, 3, 3), -torch.ones(1, 3, 3, 3)]) / 27)
            self.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.head(self.act(self.feat(x)))


def _ball(shape, center, radius):
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_peak_on_target_in_large_volume(mode):
    shape = (40, 36, 32)
    torch.manual_seed(3)
    x = 0.1 * torch.randn(2, 1, *shape)
    balls = [_ball(shape, (30, 8, 22), 4), _ball(shape, (6, 25, 9), 4)]  # one blob per sample
    for b, ball in enumerate(balls):
        x[b, 0][ball] = 1.0
    cam = volcam.GradCAM(BlobNet().eval(), "act")
    heat, out = sliding_window_cam(cam, x, roi_size=16, sw_batch_size=3, overlap=0.25, mode=mode, targets=1)
    for b, ball in enumerate(balls):
        peak = torch.nonzero(heat[b, 0] == heat[b, 0].max())[0]
        assert ball[tuple(peak)], (b, peak.tolist())
        # the map is far hotter on the blob than away from it
        near = torch.nn.functional.max_pool3d(ball[None, None].float(), 5, 1, 2)[0, 0] > 0
        assert float(heat[b, 0][ball].mean()) > 20 * float(heat[b, 0][~near].mean())
        # the stitched prediction finds the blob (its rim is blurred by the 3x3x3 mean)
        pred = out[b].argmax(0) == 1
        assert float((pred & ball).sum() / ball.sum()) > 0.5 and not bool((pred & ~near).any())


def test_user_mask_on_one_of_two_blobs():
    shape = (36, 36, 20)
    x = torch.zeros(1, 1, *shape)
    left, right = _ball(shape, (9, 9, 10), 4), _ball(shape, (27, 27, 10), 4)
    x[0, 0][left | right] = 1.0
    target = volcam.SegmentationTarget(1, mask=right)
    # an element-wise method stays per window: windows holding only the left blob have an
    # empty mask, so no evidence there
    hires = volcam.HiResCAM(BlobNet().eval(), "act")
    res = sliding_window_cam(hires, x, roi_size=(20, 20, 20), overlap=0.5, targets=target)
    assert not res.global_weights
    assert float(res.heat[0, 0][right].mean()) > 0.5 and float(res.heat[0, 0][left].max()) < 0.05
    # Grad-CAM's channel weights come from the whole volume: like the whole-volume Grad-CAM,
    # it lights up every voxel with the right blob's features, the left blob included (up to
    # the zero padding at the windows' borders, which the 3x3x3 convolution sees)
    grad = volcam.GradCAM(BlobNet().eval(), "act")
    res = sliding_window_cam(grad, x, roi_size=(20, 20, 20), overlap=0.5, targets=target)
    assert res.global_weights
    torch.testing.assert_close(res.heat, grad(x, targets=target), atol=0.01, rtol=0)
    assert float(res.heat[0, 0][left].mean()) > 0.5


def test_bad_targets():
    cam = volcam.GradCAM(BlobNet(), "act")
    x = torch.zeros(2, 1, 8, 8, 8)
    with pytest.raises(TargetError, match="one entry per sample"):
        sliding_window_cam(cam, x, 8, targets=[1])
    with pytest.raises(TargetError, match="must be None, an int class or a SegmentationTarget"):
        sliding_window_cam(cam, x, 8, targets=lambda out: out.sum())
    with pytest.raises(TargetError, match=r"spatial shape \[8, 8, 8\]"):
        sliding_window_cam(cam, x, 8, targets=volcam.SegmentationTarget(1, mask=torch.ones(4, 4, 4)))


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_empty_target_everywhere_warns_and_gives_zeros(method):
    cam = volcam.get_method(method)(BlobNet().eval(), "act")
    x = torch.zeros(1, 1, 20, 20, 20)  # nothing is predicted as class 1
    with pytest.warns(volcam.EmptyTargetWarning, match=r"target mask of sample\(s\) \[0\] is empty"):
        res = sliding_window_cam(cam, x, 12, targets=1)
    assert torch.equal(res.heat, torch.zeros_like(res.heat)) and not bool((res.output.argmax(1) == 1).any())
    assert [(n.sample, n.reason) for n in res.notes] == [(0, "empty_target")]


class BlockNet(nn.Module):
    """Features on 2x2x2 blocks (a stride-2 convolution with kernel 2) and back: a window
    whose position is a multiple of 2 sees exactly the features of the whole volume."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.down = nn.Conv3d(1, 6, 2, stride=2)
        self.feat = nn.Sequential(nn.Conv3d(6, 8, 1), nn.PReLU())
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.head = nn.Conv3d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(self.feat(torch.relu(self.down(x))))))


GLOBAL = ["gradcam", "gradcam++", "xgradcam", "eigencam", "eigengradcam"]


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_whole_volume_weights_equal_the_whole_volume_cam(overlap, mode):
    net = BlockNet().eval()
    torch.manual_seed(5)
    x = torch.randn(2, 1, 16, 12, 20)
    targets = [volcam.SegmentationTarget(1), volcam.SegmentationTarget(2, mask="all")]
    for name in GLOBAL:
        cam = volcam.get_method(name)(net, "feat")
        whole = cam.explain(x, targets=targets)
        res = sliding_window_cam(cam, x, roi_size=8, overlap=overlap, mode=mode, sw_batch_size=4, targets=targets)
        assert res.global_weights
        assert whole.heat.std() > 0.05, name
        torch.testing.assert_close(res.heat, whole.heat, atol=1e-4, rtol=0, msg=f"{name} overlap {overlap} {mode}")
        torch.testing.assert_close(res.output, whole.output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.layer_maps[0], whole.layer_maps[0], atol=1e-4, rtol=1e-4)


def test_per_window_weights_tile_the_map_and_whole_volume_weights_do_not():
    # the same network and volume, Grad-CAM with per-window weights (global_weights=False) differs
    # from the whole-volume map by window-aligned steps; the whole-volume weights do not
    net = BlockNet().eval()
    torch.manual_seed(6)
    x = torch.randn(1, 1, 16, 16, 16)
    cam = volcam.GradCAM(net, "feat")
    target = volcam.SegmentationTarget(1, mask="all")
    whole = cam(x, targets=target)
    assert whole.std() > 0.05
    tiled = sliding_window_cam(cam, x, roi_size=8, overlap=0.25, targets=target, global_weights=False).heat
    assert (tiled - whole).abs().max() > 0.05
    glob = sliding_window_cam(cam, x, roi_size=8, overlap=0.25, targets=target).heat
    assert (glob - whole).abs().max() < 1e-4


def test_global_weights_are_refused_where_a_window_cannot_give_them():
    cam = volcam.ScoreCAM(BlockNet().eval(), "feat")
    with pytest.raises(volcam.ArgumentError, match="`global_weights` must be False for ScoreCAM"):
        sliding_window_cam(cam, torch.randn(1, 1, 16, 16, 16), 8, targets=1, global_weights=True)
