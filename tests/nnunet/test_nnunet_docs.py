"""The Python snippets of docs/guide/nnunet.md run, in order, on the test's results folder."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "nnunet.md"


def test_guide_snippets_run(folders, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2
    replacements = {
        "nnUNet_results/Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres": str(folders.toy_3d),
        "imagesTs/liver_7_0000.nii.gz": str(folders.toy_images / "case_b_0000.nii.gz"),
        '"imagesTs"': repr(str(folders.toy_images)),
        'device="cuda"': 'device="cpu"',
        '"liver"': '"organ"',
        "decoder.stages.3": "decoder.stages.1",
    }
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        for old, new in replacements.items():
            block = block.replace(old, new)
        exec(compile(block, str(PAGE), "exec"), namespace)
    res = namespace["res"]
    assert res.heat[1].max() == 1.0 and res.segmentation.shape == res.heat[1].shape
    assert (tmp_path / "cams" / "case_b" / "organ" / "heat.nii.gz").is_file()
    assert (tmp_path / "cams" / "case_a" / "segmentation.nii.gz").is_file()
