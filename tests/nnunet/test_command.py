"""``volcam nnunet`` from the command line, and the light import of volcam."""

from __future__ import annotations

import csv

import numpy as np

from volcam.cli import main


def test_command_writes_cases_and_summary(folders, tmp_path, capsys):
    out = tmp_path / "cams"
    argv = ["nnunet", "-i", str(folders.toy_images), "-o", str(out), "-m", str(folders.toy_3d)]
    argv += ["-f", "0", "1", "--classes", "organ", "--layer", "decoder.stages.1", "-device", "cpu"]
    argv += ["--disable_tta", "-step_size", "0.7", "--no-figure", "--masks", str(folders.toy_labels)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2] case_a: ok" in printed and "2 of 2 case(s) done" in printed
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["case"], r["class"], r["class_name"], r["status"]) for r in rows] == [
        ("case_a", "1", "organ", "ok"),
        ("case_b", "1", "organ", "ok"),
    ]
    assert all(float(r["energy_in_label"]) > 0 and int(r["windows"]) > 0 for r in rows)
    for case in ("case_a", "case_b"):
        assert (out / case / "segmentation.nii.gz").is_file()
        assert (out / case / "organ" / "heat.nii.gz").is_file()
        assert len(list((out / case / "organ" / "axial").glob("*.png"))) > 0
        assert not (out / case / "organ" / "figure.png").exists()


def test_command_by_dataset_id_and_layers(folders, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_results", str(folders.root / "results"))
    assert main(["nnunet", "-d", "11", "-c", "2d", "--layers", "-device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "decoder.stages.1" in printed and "decoder stage" in printed and "Tensor[1, 4, 24, 32]" in printed


def test_command_errors_exit_2_with_the_reason(folders, tmp_path, capsys):
    assert main(["nnunet", "-m", str(folders.toy_3d.parent), "-i", str(tmp_path), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "must be an nnU-Net results folder" in err and "nnUNetTrainer__nnUNetPlans__3d_fullres" in err
    assert main(["nnunet", "-m", str(folders.toy_3d), "-f", "7", "-i", str(tmp_path), "-o", str(tmp_path)]) == 2
    assert "no fold_7/" in capsys.readouterr().err
    assert main(["nnunet", "-m", str(folders.toy_3d), "-i", str(tmp_path), "-o", str(tmp_path), "-device", "cpu"]) == 2
    assert "must hold images named CASE_0000.nii.gz" in capsys.readouterr().err


def test_a_failed_case_is_reported_and_the_others_done(folders, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for f in folders.toy_images.glob("case_b_*"):
        (images / f.name).symlink_to(f)
    (images / "case_c_0000.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "cams"
    argv = ["nnunet", "-i", str(images), "-o", str(out), "-m", str(folders.toy_2d), "--classes", "1"]
    argv += ["-device", "cpu", "--disable_tta", "--no-pngs", "--no-figure", "-q"]
    assert main(argv) == 1
    rows = {r["case"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["case_b"]["status"] == "ok"
    assert rows["case_c"]["status"] == "failed" and "case_c_0000.nii.gz" in rows["case_c"]["error"]
    assert np.isfinite(float(rows["case_b"]["predicted_volume_ml"]))
