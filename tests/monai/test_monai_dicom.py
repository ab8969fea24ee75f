"""The handler on a case read from a DICOM series: besides the NIfTI heat, a Parametric Map and
a SEG on the series, as ``volcam run`` writes them, that dciodvfy accepts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import torch
from dicom_helpers import SeriesSpec, blob, dciodvfy_report, write_series
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityd,
    Spacingd,
)

from volcam.io.dicom import DicomSeriesReader
from volcam.monai import CAMHandler


def test_a_dicom_case_gets_a_parametric_map_and_a_seg_on_its_series(tmp_path):
    written = write_series(tmp_path / "ct", SeriesSpec(values=blob((2.0, -4.0, 42.0), peak=900.0, base=-100.0)))
    pre = Compose(
        [
            LoadImaged("image", reader=DicomSeriesReader()),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.5, 1.5, 2.0)),
            ScaleIntensityd("image"),
            DivisiblePadd("image", k=2),
        ]
    )
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    handler = CAMHandler(
        target_layers="model.1.submodule",
        method="hirescam",
        targets=1,
        output_dir=tmp_path / "out",
        transform=pre,
        exports=["nifti", "dicom"],
    )
    data = [{"image": str(tmp_path / "ct")}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        network=net,
        val_handlers=[handler],
        val_data_loader=DataLoader(Dataset(data, pre), batch_size=1),
    )
    evaluator.run()
    (case,) = (tmp_path / "out" / "epoch_0001").iterdir()
    folder = case / "class1"
    heat = nib.load(folder / "heat.nii.gz").get_fdata()  # on the series' grid: columns x rows x slices
    assert heat.shape == (written.spec.columns, written.spec.rows, written.spec.slices) and heat.max() > 0
    source = pydicom.dcmread(written.files[0])
    for name, sop_class in (
        ("heat_pmap.dcm", "1.2.840.10008.5.1.4.1.1.30"),
        ("heat_seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4"),
    ):
        errors, _ = dciodvfy_report(folder / name)
        assert errors == [], (name, errors)
        ds = pydicom.dcmread(folder / name)
        assert ds.SOPClassUID == sop_class
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == written.uid
    pmap = pydicom.dcmread(folder / "heat_pmap.dcm")
    frames = np.sort(pmap.pixel_array.reshape(-1))  # the NIfTI's values, frame order aside
    np.testing.assert_allclose(frames, np.sort(heat.astype(np.float32).reshape(-1)), rtol=0, atol=1e-6)


def test_a_nifti_case_gets_no_dicom_files(tmp_path):
    image = np.zeros((12, 10, 8), np.float32)
    image[4:8, 3:7, 2:6] = 1.0
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "scan.nii.gz")
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image")])
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    handler = CAMHandler(target_layers="model.1.submodule", method="hirescam", targets=1, output_dir=tmp_path / "out")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        network=net,
        val_handlers=[handler],
        val_data_loader=DataLoader(Dataset([{"image": str(tmp_path / "scan.nii.gz")}], pre), batch_size=1),
    )
    evaluator.run()
    folder = tmp_path / "out" / "epoch_0001" / "scan" / "class1"
    assert (folder / "heat.nii.gz").is_file()
    assert not list(folder.glob("*.dcm"))
