"""Helpers the test modules import: where the development scans are, running the CLI in-process, and which of
the repository's model files an installed copy carries."""
import os
import re
from pathlib import Path

from IMISSegmentLib.cli import main

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository (as CI lays it out), or $IMIS_SHARED_DATA
SHARED_DATA = Path(os.environ.get("IMIS_SHARED_DATA", REPO.parent / "shared" / "data"))


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
