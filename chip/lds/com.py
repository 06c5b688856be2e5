"""EF.COM: LDS and Unicode versions and the list of data groups present (Doc 9303-10 4.6.1)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

from chip.errors import EncodingError
from chip.lds.base import LDSFile
from chip.lds.tags import by_dg, by_tag
from chip.tlv import encode_tag, iter_tags, iter_tlv, tlv

__all__ = ["EFCom"]

_LDS_VERSION = 0x5F01
_UNICODE_VERSION = 0x5F36
_TAG_LIST = 0x5C


@dataclass(frozen=True, slots=True)
class EFCom(LDSFile):
    """EF.COM: ``lds_version`` "aabb" (4.6.1.1), ``unicode_version`` "aabbcc" (4.6.1.2), DG tags.

    The default LDS version is 1.8, the Eighth Edition's; ``tags`` keep the order given.
    """

    EF_NAME = "EF.COM"

    lds_version: str = "0108"
    unicode_version: str = "040000"
    tags: tuple[int, ...] = (0x61, 0x75)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9]{4}", self.lds_version):
            raise EncodingError("LDS version is four digits aabb", field="EF.COM.lds_version")
        if not re.fullmatch(r"[0-9]{6}", self.unicode_version):
            raise EncodingError(
                "Unicode version is six digits aabbcc", field="EF.COM.unicode_version"
            )
        for tag in self.tags:
            try:
                known = by_tag(tag).dg is not None
            except KeyError:
                known = False
            if not known:
                raise EncodingError(
                    "tag list names something other than a data group", field="EF.COM.tags"
                )
        if len(set(self.tags)) != len(self.tags):
            raise EncodingError("tag list names a data group twice", field="EF.COM.tags")

    @classmethod
    def for_data_groups(cls, dgs: Iterable[int], **versions: str) -> Self:
        """EF.COM listing data groups by number, e.g. ``EFCom.for_data_groups([1, 2, 3, 14])``."""
        tags: list[int] = []
        for dg in dgs:
            tag = by_dg(dg).tag
            if tag is None:  # pragma: no cover - every DG in the table has a tag
                raise ValueError(f"DG{dg} has no tag")
            tags.append(tag)
        return cls(tags=tuple(tags), **versions)

    @property
    def data_groups(self) -> tuple[int, ...]:
        return tuple(dg for dg in (by_tag(t).dg for t in self.tags) if dg is not None)

    def _encode(self) -> bytes:
        return b"".join(
            (
                tlv(_LDS_VERSION, self.lds_version.encode("ascii")),
                tlv(_UNICODE_VERSION, self.unicode_version.encode("ascii")),
                tlv(_TAG_LIST, b"".join(encode_tag(t) for t in self.tags)),
            )
        )

    @classmethod
    def _decode(cls, content: bytes) -> Self:
        items = dict(iter_tlv(content))
        if set(items) != {_LDS_VERSION, _UNICODE_VERSION, _TAG_LIST} or len(items) != 3:
            raise EncodingError("EF.COM holds exactly 5F01, 5F36 and 5C", field="EF.COM")
        try:
            lds = items[_LDS_VERSION].decode("ascii")
            unicode = items[_UNICODE_VERSION].decode("ascii")
        except UnicodeDecodeError as exc:
            raise EncodingError("version numbers are ASCII digits", field="EF.COM") from exc
        return cls(
            lds_version=lds, unicode_version=unicode, tags=tuple(iter_tags(items[_TAG_LIST]))
        )
