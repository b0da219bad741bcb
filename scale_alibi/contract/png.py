"""What a release's tile is, checked from its first 33 bytes before anything decodes it.

A tile is a PNG (signature, then the IHDR chunk) of TILE_PX x TILE_PX pixels, 8 bits per sample,
in a colour type the loader's decoder turns into three uint8 channels (gray, RGB, palette or
RGBA; gray+alpha would decode to two). The header is read instead of decoding: a tile from an
untrusted archive may announce 30000 x 30000 pixels (3.6 GB once decoded) in a few kilobytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TILE_PX = 256  # the side of every tile of a release, at every zoom
PNG_HEAD_BYTES = 33  # signature (8) + IHDR length, type, 13 bytes of data, CRC
# IHDR colour types the decoder turns into three 8-bit channels, and their names in messages.
COLOUR_TYPES: dict[int, str] = {0: "gray", 2: "RGB", 3: "palette", 6: "RGBA"}
_OTHER_COLOUR_TYPES: dict[int, str] = {4: "gray+alpha"}


@dataclass(frozen=True)
class PngHead:
    """The IHDR fields of a PNG: size in pixels, bits per sample and colour type."""

    width_px: int
    height_px: int
    bit_depth: int
    colour_type: int


def png_head(data: bytes) -> PngHead | None:
    """The IHDR of PNG bytes `data`, or None when they do not start with a PNG signature and IHDR."""
    if len(data) < PNG_HEAD_BYTES or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return PngHead(width, height, depth, colour)


def tile_problem(data: bytes, size_px: int = TILE_PX) -> str | None:
    """Why `data` is not a tile of `size_px` x `size_px` 8-bit pixels, or None when it is one."""
    head = png_head(data)
    if head is None:
        return "is not a PNG"
    if (head.width_px, head.height_px) != (size_px, size_px):
        return f"is {head.width_px}x{head.height_px} px, not {size_px}x{size_px}"
    if head.bit_depth != 8 or head.colour_type not in COLOUR_TYPES:
        kind = COLOUR_TYPES.get(head.colour_type) or _OTHER_COLOUR_TYPES.get(head.colour_type, f"type {head.colour_type}")
        return (f"is a {head.bit_depth}-bit {kind} PNG, not 8-bit "
                f"{', '.join(COLOUR_TYPES.values())}")
    return None
