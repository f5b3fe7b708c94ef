"""Bytearray-backed bitsets of rule indices.

This module owns the mask representation of the prefilter: bit ``i`` of a mask is
rule ``i``, stored little-endian in a ``bytearray`` (byte ``i >> 3``, bit
``i & 7``).  The hot path only ever does single-bit tests on the raw bytearray
(:func:`test`, or the inlined ``buf[i >> 3] >> (i & 7) & 1``); whole-mask
operations (AND/OR/iteration/counting) are compile-time helpers and may convert to
a Python ``int`` temporarily.
"""

from __future__ import annotations


def nbytes(nbits: int) -> int:
    return (nbits + 7) >> 3


def test(buf: bytearray, i: int) -> int:
    """1 if bit ``i`` is set (0 when ``i`` is beyond the buffer)."""
    b = i >> 3
    if b >= len(buf) or i < 0:
        return 0
    return buf[b] >> (i & 7) & 1


class BitSet:
    """A fixed-size set of rule indices ``0 <= i < size`` over a bytearray."""

    __slots__ = ("size", "buf")

    def __init__(self, size: int, buf: bytearray | None = None) -> None:
        self.size = size
        self.buf = bytearray(nbytes(size)) if buf is None else buf

    # -- construction ------------------------------------------------------------------
    @classmethod
    def empty(cls, size: int) -> "BitSet":
        return cls(size)

    @classmethod
    def full(cls, size: int) -> "BitSet":
        bs = cls(size, bytearray(b"\xff") * nbytes(size))
        tail = size & 7
        if tail:
            bs.buf[-1] = (1 << tail) - 1
        return bs

    @classmethod
    def of(cls, size: int, indices) -> "BitSet":
        bs = cls(size)
        for i in indices:
            bs.add(i)
        return bs

    def copy(self) -> "BitSet":
        return BitSet(self.size, bytearray(self.buf))

    # -- single bits -------------------------------------------------------------------
    def add(self, i: int) -> None:
        """Set bit ``i``; out of range is a no-op."""
        if 0 <= i < self.size:
            self.buf[i >> 3] |= 1 << (i & 7)

    def discard(self, i: int) -> None:
        if 0 <= i < self.size:
            self.buf[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def __contains__(self, i: int) -> bool:
        return 0 <= i < self.size and bool(self.buf[i >> 3] >> (i & 7) & 1)

    # -- whole-mask operations (compile time) ------------------------------------------
    def _int(self) -> int:
        return int.from_bytes(self.buf, "little")

    def _set_int(self, value: int) -> None:
        self.buf[:] = value.to_bytes(len(self.buf), "little")

    def __iand__(self, other: "BitSet") -> "BitSet":
        self._set_int(self._int() & other._int())
        return self

    def __ior__(self, other: "BitSet") -> "BitSet":
        self._set_int(self._int() | other._int())
        return self

    def __and__(self, other: "BitSet") -> "BitSet":
        out = self.copy()
        out &= other
        return out

    def __or__(self, other: "BitSet") -> "BitSet":
        out = self.copy()
        out |= other
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, BitSet) and self.size == other.size and self.buf == other.buf

    __hash__ = None

    def is_empty(self) -> bool:
        return not any(self.buf)

    def __len__(self) -> int:
        return self._int().bit_count()

    def indices(self, limit: int | None = None) -> list[int]:
        """Set bits in ascending order, ignoring indices >= ``limit`` (or size)."""
        limit = self.size if limit is None else min(limit, self.size)
        v = self._int()
        if limit < len(self.buf) * 8:
            v &= (1 << limit) - 1
        out = []
        while v:
            low = v & -v
            out.append(low.bit_length() - 1)
            v ^= low
        return out

    __iter__ = lambda self: iter(self.indices())  # noqa: E731

    def __repr__(self) -> str:
        return f"BitSet({self.size}, {self.indices()})"
