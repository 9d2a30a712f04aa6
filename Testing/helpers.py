"""Helpers the test modules import: where the development scans are, running the CLI in-process, which of the
repository's model files an installed copy carries, and a DICOM series writer."""
import os
import re
from pathlib import Path

import SimpleITK as sitk

from IMISSegmentLib.cli import main
from IMISSegmentLib.io.volume import Volume, to_sitk

REPO = Path(__file__).resolve().parents[1]
# The example CT that ships in the repository (and in the wheel): 30 x 101 x 122, 3 mm, 41 labelled structures.
EXAMPLE_DATA = REPO / "Resources" / "Data"
EXAMPLE_CT = EXAMPLE_DATA / "ct_abdomen"
# The project's development scans (not in the repository; a clone has none): ../shared/data beside the
# repository, as CI lays it out, or $IMIS_SHARED_DATA. Tests that need them skip without them (shared_case).
SHARED_DATA = Path(os.environ.get("IMIS_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_DATA_MISSING = (f"needs the project's development scans, not in the repository: none at {SHARED_DATA}; "
                       f"set IMIS_SHARED_DATA to the development data folder (or put it at ../shared/data)")


def shared_case(name: str) -> Path:
    """The development case folder ``name`` (SHARED_DATA / name), or skip the test saying how to get it."""
    import pytest

    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    return path


def run_cli(argv, capsys):
    """main()'s exit code, stdout, stderr; argparse's own errors leave through SystemExit, as a script would."""
    try:
        code = main(argv)
    except SystemExit as error:
        code = error.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def slicer_installed_model_files() -> list:
    """The files of Resources/models (paths relative to the repository) that the Slicer extension installs: the
    module CMake's resource filter applied as CMake applies it."""
    module_cmake = (REPO / "IMISSegment" / "CMakeLists.txt").read_text()
    match = re.search(r'list\(FILTER IMISSegment_SHARED_RESOURCES EXCLUDE REGEX "([^"]+)"\)', module_cmake)
    assert match, "the module CMake must filter the installed resources"
    excluded = re.compile(match.group(1).replace("\\\\", "\\"))
    files = [p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / "models").rglob("*") if p.is_file()]
    return sorted(f for f in files if not excluded.search(f))


def write_dicom_series(volume: Volume, folder: Path, series_uid: str, names=None, shifts=None) -> None:
    """One file per slice with the geometry tags GDCM sorts by; ``names`` gives the file names, ``shifts``
    moves each slice's position along k by that many mm."""
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(volume)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        tags = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid,
            "0020|0013": str(k + 1), "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformContinuousIndexToPhysicalPoint(
                (0, 0, k + (shifts[k] / volume.spacing[0] if shifts else 0)))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                         direction[1], direction[4], direction[7])),
            "0028|0030": f"{volume.spacing[1]:.6f}\\{volume.spacing[2]:.6f}",  # row \ column spacing
            "0018|0050": f"{volume.spacing[0]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / (names[k] if names else f"{series_uid[-3:]}_{k:03d}.dcm")))
        writer.Execute(piece)
