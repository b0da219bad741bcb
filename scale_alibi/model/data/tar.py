"""Parsing a shard's WebDataset tar stream into samples, raising `StreamBroken` when it is cut short."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from scale_alibi.contract.errors import ScaleAlibiError


class StreamBroken(ScaleAlibiError):
    """The shard stream ended or failed before all its samples arrived (retriable)."""


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").strip()
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    return int(field or b"0", 8)


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a PAX extended header, if any."""
    i = 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        if key == b"path":
            return value.decode()
        i += length
    return None


def iter_tar(read: Callable[[int], bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in a tar stream; StreamBroken when it is cut short."""
    long_name: str | None = None
    while True:
        header = _read_exact(read, 512)
        if len(header) < 512:
            raise StreamBroken("tar stream ended inside a header")
        if header == b"\0" * 512:
            return  # end-of-archive marker: a complete stream
        name = header[0:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode() if header[257:262] == b"ustar" else ""
        if prefix:
            name = f"{prefix}/{name}"
        size = _octal(header[124:136])
        kind = header[156:157]
        data = _read_exact(read, size + (-size % 512))
        if len(data) < size + (-size % 512):
            raise StreamBroken(f"tar stream ended inside member {name!r}")
        data = data[:size]
        if kind in (b"x", b"g"):
            if kind == b"x":
                long_name = _pax_path(data)
            continue
        if kind == b"L":  # GNU long name
            long_name = data.rstrip(b"\0").decode()
            continue
        if kind in (b"0", b"\0"):
            yield (long_name or name), data
        long_name = None


def iter_samples(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group tar members `{key}.{member}.{ext}` into (key, {member: bytes}) in stream order."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    for name, data in members:
        base = name.rsplit("/", 1)[-1]
        k, _, rest = base.partition(".")
        member = rest.rsplit(".", 1)[0] if rest.count(".") else rest
        if k != key:
            if key is not None:
                yield key, sample
            key, sample = k, {}
        sample[member] = data
    if key is not None:
        yield key, sample
