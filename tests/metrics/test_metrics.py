"""Localisation, connected components and similarity metrics: hand-worked values."""

from pathlib import Path

import numpy as np
import pytest
import torch

from volcam.errors import ArgumentError, ShapeError
from volcam.metrics import (
    binarize,
    component_localisation,
    connected_components,
    dice,
    energy_pointing_game,
    iou,
    localisation,
    pointing_game,
    rank,
    spearman,
    ssim,
    top_k_mask,
)

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t(rows, dtype=torch.float32):
    """A literal 2D array -> [1, 1, Y, X]."""
    return torch.tensor(rows, dtype=dtype)[None, None]


@pytest.fixture
def blob():
    mask = torch.zeros(2, 1, 8, 10)
    mask[0, 0, 2:5, 3:7] = 1
    mask[1, 0, 4:8, 0:3] = 1
    return mask


# --- energy pointing game and pointing game ------------------------------------------------


def test_energy_pointing_game_hand_worked():
    heat = t([[1.0, 2.0], [3.0, 4.0]])
    mask = t([[1, 0], [0, 1]], torch.bool)
    assert energy_pointing_game(heat, mask).tolist() == [pytest.approx(0.5)]  # (1 + 4) / 10
    mask2 = t([[0, 0], [1, 0]])
    assert energy_pointing_game(heat, mask2).tolist() == [pytest.approx(0.3)]


def test_map_equal_to_mask_scores_one_inverted_scores_zero(blob):
    assert energy_pointing_game(blob, blob).tolist() == [1.0, 1.0]
    assert pointing_game(blob, blob).tolist() == [1.0, 1.0]
    assert energy_pointing_game(1 - blob, blob).tolist() == [0.0, 0.0]
    assert pointing_game(1 - blob, blob).tolist() == [0.0, 0.0]
    # a soft inverted map: far from the blob is hottest, a little heat leaks in
    soft = 1 - blob + 0.01
    assert energy_pointing_game(soft, blob).max() < 0.01


def test_constant_map_scores_the_mask_volume_fraction(blob):
    flat = torch.ones_like(blob)
    assert energy_pointing_game(flat, blob).tolist() == pytest.approx([12 / 80, 12 / 80])
    assert pointing_game(flat, blob).tolist() == pytest.approx([12 / 80, 12 / 80])


def test_empty_map_gives_nan():
    assert torch.isnan(energy_pointing_game(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3))).all()


def test_pointing_game_ties_and_tolerance():
    heat = t([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    mask = t([[0, 1, 0, 0], [0, 0, 0, 0]])
    assert pointing_game(heat, mask).tolist() == [0.5]  # one of the two tied maxima inside
    heat2 = t([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert pointing_game(heat2, mask).tolist() == [0.0]
    assert pointing_game(heat2, mask, tolerance=1).tolist() == [0.0]  # 2 voxels away
    assert pointing_game(heat2, mask, tolerance=2).tolist() == [1.0]


def test_negative_heat_counts_as_zero_energy():
    heat = t([[-5.0, 1.0], [1.0, 0.0]])
    mask = t([[1, 1], [0, 0]])
    assert energy_pointing_game(heat, mask).tolist() == [0.5]


# --- IoU, Dice, thresholds ----------------------------------------------------------------


def test_iou_dice_literal():
    a = t([[1, 1, 0], [0, 1, 0]], torch.bool)
    b = t([[1, 0, 0], [1, 1, 0]], torch.bool)
    assert iou(a, b).tolist() == [pytest.approx(2 / 4)]
    assert dice(a, b).tolist() == [pytest.approx(4 / 6)]
    assert iou(a, a).tolist() == [1.0]
    assert dice(a, ~a).tolist() == [0.0]
    empty = torch.zeros_like(a)
    assert torch.isnan(iou(empty, empty)).all() and torch.isnan(dice(empty, empty)).all()


def test_top_k_is_exact_and_breaks_ties_in_voxel_order():
    heat = t([[0.9, 0.5, 0.5], [0.5, 0.1, 0.0]])
    got = top_k_mask(heat, 2)
    assert got[0, 0].tolist() == [[True, True, False], [False, False, False]]
    counts = top_k_mask(torch.rand(3, 1, 4, 5), torch.tensor([0, 7, 20])).sum(dim=(1, 2, 3))
    assert counts.tolist() == [0, 7, 20]


def test_binarize_level_and_mask_volume():
    heat = t([[0.9, 0.6, 0.2], [0.4, 0.8, 0.1]])
    mask = t([[1, 0, 0], [0, 1, 0]])
    assert binarize(heat, 0.5)[0, 0].tolist() == [[True, True, False], [False, True, False]]
    assert binarize(heat, mask=mask)[0, 0].tolist() == [[True, False, False], [False, True, False]]
    with pytest.raises(ArgumentError, match="`mask` must be given"):
        binarize(heat)


def test_localisation_hand_worked():
    heat = t([[0.9, 0.6, 0.2], [0.4, 0.8, 0.1]])
    mask = t([[1, 1, 0], [0, 0, 0]])
    out = localisation(heat, mask)
    assert out["energy"].tolist() == [pytest.approx(1.5 / 3.0)]
    assert out["pointing"].tolist() == [1.0]
    # the 2 hottest voxels are 0.9 and 0.8: one of the two mask voxels
    assert out["iou"].tolist() == [pytest.approx(1 / 3)]
    assert out["dice"].tolist() == [pytest.approx(0.5)]
    at = localisation(heat, mask, level=0.5)  # 0.9, 0.6, 0.8
    assert at["iou"].tolist() == [pytest.approx(2 / 3)]
    assert at["dice"].tolist() == [pytest.approx(4 / 5)]


def test_batch_equals_one_at_a_time_and_2d_equals_3d_depth_one(blob):
    heat = torch.rand(blob.shape, generator=torch.Generator().manual_seed(1))
    full = localisation(heat, blob)
    for i in range(2):
        one = localisation(heat[i : i + 1], blob[i : i + 1])
        for key in full:
            assert one[key].item() == pytest.approx(full[key][i].item())
    deep = localisation(heat[:, :, None], blob[:, :, None])
    for key in full:
        assert torch.allclose(deep[key], full[key])


def test_shape_errors_name_the_argument():
    with pytest.raises(ShapeError, match=r"`mask` must have the shape of `heat` \(1, 1, 4, 4\), not \(1, 1, 4, 5\)"):
        localisation(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 5))
    with pytest.raises(ShapeError, match=r"`heat` must have shape \[B, 1, \*S\].*not \(1, 2, 4, 4\)"):
        energy_pointing_game(torch.rand(1, 2, 4, 4), torch.ones(1, 2, 4, 4))
    with pytest.raises(TypeError, match="`heat` must be a torch.Tensor"):
        pointing_game(np.zeros((1, 1, 3, 3)), torch.ones(1, 1, 3, 3))
    with pytest.raises(ArgumentError, match="`tolerance` must be a non-negative int"):
        pointing_game(torch.rand(1, 1, 3, 3), torch.ones(1, 1, 3, 3), tolerance=-1)


# --- connected components -----------------------------------------------------------------


DIAGONAL = [
    [1, 1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 1],
    [0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0],
    [1, 0, 0, 1, 1, 0],
]


@pytest.mark.parametrize("method", ["torch", "scipy"])
def test_connected_components_literal(method):
    mask = t(DIAGONAL, torch.bool)
    full, n_full = connected_components(mask, method=method)
    faces, n_faces = connected_components(mask, connectivity=1, method=method)
    assert n_full.tolist() == [4] and n_faces.tolist() == [5]
    assert full[0, 0].tolist() == [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 2],
        [0, 0, 0, 0, 0, 2],
        [0, 0, 0, 0, 0, 0],
        [3, 0, 0, 4, 4, 0],
    ]
    assert faces[0, 0, 2].tolist() == [0, 0, 2, 0, 0, 3]


def test_connected_components_torch_matches_scipy_2d_3d():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 1, 17, 19), (2, 1, 7, 9, 8)]:
        nd = len(shape) - 2
        for p in (0.35, 0.55):
            mask = torch.rand(shape, generator=g) < p
            for c in range(1, nd + 1):
                a, na = connected_components(mask, connectivity=c, method="torch")
                b, nb = connected_components(mask, connectivity=c, method="scipy")
                assert torch.equal(a, b) and torch.equal(na, nb)


def test_connected_components_long_spiral_converges():
    # a one-voxel-wide serpentine path of 5 rows x 20: label propagation alone would need ~100 rounds
    mask = torch.zeros(1, 1, 9, 20, dtype=torch.bool)
    mask[0, 0, 0::2, :] = True
    for r in range(1, 9, 2):
        mask[0, 0, r, 19 if r % 4 == 1 else 0] = True
    labels, n = connected_components(mask, connectivity=1, method="torch")
    assert n.tolist() == [1] and labels[mask].unique().tolist() == [1]


def test_connected_components_bad_arguments():
    with pytest.raises(ArgumentError, match="`connectivity` must be an int from 1 .* to 2 .*, not 3"):
        connected_components(torch.ones(1, 1, 3, 3), connectivity=3)
    with pytest.raises(ArgumentError, match="`method` must be 'auto', 'torch' or 'scipy', not 'cc3d'"):
        connected_components(torch.ones(1, 1, 3, 3), method="cc3d")


@pytest.mark.parametrize("method", ["torch", "scipy"])
def test_component_localisation_hand_worked(method):
    # two lesions: A (4 voxels, top left) and B (2 voxels, bottom right)
    mask = t(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1],
        ]
    )
    # the map's 6 hottest voxels (level None -> mask volume 6): 3 on A plus 3 spilling to the
    # right of A (one connected blob), nothing on B
    heat = t(
        [
            [0.9, 0.8, 0.7, 0.6, 0.0],
            [0.5, 0.1, 0.55, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.2, 0.0],
        ]
    )
    rows = component_localisation(heat, mask, method=method)
    assert rows["batch"].tolist() == [0, 0]
    assert rows["component"].tolist() == [1, 2]
    assert rows["volume"].tolist() == [4, 2]
    total = float(heat.sum())
    assert rows["energy"].tolist() == pytest.approx([2.3 / total, 0.2 / total])
    assert rows["peak"].tolist() == pytest.approx([0.9, 0.2])
    assert rows["hit"].tolist() == [1.0, 0.0]
    # lesion A: R ∩ A = 3 voxels, R_A = the 6-voxel blob; union = 4 + 6 - 3 = 7
    assert rows["iou"].tolist() == pytest.approx([3 / 7, 0.0])
    assert rows["dice"].tolist() == pytest.approx([6 / 10, 0.0])


def test_component_localisation_batch_numbering():
    mask = torch.zeros(3, 1, 6, 6)
    mask[0, 0, 0, 0] = mask[0, 0, 4, 4] = 1  # two lesions
    mask[2, 0, 2:4, 2:4] = 1  # sample 1 has none
    heat = mask.clone()
    rows = component_localisation(heat, mask)
    assert rows["batch"].tolist() == [0, 0, 2]
    assert rows["component"].tolist() == [1, 2, 1]
    assert rows["volume"].tolist() == [1, 1, 4]
    assert rows["energy"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert rows["dice"].tolist() == [1.0, 1.0, 1.0]


# --- similarity ---------------------------------------------------------------------------


def test_rank_average_ties():
    got = rank(torch.tensor([[3.0, 1.0, 1.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]))
    assert got.tolist() == [[5.0, 1.5, 1.5, 3.0, 5.0, 5.0], [3.0, 3.0, 3.0, 3.0, 3.0, 6.0]]


def test_spearman_hand_worked():
    a = t([[1.0, 2.0], [3.0, 4.0]])
    b = t([[1.0, 3.0], [2.0, 4.0]])
    assert spearman(a, b).tolist() == [pytest.approx(0.8)]  # 1 - 6 * 2 / (4 * 15)
    # ties: ranks [1.5, 1.5, 3, 4] and [1, 2.5, 2.5, 4] -> 3.75 / 4.5
    c = t([[0.0, 0.0], [1.0, 2.0]])
    d = t([[0.0, 1.0], [1.0, 2.0]])
    assert spearman(c, d).tolist() == [pytest.approx(3.75 / 4.5)]
    assert spearman(a, -a).tolist() == [pytest.approx(-1.0)]


def test_spearman_matches_scipy_and_constant_maps():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 1, 6, 5, 4, generator=g).clamp_min(0.4)  # many ties at 0.4
    b = torch.rand(3, 1, 6, 5, 4, generator=g)
    want = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(3)]
    assert spearman(a, b).tolist() == pytest.approx(want, abs=1e-6)
    flat = torch.zeros(1, 1, 4, 4)
    assert spearman(flat, torch.rand(1, 1, 4, 4)).tolist() == [0.0]
    assert spearman(flat, flat).tolist() == [1.0]


def test_ssim_matches_scikit_image_and_2d_equals_depth_one():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 1, 24, 21, generator=g)
    b = (a + 0.3 * torch.rand(2, 1, 24, 21, generator=g)).clamp(0, 1)
    want = [
        structural_similarity(
            a[i, 0].numpy(),
            b[i, 0].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for i in range(2)
    ]
    got = ssim(a, b)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert torch.allclose(ssim(a[:, :, None], b[:, :, None]), got, atol=1e-6)
    small = torch.rand(1, 1, 5, 4, 6, generator=g)  # smaller than the 11-voxel window
    assert ssim(small, small).tolist() == pytest.approx([1.0], abs=1e-6)


def test_results_stay_on_the_input_device(device):
    g = torch.Generator().manual_seed(6)
    heat = torch.rand(2, 1, 6, 7, 5, generator=g).to(device)
    mask = (torch.rand(2, 1, 6, 7, 5, generator=g) > 0.7).to(device)
    for value in localisation(heat, mask).values():
        assert value.device == heat.device
    for value in component_localisation(heat, mask, method="torch").values():
        assert value.device == heat.device
    assert spearman(heat, heat).device == heat.device and ssim(heat, heat).device == heat.device


@pytest.mark.cuda
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(7)
    heat = torch.rand(3, 1, 20, 18, 16, generator=g)
    mask = torch.rand(3, 1, 20, 18, 16, generator=g) > 0.6
    labels, counts = connected_components(mask.cuda(), method="torch")
    want, want_counts = connected_components(mask, method="scipy")
    assert torch.equal(labels.cpu(), want) and torch.equal(counts.cpu(), want_counts)
    for key, value in localisation(heat.cuda(), mask.cuda()).items():
        assert torch.allclose(value.cpu(), localisation(heat, mask)[key], atol=1e-5), key
    assert torch.allclose(spearman(heat.cuda(), heat.flip(2).cuda()).cpu(), spearman(heat, heat.flip(2)), atol=1e-5)
    assert torch.allclose(ssim(heat.cuda(), heat.flip(2).cuda()).cpu(), ssim(heat, heat.flip(2)), atol=1e-4)
