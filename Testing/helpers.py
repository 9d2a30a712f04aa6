"""Helpers the test modules import: where the development scans are, and running the CLI in-process."""
import os
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
