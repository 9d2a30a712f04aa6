"""Where the tests find the project's development scans: ../shared/data beside the repository
(as CI lays it out), or $IMIS_SHARED_DATA."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMIS_SHARED_DATA", REPO.parent / "shared" / "data"))
