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


def is_nifti2(path: Path) -> bool:
    """Whether ``path`` (.nii or .nii.gz) starts with a NIfTI-2 header (540 bytes, either byte order)."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if compressed else open)(path, "rb") as file:
            head = file.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in (struct.unpack("<i", head)[0], struct.unpack(">i", head)[0])


# NIfTI-2 field -> (offset, format) in the NIfTI-2 header and (offset, format) in the NIfTI-1 one
_NIFTI2_TO_1 = {
    "datatype": ((12, "h"), (70, "h")), "bitpix": ((14, "h"), (72, "h")),
    "intent_p": ((80, "3d"), (56, "3f")), "pixdim": ((104, "8d"), (76, "8f")),
    "scl": ((176, "2d"), (112, "2f")), "cal": ((192, "2d"), (124, "2f")),
    "slice_duration": ((208, "d"), (132, "f")), "toffset": ((216, "d"), (136, "f")),
    "slice_start": ((224, "q"), (74, "h")), "slice_end": ((232, "q"), (120, "h")),
    "descrip": ((240, "80s"), (148, "80s")), "aux_file": ((320, "24s"), (228, "24s")),
    "forms": ((344, "2i"), (252, "2h")), "quatern": ((352, "6d"), (256, "6f")),
    "srow": ((400, "12d"), (280, "12f")), "slice_code": ((496, "i"), (122, "B")),
    "xyzt_units": ((500, "i"), (123, "B")), "intent_code": ((504, "i"), (68, "h")),
    "intent_name": ((508, "16s"), (328, "16s")), "dim_info": ((524, "B"), (39, "B")),
}

_INT_RANGE = {"h": (-32768, 32767), "B": (0, 255)}


def nifti2_as_nifti1(path: Path, dest: Path) -> None:
    """Write the NIfTI-2 image ``path`` as the NIfTI-1 file ``dest`` (.nii, uncompressed): the same voxel bytes
    and header fields (sizes, spacing, qform / sform, scaling, units), for readers that know only NIfTI-1 (this
    SimpleITK's). Extensions are left out. InputError when a size does not fit NIfTI-1 (over 32767 voxels along
    an axis) or the file is truncated."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if compressed else open)(path, "rb") as file:
            head = file.read(540)
            endian = "<" if struct.unpack("<i", head[:4])[0] == 540 else ">"
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            if not 1 <= dims[0] <= 7 or any(d < 0 for d in dims[1:dims[0] + 1]):
                raise InputError(f"{path}: the NIfTI-2 header's dim {list(dims)} is not a valid image size")
            if any(d > 32767 for d in dims):
                raise InputError(f"{path}: a NIfTI-2 image with more than 32767 voxels along an axis "
                                 f"(dim {list(dims[1:dims[0] + 1])}) is not supported")
            header = bytearray(352)
            struct.pack_into(endian + "i", header, 0, 348)
            struct.pack_into(endian + "8h", header, 40, *dims)
            for (source, form), (target, target_form) in _NIFTI2_TO_1.values():
                values = struct.unpack_from(endian + form, head, source)
                if target_form in _INT_RANGE:   # narrower integers in NIfTI-1: clipped (codes and slice indices)
                    low, high = _INT_RANGE[target_form]
                    values = tuple(max(low, min(v, high)) for v in values)
                struct.pack_into(endian + target_form, header, target, *values)
            struct.pack_into(endian + "f", header, 108, 352.0)      # vox_offset: right after the empty extension
            header[344:348] = b"n+1\x00"
            file.seek(max(offset, 540))
            with open(dest, "wb") as out:
                out.write(header)
                while True:
                    chunk = file.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise InputError(f"{path}: the NIfTI-2 file is corrupt or truncated ({exc})") from None
