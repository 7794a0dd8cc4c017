"""Strict reader and writer for IDX files (the MNIST format), gzipped or raw.

An IDX file is a 4-byte magic number `0x0000TTDD` (TT: data type code, DD: number of dimensions), DD big-endian uint32
sizes, then the data in C order, big-endian. Every way a file can be broken raises a one-line `DataError` naming it.
"""

import gzip
import hashlib
import io
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from capsrobust.errors import DataError

# Standard IDX data type codes -> big-endian numpy dtypes.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_DIMS = 4
GZIP_MAGIC = b"\x1f\x8b"


def sha256_file(path: str | os.PathLike) -> str:
    """Returns the hex sha256 of the bytes of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str | os.PathLike, expected_sha256: str | None = None) -> np.ndarray:
    """Reads an IDX file, gunzipping it if its name ends in `.gz` or it starts with the gzip magic.

    Args:
        path: the file.
        expected_sha256: if given, the hex sha256 the file's bytes on disk must have.

    Returns:
        An array of the header's shape, e.g. `(num_images, rows, cols)` or `(num_labels,)`, in the header's data type
        (native byte order; `uint8` for MNIST).

    Raises:
        DataError: the file is missing, not a regular file, unreadable, a corrupt gzip stream, not IDX, truncated, has
            trailing data, or fails its checksum.
    """
    return _parse(os.fspath(path), read_bytes(path, expected_sha256))


def read_bytes(path: str | os.PathLike, expected_sha256: str | None = None) -> bytes:
    """The contents of a data file, gunzipped if its name ends in `.gz` or it starts with the gzip magic.

    Args:
        path: the file.
        expected_sha256: if given, the hex sha256 the file's bytes on disk must have.

    Raises:
        DataError: the file is missing, not a regular file, unreadable, empty, a corrupt gzip stream, or fails its
            checksum.
    """
    name = os.fspath(path)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{name}: no such file")
    if not path.is_file():
        raise DataError(f"{name}: not a regular file (it is a {'directory' if path.is_dir() else 'special file'})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot read: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"{name}: empty file")
    if expected_sha256 is not None:
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected_sha256.lower():
            raise DataError(
                f"{name}: sha256 mismatch: expected {expected_sha256[:12]}..., got {actual[:12]}... "
                "(the file is corrupt or not the canonical one)"
            )
    if path.suffix != ".gz" and not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        reason = str(e).replace("\n", " ") or type(e).__name__
        raise DataError(f"{name}: corrupt gzip stream: {reason}") from None


def gzip_bytes(payload: bytes) -> bytes:
    """Gzips `payload` at level 9 with no file name and mtime 0, so the result depends only on `payload`."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buffer, mtime=0) as gz:
        gz.write(payload)
    return buffer.getvalue()


def _parse(name: str, data: bytes) -> np.ndarray:
    """Decodes the bytes of an uncompressed IDX file; see `read_idx`."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated: {len(data)} bytes, too short for the 4-byte IDX magic number")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or code not in IDX_DTYPES:
        raise DataError(
            f"{name}: not an IDX file: bad magic number 0x{data[:4].hex()} "
            f"(expected 0x0000TTDD with type code TT in {', '.join(f'{c:02x}' for c in IDX_DTYPES)})"
        )
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{name}: unsupported number of dimensions {ndim} (expected 1 to {MAX_DIMS})")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{name}: truncated: header needs {offset} bytes for {ndim} dimensions, file holds {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    what = f"{shape[0]} items" + (f" of {'x'.join(map(str, shape[1:]))}" if ndim > 1 else "")
    return array_after_header(name, data, offset, shape, np.dtype(IDX_DTYPES[code]), what)


def array_after_header(name: str, data: bytes, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                       what: str) -> np.ndarray:
    """The array of `shape` and `dtype` a header announced, read from `data[offset:]` (IDX and NORB files).

    Raises:
        DataError: the data after the header is shorter or longer than announced (`what` describes the shape), or
            the shape is too large for numpy.
    """
    expected, actual = math.prod(shape) * dtype.itemsize, len(data) - offset
    if actual != expected:
        problem = "truncated" if actual < expected else f"trailing data ({actual - expected} extra bytes)"
        raise DataError(
            f"{name}: {problem}: header says {what} of {dtype.name} ({expected} bytes) "
            f"but file holds {actual} bytes of data"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).astype(dtype.newbyteorder("="))
    try:
        return array.reshape(shape)
    except ValueError:  # an empty array whose other dimensions overflow numpy's size limit
        raise DataError(f"{name}: unsupported shape {'x'.join(map(str, shape))}: too large") from None


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file, atomically (temp file in the same directory, then rename).

    The file is gzipped (level 9, no file name, mtime 0, so the bytes depend only on the array) if `path` ends in
    `.gz`.

    Args:
        path: the file to write; its directory must exist.
        array: a uint8 array of 1 to 4 dimensions, e.g. `(num_images, 28, 28)`.

    Raises:
        ValueError: `array` is not uint8 or has an unsupported number of dimensions.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx writes uint8 arrays only. Received: array.dtype={array.dtype}")
    if not 1 <= array.ndim <= MAX_DIMS:
        raise ValueError(f"write_idx needs 1 to {MAX_DIMS} dimensions. Received: array.shape={array.shape}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip_bytes(payload)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are world-readable like any other
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
