"""Values of a published shard read with ``pread`` from its LMDB file, without a memory map.

Why not py-lmdb for the clip reads: py-lmdb touches every 4 KiB page of a value it returns
(its "preload", with the GIL released), and on a map opened without readahead each of
those touches is a synchronous 4 KiB disk read: a cold 23 kB frame cost ~6 of them, and a
store larger than memory read at a third of one file per frame's speed. With readahead on,
each touch reads the device's whole readahead window instead (8 MiB on the machine
measured), which thrashes once the page cache cannot hold the store. Here a lookup reads
the B-tree pages it walks (4 KiB each, kept in a bounded cache) and a value is one
``pread`` of exactly its bytes, announced to the kernel first (``posix_fadvise``
WILLNEED) so that the reads of a clip's frames are in flight together
(bench/bench_cold.py).

Only what the store writes is parsed: LMDB 0.9's data format (magic 0xBEEFC0DE, version 1)
on a 64-bit little-endian build, the main database only, plain byte-string keys in
LMDB's default order, no duplicates. :meth:`ShardPages.open` returns None for any other
file, and the caller reads it with py-lmdb as before. Every structural check that fails
on a damaged file raises :class:`PageFormatError`; every value the store returns is
checked against its CRC-32 anyway.
"""

from __future__ import annotations

import collections
import itertools
import os
import struct
import sys
from pathlib import Path

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16  # pgno (8), pad (2), flags (2), lower (2), upper (2)
NODE_HEADER = 8  # lo (2), hi (2), flags (2), key size (2)
P_BRANCH, P_LEAF, P_OVERFLOW, P_LEAF2 = 0x01, 0x02, 0x04, 0x20  # page flags (mp_flags)
F_BIGDATA = 0x01
INVALID_PAGE = 0xFFFFFFFFFFFFFFFF
#: B-tree pages a :class:`PageCache` keeps by default (4 KiB each plus the keys probed,
#: ~5 KiB in all: ~20 MB): the branch pages of every shard (a handful each) and the leaves
#: of the clips just read, across the shards of a store.
CACHED_PAGES = 4096


class PageCache:
    """The B-tree pages last used, shared by the shards of a store in one process (least
    recently used out first)."""

    def __init__(self, capacity: int = CACHED_PAGES) -> None:
        self.capacity = capacity
        self._pages: collections.OrderedDict[tuple[int, int], _Page] = collections.OrderedDict()

    def get(self, key: tuple[int, int]) -> _Page | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: tuple[int, int], page: _Page) -> None:
        self._pages[key] = page
        if len(self._pages) > self.capacity:
            self._pages.popitem(last=False)


_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_NODE = struct.Struct("<HHHH")
_HEADER = struct.Struct("<QHHHH")
_READERS = itertools.count()


class PageFormatError(ValueError):
    """The shard file is not the LMDB structure it claims to be (a damaged page)."""


def _pread(fd: int, length: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise PageFormatError(
            f"{what} at byte {offset:,} ends past the end of the file ({len(data)} of "
            f"{length} bytes read): the file is truncated"
        )
    return data


class ShardPages:
    """Read-only, lookup-by-key access to one shard file through ``pread``. Not shared
    across processes: a forked child opens its own (the store does)."""

    def __init__(
        self, path: Path, fd: int, page_size: int, root: int, pages: int, cache: PageCache
    ) -> None:
        self.path, self.fd = path, fd
        self.page_size, self.root, self.pages = page_size, root, pages
        self._cache = cache
        self._id = next(_READERS)  # its pages' keys in the shared cache

    @classmethod
    def open(cls, path: str | Path, cache: PageCache | None = None) -> ShardPages | None:
        """The shard at ``path``, or None when its file is not the format parsed here;
        ``cache``: where its B-tree pages are kept (shared with other shards)."""
        if sys.byteorder != "little" or struct.calcsize("P") != 8:
            return None
        path = Path(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # A value is read once: no speculative reads around it.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            meta = _best_meta(fd)
            if meta is None:
                os.close(fd)
                return None
            page_size, root, last_page = meta
            pages = os.fstat(fd).st_size // page_size
            if last_page >= pages:
                raise PageFormatError(
                    f"LMDB's last page {last_page} is past the file's {pages} pages: the "
                    f"file is truncated"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, page_size, root, pages, cache or PageCache())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------------ lookups

    def locate(self, key: bytes) -> tuple[int, int] | None:
        """(file offset, length) of the value of ``key``; None when the key is absent."""
        return self._descend(key)[0]

    def _descend(self, key: bytes) -> tuple[tuple[int, int] | None, _Page | None]:
        """The value's place (None: absent) and the leaf page the search ended in."""
        if self.root == INVALID_PAGE:
            return None, None
        number = self.root
        for _ in range(64):  # deeper than any real tree: a cycle in a damaged file
            page = self._page(number)
            i, exact = _search(page, key)
            if page.branch:
                # mdb_page_search_root: the last node not above ``key``.
                if i >= page.count:
                    i = page.count - 1
                elif not exact:
                    i -= 1
                number = page.target(i)  # type: ignore[assignment]
                continue
            return (page.target(i) if exact else None), page  # type: ignore[return-value]
        raise PageFormatError("the B-tree is deeper than 64 levels (a cycle)")

    def locate_many(self, keys: list[bytes]) -> list[tuple[int, int] | None]:
        """:meth:`locate` of each of ``keys``; a key within the keys of the leaf the previous
        one was found in is searched there alone (a clip's frames share a leaf or two)."""
        out: list[tuple[int, int] | None] = []
        leaf: _Page | None = None
        for key in keys:
            if leaf is not None and _within(leaf, key):
                i, exact = _search(leaf, key)
                out.append(leaf.target(i) if exact else None)  # type: ignore[arg-type]
                continue
            where, leaf = self._descend(key)
            out.append(where)
        return out

    def get(self, key: bytes) -> bytes | None:
        where = self.locate(key)
        return None if where is None else self.read(*where)

    def advise(self, spans: list[tuple[int, int]]) -> None:
        """Start reading the byte ranges ``spans`` (offset, length) in the background."""
        for offset, length in spans:
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def read(self, offset: int, length: int) -> bytes:
        return _pread(self.fd, length, offset, "a value")

    # ------------------------------------------------------------------ pages

    def _page(self, number: int) -> _Page:
        page = self._cache.get((self._id, number))
        if page is not None:
            return page
        if number >= self.pages:
            raise PageFormatError(f"a node points to page {number}, past the file's {self.pages}")
        raw = _pread(self.fd, self.page_size, number * self.page_size, f"page {number}")
        page = _Page(raw, number, self.page_size, self.pages)
        self._cache.put((self._id, number), page)
        return page


class _Page:
    """A branch or leaf page: its node table read at once, each node only when a search
    probes it (as LMDB reads them: a malformed node is an error only when probed, and a
    lookup costs a few probes, not a parse of the page's hundred nodes)."""

    __slots__ = (
        "raw",
        "number",
        "branch",
        "count",
        "offsets",
        "page_size",
        "pages",
        "_keys",
        "_targets",
    )

    def __init__(self, raw: bytes, number: int, page_size: int, pages: int) -> None:
        self.raw, self.number, self.page_size, self.pages = raw, number, page_size, pages
        _, _, flags, lower, _ = _HEADER.unpack_from(raw)
        if flags & P_BRANCH:
            self.branch = True
        elif flags & P_LEAF and not flags & P_LEAF2:
            self.branch = False
        else:
            raise PageFormatError(f"page {number} is neither a branch nor a leaf page")
        if not PAGE_HEADER <= lower <= page_size or (lower - PAGE_HEADER) % 2:
            raise PageFormatError(f"page {number} has a bad node table (lower {lower})")
        self.count = (lower - PAGE_HEADER) // 2
        if self.branch and self.count < 2:
            raise PageFormatError(f"branch page {number} has {self.count} node(s)")
        self.offsets = struct.unpack_from(f"<{self.count}H", raw, PAGE_HEADER)
        self._keys: dict[int, bytes] = {}
        self._targets: dict[int, int | tuple[int, int]] = {}

    def _node(self, i: int) -> tuple[int, int, int, int, int]:
        """(lo, hi, flags, key size, node offset) of node ``i``."""
        offset = self.offsets[i]
        if offset < PAGE_HEADER or offset + NODE_HEADER > self.page_size:
            raise PageFormatError(f"page {self.number}: node {i} lies outside the page")
        lo, hi, flags, ksize = _NODE.unpack_from(self.raw, offset)
        if offset + NODE_HEADER + ksize > self.page_size:
            raise PageFormatError(f"page {self.number}: node {i}'s key runs past the page")
        return lo, hi, flags, ksize, offset

    def key(self, i: int) -> bytes:
        key = self._keys.get(i)
        if key is None:
            *_, ksize, offset = self._node(i)
            key = self._keys[i] = self.raw[offset + NODE_HEADER : offset + NODE_HEADER + ksize]
        return key

    def target(self, i: int) -> int | tuple[int, int]:
        """Node ``i``'s child page (branch) or value's (file offset, length) (leaf)."""
        where = self._targets.get(i)
        if where is not None:
            return where
        lo, hi, flags, ksize, offset = self._node(i)
        if self.branch:
            where = self._targets[i] = lo | hi << 16 | flags << 32
            return where
        where = _value(
            self.raw, self.number, self.page_size, self.pages,
            offset + NODE_HEADER + ksize, lo | hi << 16, flags,
        )  # fmt: skip
        if isinstance(where, str):
            raise PageFormatError(f"page {self.number}: {where}")
        self._targets[i] = where
        return where


def _value(
    raw: bytes, number: int, page_size: int, pages: int, data: int, size: int, flags: int
) -> tuple[int, int] | str:
    """Where a leaf node's value lies in the file, or what is wrong with the node. As in
    ``mdb_node_read``, only F_BIGDATA counts: the main database of a shard has neither
    sub-databases nor duplicates, and LMDB ignores those flags there."""
    if not flags & F_BIGDATA:
        if data + size > page_size:
            return "a value runs past the page"
        return number * page_size + data, size
    if data + 8 > page_size:
        return "an overflow pointer runs past the page"
    (first,) = struct.unpack_from("<Q", raw, data)
    if first >= pages or first * page_size + PAGE_HEADER + size > pages * page_size:
        return "a value's pages lie past the end of the file"
    return first * page_size + PAGE_HEADER, size


def _within(leaf: _Page, key: bytes) -> bool:
    """Whether ``key`` lies between the first and last keys of ``leaf`` (False when either
    node is malformed: the lookup then descends from the root, as LMDB's would)."""
    try:
        return leaf.count > 0 and leaf.key(0) <= key <= leaf.key(leaf.count - 1)
    except PageFormatError:
        return False


def _search(page: _Page, key: bytes) -> tuple[int, bool]:
    """LMDB's ``mdb_node_search``, probe for probe (so that a damaged page routes a lookup
    exactly as LMDB, and so epic-check, would): the first node whose key is not below
    ``key`` (the node count when none), and whether it equals ``key``. A branch page's
    node 0 has no key and is not searched."""
    low, high = (1 if page.branch else 0), page.count - 1
    keys = page._keys  # the probed keys, kept: the hot loop of every clip read
    i, order = 0, 0
    while low <= high:
        i = (low + high) >> 1
        node_key = keys.get(i)
        if node_key is None:
            node_key = page.key(i)
        if key == node_key:
            order = 0
            break
        if key > node_key:
            order, low = 1, i + 1
        else:
            order, high = -1, i - 1
    if order > 0:
        i += 1
    return i, order == 0


def _best_meta(fd: int) -> tuple[int, int, int] | None:
    """(page size, root page, last page) of the newer valid meta page; None when the file is
    not LMDB 0.9's format with a plain main database."""
    head = os.pread(fd, PAGE_HEADER + _META.size, 0)
    if len(head) < PAGE_HEADER + _META.size:
        return None
    first = _META.unpack_from(head, PAGE_HEADER)
    magic, version = first[0], first[1]
    if magic != MAGIC or version != DATA_VERSION:
        return None
    page_size = first[4]  # the free database's md_pad holds the page size
    second = os.pread(fd, PAGE_HEADER + _META.size, page_size)
    metas = [first]
    if len(second) == PAGE_HEADER + _META.size:
        other = _META.unpack_from(second, PAGE_HEADER)
        if other[0] == MAGIC and other[1] == DATA_VERSION:
            metas.append(other)
    meta = max(metas, key=lambda m: m[-1])  # the newer transaction
    main_flags, main_root = meta[13], meta[19]
    if main_flags != 0 or page_size < 512 or page_size & (page_size - 1):
        return None
    return page_size, main_root, meta[-2]
