"""Images for vision models: PNG and JPEG from files, kernel outputs and Python objects, within a budget.

An image is checked (its real format and size, read from the header), then fitted to `max_side` pixels.
Pillow is used when it is importable (matplotlib depends on it, so a notebook with plots has it): it
decodes the whole image, which catches corrupt data, and downscales. Without Pillow an image within the
limit is sent as it is, and a larger one is refused with a message saying to install Pillow. Core module:
objects are recognised by duck typing (matplotlib, PIL and IPython are never imported here).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AutoCoderError

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # larger files are refused before they are read
# Larger images are refused before they are decoded: a 20 KB PNG can decode to 169 megapixels (1.6 GB with Pillow).
MAX_IMAGE_PIXELS = 50_000_000
IMAGE_MIME_TYPES = ("image/png", "image/jpeg")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (Huffman tables), C8 and CC are not frames.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(AutoCoderError):
    """An image was refused: not a PNG/JPEG, unreadable, corrupt or too large. The message says why."""


@dataclass(frozen=True)
class Image:
    """A PNG or JPEG ready to send: within the size budget. `source` says where it came from
    ("run_code", "plot.png", "fig"); `original` is the size before it was downscaled, if it was."""

    data: bytes
    mime: str
    width: int
    height: int
    source: str
    original: tuple[int, int] | None = None

    @property
    def format(self) -> str:
        return "PNG" if self.mime == "image/png" else "JPEG"

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def describe(self) -> str:
        """`plot.png: PNG 640x480, 23 KB (downscaled from 2000x1500)`."""
        scaled = f" (downscaled from {self.original[0]}x{self.original[1]})" if self.original else ""
        return f"{self.source}: {self.format} {self.width}x{self.height}, {_kilobytes(len(self.data))}{scaled}"

    def message_part(self) -> dict[str, Any]:
        """The Chat Completions content part (allowed in user messages only)."""
        return {"type": "image_url", "image_url": {"url": self.data_url()}}


def sniff(data: bytes) -> tuple[str, int, int]:
    """(mime type, width, height) from a PNG or JPEG header; ImageError for anything else."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("corrupt PNG: no image header")
        width, height = struct.unpack(">II", data[16:24])
        return "image/png", width, height
    if data.startswith(b"\xff\xd8"):
        return ("image/jpeg", *_jpeg_size(data))
    raise ImageError("not a PNG or JPEG image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _JPEG_FRAMES:
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + length
    raise ImageError("corrupt JPEG: no frame header with the image size")


def fit_image(data: bytes, source: str, max_side: int) -> Image:
    """Check `data` and fit it within `max_side` pixels. Raises ImageError saying what is wrong."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{source}: {_kilobytes(len(data))} is too large (the limit is "
                         f"{_kilobytes(MAX_IMAGE_BYTES)})")
    try:
        mime, width, height = sniff(data)
    except ImageError as exc:
        raise ImageError(f"{source}: {exc}") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"{source}: corrupt image: size {width}x{height}")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{source}: {width}x{height} is too large to decode ({width * height / 1e6:.0f} megapixels; "
                         f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f})")
    pillow = _pillow()
    if pillow is None:
        if max(width, height) > max_side:
            raise ImageError(f"{source}: {width}x{height} is larger than {max_side} px (agent.image_max_side) and "
                             "cannot be downscaled without Pillow: pip install pillow")
        return Image(data, mime, width, height, source)
    return _fit_with_pillow(pillow, data, mime, source, max_side)


def _fit_with_pillow(pillow: Any, data: bytes, mime: str, source: str, max_side: int) -> Image:
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check (should the header read by sniff() mislead) warns, printed raw: an error here.
            warnings.simplefilter("error", pillow.DecompressionBombWarning)
            with pillow.open(io.BytesIO(data)) as picture:
                picture.load()  # decodes everything: a truncated or corrupt image fails here
                width, height = picture.size
                if max(width, height) <= max_side:
                    return Image(data, mime, width, height, source)
                if picture.mode not in ("RGB", "RGBA", "L", "LA"):  # palette and 16-bit images scale badly
                    picture = picture.convert("RGBA")
                scale = max_side / max(width, height)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                smaller = picture.resize(size, pillow.Resampling.LANCZOS)
                buffer = io.BytesIO()
                if mime == "image/jpeg":
                    smaller.convert("RGB").save(buffer, "JPEG", quality=85)
                else:
                    smaller.save(buffer, "PNG", optimize=True)
    except (OSError, ValueError, SyntaxError, pillow.DecompressionBombError, pillow.DecompressionBombWarning) as exc:
        raise ImageError(f"{source}: corrupt image: {exc}") from None
    return Image(buffer.getvalue(), mime, size[0], size[1], source, original=(width, height))


def read_image_file(path: Path, max_side: int, source: str | None = None) -> Image:
    """A PNG or JPEG file, fitted; ImageError with the reason when it is missing, unreadable, huge or no image."""
    name = source or str(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageError(f"{name}: not a file")
        if size > MAX_IMAGE_BYTES:
            raise ImageError(f"{name}: {_kilobytes(size)} is too large (the limit is {_kilobytes(MAX_IMAGE_BYTES)})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    return fit_image(data, name, max_side)


def image_bytes_of(value: Any) -> bytes | None:
    """PNG or JPEG bytes of an object that is an image, or None: a matplotlib Figure (rendered as PNG), a
    PIL image (saved as PNG), an IPython Image or anything with `_repr_png_` / `_repr_jpeg_`."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if callable(getattr(value, "savefig", None)) and hasattr(value, "axes"):  # matplotlib Figure
        buffer = io.BytesIO()
        value.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
    if callable(getattr(value, "save", None)) and hasattr(value, "mode") and hasattr(value, "size"):  # PIL
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    for method in ("_repr_png_", "_repr_jpeg_"):
        render = getattr(value, method, None)
        if callable(render):
            data = render()
            if isinstance(data, tuple):  # (data, metadata)
                data = data[0]
            if data:
                return decode_output(data)
    return None


def image_from_object(value: Any, source: str, max_side: int) -> Image:
    """An image from a Python object (see `image_bytes_of`), fitted; ImageError when it is not one."""
    try:
        data = image_bytes_of(value)
    except Exception as exc:  # rendering a user's object may fail in any way
        raise ImageError(f"{source}: could not render it as an image: {type(exc).__name__}: {exc}") from None
    if data is None:
        raise ImageError(f"{source} is a {type(value).__name__}, not an image (a matplotlib Figure, a PIL image, "
                         "an IPython Image, or a PNG/JPEG file)")
    return fit_image(data, source, max_side)


def decode_output(data: str | bytes) -> bytes:
    """The bytes of an `image/png` / `image/jpeg` display output: raw bytes, or base64 text as notebooks hold it."""
    if isinstance(data, bytes) and (data.startswith(_PNG_MAGIC) or data.startswith(b"\xff\xd8")):
        return data
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return data.encode("latin-1", "replace") if isinstance(data, str) else data


def _pillow() -> Any:
    try:
        from PIL import Image as pillow
    except ImportError:
        return None
    return pillow


def _kilobytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{max(1, round(size / 1024))} KB"
