"""An input's modality from names and DICOM tags, and the warning against a checkpoint's."""

import pytest

from sss_viewer.core.modality import check_modality, modality_from_tags, modality_of


@pytest.mark.parametrize("tags, expected", [
    ({"SeriesDescription": "t1_MPRAGEcr_noGRAPPA"}, "t1"),
    ({"SeriesDescription": "AX FLAIR"}, "flair"),
    ({"SeriesDescription": "", "ProtocolName": "T2W_TSE"}, "t2"),
    ({"SeriesDescription": "T1 SE post", "ContrastBolusAgent": "Gadovist"}, "t1ce"),
    ({"SeriesDescription": "sag 3d", "RepetitionTime": "2300", "EchoTime": "2.98", "InversionTime": "900"}, "t1"),
    ({"SeriesDescription": "ax", "RepetitionTime": "9000", "EchoTime": "120", "InversionTime": "2500"}, "flair"),
    ({"SeriesDescription": "ax", "RepetitionTime": "5000", "EchoTime": "100"}, "t2"),
    ({"SeriesDescription": "ax", "RepetitionTime": "3000", "EchoTime": "15"}, "pd"),
    ({"SeriesDescription": "ax", "RepetitionTime": "500", "EchoTime": "10"}, "t1"),
    ({"SeriesDescription": "ax", "RepetitionTime": "1500", "EchoTime": "45"}, None),
    ({"SeriesDescription": "localizer"}, None),
])
def test_modality_from_tags(tags, expected):
    found, why = modality_from_tags(tags)
    assert found == expected
    assert why  # always says what decided it


def test_modality_from_names():
    assert modality_of("x/IXI002-Guys-0828-T1.nii.gz") == "t1"
    assert modality_of("x/flair/brain.nii.gz") == "flair"
    assert modality_of("x/t1_and_t2.nii.gz") is None      # two named: undecided
    assert modality_of("x/brain.nii.gz") is None


def test_check_modality_warns_but_never_refuses():
    same = check_modality("t1", "file name", "t1")
    assert same.warning is None
    other = check_modality("flair", "file name", "t1")
    assert "FLAIR" in other.warning and "T1" in other.warning and "\n" not in other.warning
    unknown = check_modality(None, "nothing names one", "t1")
    assert "unknown" in unknown.warning
    assert check_modality("flair", "file name", None).warning is None   # a checkpoint that does not say: no claim
    assert set(other.to_json()) == {"input", "source", "model", "warning"}
