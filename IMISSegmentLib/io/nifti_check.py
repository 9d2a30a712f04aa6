"""What ITK's NIfTI reader does not tell: whether the file holds all the voxel data its header promises (it
zero-fills the rest), and how many NaN / inf voxels the file stores (it reads them as 0)."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

# NIfTI datatype code -> bytes per voxel
_NIFTI_ITEM_SIZE = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                    1536: 16, 1792: 16, 2048: 32, 2304: 4}
_NIFTI_FLOATS = {16: "f4", 64: "f8"}
_CHUNK = 1 << 24  # bytes read at a time; a multiple of every voxel size, so chunks split no voxel


def _nifti_header(file) -> tuple[str, int, int, str | None] | None:
    """(byte order, voxel data offset, voxel data bytes, float dtype code or None) of an open NIfTI-1/2 file,
    read from its start; None when it holds no NIfTI header we know (ITK has read the file anyway)."""
    head = file.read(4)
    for endian in "<>":
        size = struct.unpack(endian + "i", head)[0] if len(head) == 4 else 0
        if size in (348, 540):
            break
    else:
        return None
    head += file.read(size - 4)
    if len(head) < size:
        raise EOFError
    if size == 348:  # NIfTI-1: dim int16[8] at 40, datatype int16 at 70, vox_offset float32 at 108
        dims, datatype = struct.unpack(endian + "8h", head[40:56]), struct.unpack(endian + "h", head[70:72])[0]
        offset = struct.unpack(endian + "f", head[108:112])[0]
    else:  # NIfTI-2: datatype int16 at 12, dim int64[8] at 16, vox_offset int64 at 168
        datatype, dims = struct.unpack(endian + "h", head[12:14])[0], struct.unpack(endian + "8q", head[16:80])
        offset = struct.unpack(endian + "q", head[168:176])[0]
    if datatype not in _NIFTI_ITEM_SIZE or not 1 <= dims[0] <= 7 or not math.isfinite(offset):
        return None
    nbytes = math.prod(max(d, 0) for d in dims[1:dims[0] + 1]) * _NIFTI_ITEM_SIZE[datatype]
    return endian, max(int(offset), size), nbytes, _NIFTI_FLOATS.get(datatype)


def scan_nifti(path: Path) -> tuple[int, int]:
    """Check that a NIfTI file holds all the voxel data its header promises; return its (NaN, inf) counts.

    ITK's reader silently zero-fills missing data and turns NaN / inf into 0, so both are checked in the
    file's own bytes, streamed in chunks: a .nii.gz is decompressed once and never held whole, and an
    integer .nii is not read at all (its size tells).
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    nan = inf = found = expected = 0
    stream_ended = False
    try:
        with (gzip.open if compressed else open)(path, "rb") as file:
            header = _nifti_header(file)
            if header is None:
                return 0, 0
            endian, offset, expected, code = header
            if code is None and not compressed:
                found = os.fstat(file.fileno()).st_size - offset
            else:
                file.seek(offset)
                while True:
                    try:
                        chunk = file.read(_CHUNK)
                    except EOFError:  # a gzip stream cut short; tell() is where the data ran out
                        found, stream_ended = file.tell() - offset, True
                        break
                    if not chunk:
                        break
                    if code is not None and found < expected:
                        dtype = np.dtype(endian + code)
                        values = np.frombuffer(chunk, dtype, count=min(len(chunk), expected - found) // dtype.itemsize)
                        nan += int(np.count_nonzero(np.isnan(values)))
                        inf += int(np.count_nonzero(np.isinf(values)))
                    found += len(chunk)
    except EOFError:
        stream_ended = True
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path}: the file is corrupt ({exc})") from None
    if found < expected:
        raise InputError(f"{path}: the file is truncated: its header promises {expected} bytes of voxel data, "
                         f"found {max(found, 0)}{' before the gzip stream ends' if stream_ended else ''}")
    if stream_ended:
        raise InputError(f"{path}: the file is corrupt or truncated: its gzip stream ends without its end marker")
    return nan, inf
