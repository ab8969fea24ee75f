"""Cases in nnU-Net's naming, and classes named as dataset.json names them."""

from __future__ import annotations

import shutil

import pytest

import volcam.nnunet
from volcam.errors import ArgumentError, ImageReadError
from volcam.nnunet.labels import resolve_classes
from volcam.nnunet.preprocess import case_files, list_cases


def _label_manager(labels, regions_class_order=None):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    return LabelManager(labels, regions_class_order)


def test_classes_by_value_and_name():
    labels = {"background": 0, "liver": 1, "tumor": 2, "ignore": 3}
    lm = _label_manager(labels)
    ds = {"labels": labels}
    assert [(c.value, c.name, c.channel) for c in resolve_classes(lm, ds, None)] == [(1, "liver", 1), (2, "tumor", 2)]
    assert [c.value for c in resolve_classes(lm, ds, ["tumor", 1])] == [2, 1]
    assert [c.value for c in resolve_classes(lm, ds, "2")] == [2]
    with pytest.raises(ArgumentError, match=r"not 'tumour'; did you mean 'tumor'\?"):
        resolve_classes(lm, ds, ["tumour"])
    with pytest.raises(ArgumentError, match=r"labels \(0 \(background\), 1 \(liver\), 2 \(tumor\)\), not 5"):
        resolve_classes(lm, ds, [5])
    with pytest.raises(ArgumentError, match="ignore label 3"):
        resolve_classes(lm, ds, [3])
    with pytest.raises(ArgumentError, match="repeat"):
        resolve_classes(lm, ds, [1, "liver"])


def test_regions_are_named_by_regions_class_order_and_name():
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3}
    lm = _label_manager(labels, [1, 2, 3])
    ds = {"labels": labels}
    got = resolve_classes(lm, ds, None)
    assert [(c.value, c.name, c.channel, c.region) for c in got] == [
        (1, "whole tumor", 0, (1, 2, 3)),
        (2, "tumor core", 1, (2, 3)),
        (3, "enhancing", 2, (3,)),
    ]
    assert got[1].slug == "tumor_core"
    assert [c.channel for c in resolve_classes(lm, ds, ["enhancing", 1])] == [2, 0]
    with pytest.raises(ArgumentError, match="not 0"):
        resolve_classes(lm, ds, [0])  # a region model has no background channel


def test_case_files_follow_nnunets_naming(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "c_0000.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert case_files(tmp_path / "a_0000.nii.gz", ".nii.gz", 2) == (
        "a",
        [tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"],
    )
    with pytest.raises(
        ImageReadError, match=r"case 'c' must have 2 channel file\(s\).*'.*c_0001.nii.gz' is missing"
    ) as err:
        case_files(tmp_path / "c_0000.nii.gz", ".nii.gz", 2)
    assert err.value.path == tmp_path / "c_0001.nii.gz"
    with pytest.raises(ImageReadError, match="must end with '.nrrd'"):
        case_files(tmp_path / "a_0000.nii.gz", ".nrrd", 2)
    with pytest.raises(ImageReadError, match="not 1"):
        case_files([tmp_path / "a_0000.nii.gz"], ".nii.gz", 2)
    with pytest.raises(ImageReadError, match="must exist"):
        case_files(tmp_path / "z_0000.nii.gz", ".nii.gz", 1)
    with pytest.raises(ImageReadError, match="'.*c_0001.nii.gz' is missing"):
        list_cases(tmp_path, ".nii.gz", 2)


def test_list_cases_agrees_with_nnunet(folders):
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    ours = list_cases(folders.regions_images, ".nii.gz", 2)
    theirs = create_lists_from_splitted_dataset_folder(str(folders.regions_images), ".nii.gz", num_processes=1)
    assert [[str(f) for f in files] for files in ours.values()] == theirs
    assert list(ours) == ["case_a", "case_b"]


def test_missing_channel_and_unknown_class_name_the_problem(folders, tmp_path):
    model = volcam.nnunet.load(folders.regions, device="cpu")
    shutil.copy(folders.regions_images / "case_b_0000.nii.gz", tmp_path / "case_b_0000.nii.gz")
    with pytest.raises(ImageReadError, match=r"case 'case_b' must have 2 channel file\(s\).*case_b_0001.nii.gz"):
        model.explain(tmp_path / "case_b_0000.nii.gz")
    with pytest.raises(ArgumentError, match=r"not 'cores'; did you mean 'core'"):
        model.explain(folders.regions_images / "case_b_0000.nii.gz", classes=["cores"])
    with pytest.raises(ArgumentError, match="tile_step_size"):
        model.explain(folders.regions_images / "case_b_0000.nii.gz", tile_step_size=0)


def test_region_of_a_class_in_a_segmentation_and_in_a_label_file():
    import numpy as np

    from volcam.nnunet.result import class_region

    labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    lm = _label_manager(labels, [4, 5, 6])  # values written need not be the labels
    ds = {"labels": labels}
    regions = resolve_classes(lm, ds, None)
    whole, core, enhancing = regions
    segmentation = np.array([0, 4, 5, 6])  # nothing, whole only, core (and whole), enhancing (and all)
    assert class_region(segmentation, whole, regions).tolist() == [False, True, True, True]
    assert class_region(segmentation, core, regions).tolist() == [False, False, True, True]
    assert class_region(segmentation, enhancing, regions).tolist() == [False, False, False, True]
    truth = np.array([0, 1, 2, 3, 4])
    assert class_region(truth, whole, regions, ground_truth=True).tolist() == [False, True, True, True, False]
    assert class_region(truth, core, regions, ground_truth=True).tolist() == [False, False, True, True, False]
    plain = resolve_classes(
        _label_manager({"background": 0, "a": 1, "b": 2}), {"labels": {"background": 0, "a": 1, "b": 2}}, None
    )
    assert class_region(truth, plain[1], plain, ground_truth=True).tolist() == [False, False, True, False, False]
