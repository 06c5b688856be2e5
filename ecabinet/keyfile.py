"""A cabinet's key file: its 64 bytes of MAC keys (:class:`CabinetKeys`), for ``perso cabinet sim``.

Format: 128 lowercase hex digits (``CabinetKeys.to_bytes().hex()``: the command key, then the
report key) and a newline; mode 0600.  A cabinet is provisioned with its own keys only, never the
site key (docs/ecabinet-protocol.md *Keys*).

The reader refuses a file that group or others may read or write, as ssh does with a private key:
a key file that leaked is not made worse by being used.  Errors never quote the file's contents.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Final

from ecabinet.errors import CabinetError
from ecabinet.security import KEY_BYTES, CabinetKeys

__all__ = ["KeyFileError", "read_cabinet_key_file", "write_cabinet_key_file"]

_HEX: Final = re.compile(rb"[0-9a-f]{%d}\n?" % (4 * KEY_BYTES))
#: A few bytes of slack over 128 hex digits and a newline; a larger file is not a key file.
_MAX_BYTES: Final = 4 * KEY_BYTES + 8


class KeyFileError(CabinetError):
    """The key file is missing, unreadable, too open, or not 128 lowercase hex digits."""


def write_cabinet_key_file(path: str | os.PathLike[str], keys: CabinetKeys) -> Path:
    """Write ``keys`` to ``path`` (mode 0600, replaced atomically); refuses to follow a symlink."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash mid-write
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {target}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, keys.to_bytes().hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise KeyFileError(f"cannot write key file {target}: {exc.strerror}") from None
    return target


def read_cabinet_key_file(path: str | os.PathLike[str]) -> CabinetKeys:
    source = Path(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {source}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {source} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"key file {source} is accessible by others (mode {stat.S_IMODE(info.st_mode):04o});"
                " chmod 600 it"
            )
        data = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_BYTES or _HEX.fullmatch(data) is None:
        raise KeyFileError(f"key file {source} is not 128 lowercase hex digits and a newline")
    try:
        return CabinetKeys.from_bytes(bytes.fromhex(data.decode("ascii").strip()))
    except ValueError:
        # Equal command and report keys: not a provisioned cabinet's keys.
        raise KeyFileError(f"key file {source} does not hold a cabinet's two keys") from None
