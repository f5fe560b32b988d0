"""What the image store knows about one stored image file: its size and its hashes."""

from __future__ import annotations

from typing import Annotated

import msgspec

#: what an image id may be: it names a file in the image store and in every host's cache
IMAGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$"
ImageId = Annotated[str, msgspec.Meta(pattern=IMAGE_ID_PATTERN)]


class ImageFileInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Size and hashes of an image's data, as Glance reports them.

    ``checksum`` is the md5 hex digest (Glance's legacy ``checksum`` field);
    ``os_hash_algo``/``os_hash_value`` are the multihash pair (sha512 hex digest). Hosts
    verify a download against ``os_hash_value``.
    """

    size: int
    checksum: str
    os_hash_algo: str = "sha512"
    os_hash_value: str
