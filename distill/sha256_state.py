"""A sha256 whose state can be kept between runs and taken up again.

A file that only grew (a source stream, an export, a trainer view) is hashed for its receipt
from where its last digest stopped instead of from its first byte. Python's hashlib objects
cannot be serialised, and the package that made them so (`rehash`) refuses OpenSSL 3; OpenSSL's
own `SHA256_CTX` is a plain documented struct, so its bytes are the state. The functions are
taken from the libcrypto that Python's `_hashlib` is linked against, and checked against hashlib
once; where they are missing or disagree, `available()` is False and callers hash from the start.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
from typing import Any

CTX_BYTES = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16] (32-bit words), num, md_len
CTX_ROOM = 256  # what each context is given: room to spare should a build lay the struct out larger
_NUMBERS = struct.Struct("<II64xII")  # Nl, Nh, (the block), num, md_len: after h[8]
BLOCK = 64


@functools.cache
def _library() -> Any | None:
    """libcrypto's SHA256_Init/Update/Final, or None when they are not there or do not behave as
    hashlib's sha256 and the layout above say."""
    try:
        import _hashlib

        lib = ctypes.CDLL(_hashlib.__file__)  # its symbols and those of the libcrypto it links
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (ImportError, OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_void_p]
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    for fn in (init, update, final):
        fn.restype = ctypes.c_int
    try:
        probe = Sha256State(_lib=lib)
        probe.update(b"x" * 100)
        if not check_state(probe.state(), 100):  # not the layout above: its bytes are not the state
            return None
        kept = Sha256State(probe.state(100), 100, _lib=lib)
        kept.update(b"y" * 29)
        agrees = kept.hexdigest() == hashlib.sha256(b"x" * 100 + b"y" * 29).hexdigest()
    except ValueError:
        return None
    return lib if agrees else None


def available() -> bool:
    return _library() is not None


def check_state(state: bytes, size: int) -> bool:
    """Whether `state` is a SHA256_CTX over exactly `size` bytes (its bit count and the bytes
    waiting in its block): a state from a damaged or edited cache is refused before OpenSSL
    writes into the block at its `num`."""
    if len(state) != CTX_BYTES or size < 0:
        return False
    low, high, num, md_len = _NUMBERS.unpack_from(state, 32)
    bits = size * 8
    return (low, high, num, md_len) == (bits & 0xFFFFFFFF, (bits >> 32) & 0xFFFFFFFF, size % BLOCK, 32)


class Sha256State:
    """hashlib's sha256 interface (update, copy, digest, hexdigest) plus `state()`: the bytes to
    keep, and the constructor that takes them back (with the byte count they cover, checked)."""

    def __init__(self, state: bytes | None = None, size: int = 0, *, _lib: Any | None = None) -> None:
        lib = _lib if _lib is not None else _library()
        if lib is None:
            raise ValueError("OpenSSL's SHA256 functions are not available")
        self._lib = lib
        self._ctx = ctypes.create_string_buffer(CTX_ROOM)
        self._size = size
        if state is None:
            if size:
                raise ValueError("a new sha256 covers no bytes")
            lib.SHA256_Init(self._ctx)
        elif check_state(state, size):
            ctypes.memmove(self._ctx, state, CTX_BYTES)
        else:
            raise ValueError("not a sha256 state over that many bytes")

    name = "sha256"
    digest_size = 32
    block_size = BLOCK

    def update(self, data: bytes) -> None:
        data = bytes(data)
        self._lib.SHA256_Update(self._ctx, data, len(data))
        self._size += len(data)

    def state(self, size: int | None = None) -> bytes:
        """The state's bytes (`size`: the byte count the caller expects it to cover, checked)."""
        if size is not None and size != self._size:
            raise ValueError(f"the state covers {self._size} bytes, not {size}")
        return self._ctx.raw[:CTX_BYTES]

    @property
    def size(self) -> int:
        return self._size

    def copy(self) -> Sha256State:
        return Sha256State(self.state(), self._size, _lib=self._lib)

    def digest(self) -> bytes:
        done = ctypes.create_string_buffer(self._ctx.raw, CTX_ROOM)  # Final ends the context: a copy's
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, done)
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
