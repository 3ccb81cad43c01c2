"""Values of a published shard read with ``pread`` from its LMDB file, without a memory map.

Why not py-lmdb for the clip reads: py-lmdb touches every 4 KiB page of a value it returns
(its "preload", with the GIL released), and on a map opened without readahead each of
those touches is a synchronous 4 KiB disk read: a cold 23 kB frame cost ~6 of them, and a
store larger than memory read at a third of one file per frame's speed. With readahead on,
each touch reads the device's whole readahead window instead (8 MiB on the machine
measured), which thrashes once the page cache cannot hold the store. Here a lookup reads
the B-tree pages it walks (kept in a bounded cache) and a value is one ``pread`` of exactly
its bytes, announced to the kernel first (``posix_fadvise`` WILLNEED, where the platform
has it) so that the reads of a clip's frames are in flight together (bench/bench_cold.py).

Why no map at all: through a map, a damaged page can send a read past the end of the file,
and the kernel kills the process with SIGBUS (a node offset changed in a shard's root page,
the file's last page, killed epic-train that way, with no message). A ``pread`` past the
end returns short, which is an error here. Metadata and frames alike are read this way
(epicdata.store), and so is epic-check: one reader, one verdict.

Only what the store writes is parsed: LMDB 0.9's data format (magic 0xBEEFC0DE, version 1)
on a 64-bit little-endian build, the main database only, plain byte-string keys in LMDB's
default order, no duplicates. :meth:`ShardPages.open_or_reason` says why for any other file
(another data version, a main database with flags), and the caller reads it with py-lmdb.

A lookup is LMDB's ``mdb_get`` (lib/mdb.c of py-lmdb, with its CVE patches in
lib/py-lmdb/): it reads the fields LMDB reads, in the same order, and accepts what LMDB
accepts, so a damaged page gives the verdict LMDB gives. Where LMDB reads outside the page
it was given (a node, a key, an inline value or a node table past the page's end, a value
past the last page), its answer is another page's bytes or SIGBUS: this reader raises
:class:`PageFormatError` there instead. Every value the store returns is checked against
its CRC-32 or parsed besides.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import os
import struct
import sys
from pathlib import Path

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16  # pgno (8), pad (2), flags (2), lower (2), upper (2): PAGEHDRSZ
NODE_HEADER = 8  # lo (2), hi (2), flags (2), key size (2): NODESIZE
# Page flags (mp_flags).
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_DIRTY, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# Node flags (mn_flags) of a leaf node.
F_BIGDATA, F_DUPDATA = 0x01, 0x04
INVALID_PAGE = 0xFFFFFFFFFFFFFFFF
#: LMDB 0.9's MAX_PAGESIZE (PAGEBASE 0): a file it creates takes the OS page size up to this
#: (16 KiB on some aarch64 machines; 64 KiB ones get 32 KiB), and py-lmdb's patch for
#: CVE-2019-16228 refuses a meta page stating more.
MAX_PAGE_SIZE = 0x8000
#: Branch levels a lookup descends at most: past this a damaged tree has a cycle (LMDB's
#: cursor stops at 32, CURSOR_STACK; real trees are a few levels deep).
MAX_LOOKUP_DEPTH = 64
#: Bytes of B-tree pages a :class:`PageCache` keeps by default (about twice that in memory
#: with their parsed keys): the branch pages of every shard (a handful each) and the leaves
#: of the clips just read, across the shards of a store, whatever the file's page size.
CACHED_BYTES = 16 << 20


class PageCache:
    """The B-tree pages last used, shared by the shards of a store in one process (least
    recently used out first), up to ``capacity_bytes`` of page bytes."""

    def __init__(self, capacity_bytes: int = CACHED_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self._bytes = 0
        self._pages: collections.OrderedDict[tuple[int, int], _Page] = collections.OrderedDict()

    def get(self, key: tuple[int, int]) -> _Page | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: tuple[int, int], page: _Page) -> None:
        old = self._pages.pop(key, None)
        if old is not None:
            self._bytes -= len(old.raw)
        self._pages[key] = page
        self._bytes += len(page.raw)
        while self._bytes > self.capacity_bytes and len(self._pages) > 1:
            _, out = self._pages.popitem(last=False)
            self._bytes -= len(out.raw)


_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_NODE = struct.Struct("<HHHH")
_HEADER = struct.Struct("<QHHHH")
_READERS = itertools.count()


class PageFormatError(ValueError):
    """The shard file is not the LMDB structure it claims to be (a damaged page)."""


class ShardTruncatedError(PageFormatError):
    """The file is shorter than the pages its meta page says it holds."""


def _pread(fd: int, length: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise PageFormatError(
            f"{what} at byte {offset:,} ends past the end of the file ({len(data)} of "
            f"{length} bytes read): the file is truncated"
        )
    return data


def fadvise(fd: int, offset: int, length: int, advice: str) -> None:
    """``posix_fadvise(fd, offset, length, os.POSIX_FADV_<advice>)`` where the platform has
    it: a hint, so skipped where it is missing (macOS's CPython has none) or refused."""
    call = getattr(os, "posix_fadvise", None)
    if call is None:
        return
    with contextlib.suppress(OSError):  # a file system without the hint reads without it
        call(fd, offset, length, getattr(os, f"POSIX_FADV_{advice}"))


_PROBE = bytearray(4096)


def in_page_cache(fd: int, offset: int) -> bool:
    """Whether the page at ``offset`` is in the page cache: a read that may not wait for the
    disk (``preadv2`` with RWF_NOWAIT, Linux 4.14 on) got it. False where it cannot tell."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        return os.preadv(fd, [_PROBE], offset, flag) > 0
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: a file system without it
        return False


class ShardPages:
    """Read-only, lookup-by-key access to one shard file through ``pread``. Not shared
    across processes: a forked child opens its own (the store does)."""

    def __init__(
        self,
        path: Path,
        fd: int,
        page_size: int,
        root: int,
        pages: int,
        cache: PageCache,
        file_pages: int | None = None,
    ) -> None:
        self.path, self.fd = path, fd
        #: ``pages``: LMDB's page count (the meta page's last page + 1); LMDB finds no page at
        #: or past it (``mdb_page_get``). ``file_pages``: the pages the file holds.
        self.page_size, self.root, self.pages = page_size, root, pages
        self.file_pages = pages if file_pages is None else file_pages
        self._cache = cache
        self._id = next(_READERS)  # its pages' keys in the shared cache
        #: The readahead windows already announced to the kernel, and the thread reading
        #: the whole file ahead (epicdata.store, for a store that fits in memory).
        self.windows: set[int] = set()
        self.read_ahead: object = None

    @classmethod
    def open(
        cls, path: str | Path, cache: PageCache | None = None, *, sequential: bool = False
    ) -> ShardPages | None:
        """:meth:`open_or_reason`, None for a file that is not the format parsed here."""
        opened = cls.open_or_reason(path, cache, sequential=sequential)
        return None if isinstance(opened, str) else opened

    @classmethod
    def open_or_reason(
        cls, path: str | Path, cache: PageCache | None = None, *, sequential: bool = False
    ) -> ShardPages | str:
        """The shard at ``path``, or why its file is not the format parsed here (then
        py-lmdb may read it); ``cache``: where its B-tree pages are kept (shared with other
        shards); ``sequential``: the whole file will be read in order (readahead on), not
        clips (off). Raises :class:`PageFormatError` for a file LMDB refuses too (damaged or
        not LMDB's), :class:`ShardTruncatedError` for one shorter than its meta page says,
        OSError when it cannot be opened."""
        if sys.byteorder != "little" or struct.calcsize("P") != 8:
            return "the page reader parses LMDB files of 64-bit little-endian machines only"
        path = Path(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            # A clip's value is read once: no speculative reads around it.
            fadvise(fd, 0, 0, "SEQUENTIAL" if sequential else "RANDOM")
            meta = _best_meta(fd)
            if isinstance(meta, str):
                os.close(fd)
                return meta
            page_size, root, last_page = meta
            file_pages = os.fstat(fd).st_size // page_size
            if last_page >= file_pages:
                raise ShardTruncatedError(
                    f"LMDB's last page {last_page} is past the file's {file_pages} pages: the "
                    f"file is truncated"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, page_size, root, last_page + 1, cache or PageCache(), file_pages)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------------ lookups

    def locate(self, key: bytes) -> tuple[int, int] | None:
        """(file offset, length) of the value of ``key``; None when the key is absent."""
        return self._lookup(key)[0]

    def _descend(self, key: bytes) -> tuple[tuple[int, int] | None, _Page | None]:
        """The value's place (None: absent) and the leaf page the search ended in."""
        where, leaf, _ = self._lookup(key)
        return where, leaf

    def _lookup(self, key: bytes) -> tuple[tuple[int, int] | None, _Page | None, _Span | None]:
        """LMDB's ``mdb_page_search`` and ``mdb_node_search`` for ``key``: the value's place
        (None: absent), the leaf the search ended in, and the keys that reach that leaf
        the same way (None: a page on the way is damaged, so no other key is known to)."""
        if self.root == INVALID_PAGE:  # an empty tree: MDB_NOTFOUND
            return None, None, None
        number, span = self.root, _Span(None, None)
        for _ in range(MAX_LOOKUP_DEPTH):
            page = self._page(number)
            if not page.branch:
                i, exact = _search(page, key)
                return (page.target(i) if exact else None), page, span  # type: ignore[return-value]
            separators = page.separators()
            if separators is None:
                i, span = _route(page, key), None
            else:
                # On a page whose keys are in order, LMDB's binary search ends at the last
                # node whose key is not above ``key`` (node 0 has none: below every key).
                i = bisect.bisect_right(separators, key)
                if span is not None:
                    span = span.within(
                        separators[i - 1] if i > 0 else None,
                        separators[i] if i < len(separators) else None,
                    )
            number = page.target(i)  # type: ignore[assignment]
        raise PageFormatError(f"the B-tree is deeper than {MAX_LOOKUP_DEPTH} levels (a cycle)")

    def locate_many(self, keys: list[bytes]) -> list[tuple[int, int] | None]:
        """:meth:`locate` of each of ``keys``; a key that the pages above the previous key's
        leaf route to that leaf is searched there alone (a clip's frames share a leaf or
        two): the same answer as a lookup from the root, damaged pages included."""
        out: list[tuple[int, int] | None] = []
        leaf: _Page | None = None
        span: _Span | None = None
        for key in keys:
            if leaf is not None and span is not None and span.holds(key):
                i, exact = _search(leaf, key)
                out.append(leaf.target(i) if exact else None)  # type: ignore[arg-type]
                continue
            where, leaf, span = self._lookup(key)
            out.append(where)
        return out

    def get(self, key: bytes) -> bytes | None:
        where = self.locate(key)
        return None if where is None else self.read(*where)

    def advise(self, spans: list[tuple[int, int]]) -> None:
        """Start reading the byte ranges ``spans`` (offset, length) in the background."""
        if not hasattr(os, "posix_fadvise"):
            return
        for offset, length in spans:
            fadvise(self.fd, offset, length, "WILLNEED")

    def read(self, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset`` (a span :meth:`locate` gave, or a part of one).
        Bytes that start right after a page's header are a large value's: its first
        overflow page's header is read with them, and its P_DIRTY flag checked, as
        ``mdb_page_get`` checks it (py-lmdb's patch for CVE-2019-16225). An inline value
        starts there only in a leaf whose node table is damaged, and then the header read is
        its leaf's, which passed the same check."""
        if offset % self.page_size != PAGE_HEADER:
            return _pread(self.fd, length, offset, "a value")
        data = _pread(self.fd, PAGE_HEADER + length, offset - PAGE_HEADER, "a value")
        if data[10] & P_DIRTY:  # mp_flags, little-endian: its low byte
            raise PageFormatError(
                f"page {offset // self.page_size}, a value's first page, is marked dirty "
                f"(P_DIRTY), as no page on disk is"
            )
        return data[PAGE_HEADER:]

    # ------------------------------------------------------------------ pages

    def _page(self, number: int) -> _Page:
        page = self._cache.get((self._id, number))
        if page is not None:
            return page
        if number >= self.pages:  # mdb_page_get: pgno < mt_next_pgno (last page + 1)
            raise PageFormatError(
                f"a node points to page {number}, past LMDB's last page {self.pages - 1}"
            )
        raw = _pread(self.fd, self.page_size, number * self.page_size, f"page {number}")
        page = _Page(raw, number, self.page_size, self.pages)
        self._cache.put((self._id, number), page)
        return page


class _Span:
    """The keys from ``low`` (inclusive) to ``high`` (exclusive) that every branch page of
    a lookup's path routes as it routed that lookup's key (None: no bound)."""

    __slots__ = ("low", "high")

    def __init__(self, low: bytes | None, high: bytes | None) -> None:
        self.low, self.high = low, high

    def within(self, low: bytes | None, high: bytes | None) -> _Span:
        """This span narrowed to ``[low, high)``."""
        if low is None or (self.low is not None and self.low > low):
            low = self.low
        if high is None or (self.high is not None and self.high < high):
            high = self.high
        return _Span(low, high)

    def holds(self, key: bytes) -> bool:
        return (self.low is None or self.low <= key) and (self.high is None or key < self.high)


_UNPARSED = object()


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
        "_separators",
    )

    def __init__(self, raw: bytes, number: int, page_size: int, pages: int) -> None:
        self.raw, self.number, self.page_size, self.pages = raw, number, page_size, pages
        _, _, flags, lower, _ = _HEADER.unpack_from(raw)
        if flags & P_DIRTY:
            # py-lmdb's patch for CVE-2019-16225 in mdb_page_get: MDB_CORRUPTED.
            raise PageFormatError(f"page {number} is marked dirty (P_DIRTY), as no page on disk is")
        # mdb_page_search_root: a branch page is one with P_BRANCH set, whatever else is; the
        # page it leads to must then have P_LEAF (P_LEAF2 pages belong to DUPFIXED databases).
        if flags & P_BRANCH:
            self.branch = True
        elif flags & P_LEAF and not flags & P_LEAF2:
            self.branch = False
        else:
            raise PageFormatError(f"page {number} is neither a branch nor a leaf page")
        # NUMKEYS(p) is (mp_lower - PAGEHDRSZ) >> 1: an odd mp_lower counts the nodes below
        # it. Below the header or past the page, LMDB would read a node table that is not
        # there.
        if not PAGE_HEADER <= lower <= page_size:
            raise PageFormatError(f"page {number} has a bad node table (lower {lower})")
        self.count = (lower - PAGE_HEADER) >> 1
        if self.branch and self.count < 2:
            # mdb_page_search_root asserts NUMKEYS > 1 (LMDB aborts the process).
            raise PageFormatError(f"branch page {number} has {self.count} node(s)")
        self.offsets = struct.unpack_from(f"<{self.count}H", raw, PAGE_HEADER)
        self._keys: dict[int, bytes] = {}
        self._targets: dict[int, int | tuple[int, int]] = {}
        self._separators: object = _UNPARSED

    def _node(self, i: int) -> tuple[int, int, int, int, int]:
        """(lo, hi, flags, key size, node offset) of node ``i`` (``NODEPTR``: the page's
        address plus ``mp_ptrs[i]``, unchecked in LMDB: a node past the page is refused
        here)."""
        offset = self.offsets[i]
        if offset + NODE_HEADER > self.page_size:
            raise PageFormatError(f"page {self.number}: node {i} lies outside the page")
        lo, hi, flags, ksize = _NODE.unpack_from(self.raw, offset)
        return lo, hi, flags, ksize, offset

    def key(self, i: int) -> bytes:
        key = self._keys.get(i)
        if key is None:
            *_, ksize, offset = self._node(i)
            if offset + NODE_HEADER + ksize > self.page_size:
                raise PageFormatError(f"page {self.number}: node {i}'s key runs past the page")
            key = self._keys[i] = self.raw[offset + NODE_HEADER : offset + NODE_HEADER + ksize]
        return key

    def separators(self) -> list[bytes] | None:
        """The keys of a branch page's nodes 1, 2, ... when every one is well formed and each
        is above the one before: then a bisection routes every key as LMDB's binary search
        does. None for a page that is not so (damaged): its probes are then made one by
        one, as LMDB makes them."""
        if self._separators is _UNPARSED:
            try:
                keys = [self.key(i) for i in range(1, self.count)]
            except PageFormatError:
                keys = None
            if keys is not None and any(a >= b for a, b in itertools.pairwise(keys)):
                keys = None
            self._separators = keys
        return self._separators  # type: ignore[return-value]

    def target(self, i: int) -> int | tuple[int, int]:
        """Node ``i``'s child page (branch) or value's (file offset, length) (leaf)."""
        where = self._targets.get(i)
        if where is not None:
            return where
        lo, hi, flags, ksize, offset = self._node(i)
        if self.branch:
            # NODEPGNO: the child's number is in mn_lo, mn_hi and mn_flags; the key size is
            # not read (node 0 of a branch page has no key, and LMDB never reads its size).
            where = self._targets[i] = lo | hi << 16 | flags << 32
            return where
        if flags & F_DUPDATA:
            # mdb_cursor_set on a node with duplicates in a database without them: MDB_CORRUPTED
            # (py-lmdb's patch for CVE-2019-16227; unpatched LMDB crashes).
            raise PageFormatError(f"page {self.number}: node {i} says it holds duplicates")
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
    ``mdb_node_read``, only F_BIGDATA counts (F_SUBDATA is not read for the main database):
    a large value's first page number follows the key, and its bytes follow that page's
    header. ``pages``: LMDB's page count (``mdb_page_get`` finds no page past it)."""
    if not flags & F_BIGDATA:
        if data + size > page_size:
            return "a value runs past the page"
        return number * page_size + data, size
    if data + 8 > page_size:
        return "an overflow pointer runs past the page"
    (first,) = struct.unpack_from("<Q", raw, data)
    if first >= pages or first * page_size + PAGE_HEADER + size > pages * page_size:
        return "a value's pages lie past LMDB's last page"
    return first * page_size + PAGE_HEADER, size


def _search(page: _Page, key: bytes) -> tuple[int, bool]:
    """LMDB's ``mdb_node_search``, probe for probe (so that a damaged page routes a lookup
    exactly as LMDB would): the first node whose key is not below ``key`` (the node count
    when none), and whether it equals ``key``. A branch page's node 0 has no key and is not
    searched; an empty leaf finds nothing (``*exactp = rc == 0 && nkeys > 0``)."""
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
    return i, order == 0 and page.count > 0


def _route(page: _Page, key: bytes) -> int:
    """The node of branch ``page`` that ``mdb_page_search_root`` follows for ``key``: the
    one the search ended on when exact, the one before it when not, the last node when the
    search ran past them all."""
    i, exact = _search(page, key)
    if i >= page.count:
        return page.count - 1
    return i if exact else i - 1


def _check_page_size(page_size: int, where: str) -> None:
    """LMDB's page size rule for a meta page (py-lmdb's patch for CVE-2019-16228 in
    ``mdb_env_open2``: MDB_INVALID otherwise)."""
    if not 0 < page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise PageFormatError(
            f"{where} states a page size of {page_size} bytes (LMDB takes a power of two up to "
            f"{MAX_PAGE_SIZE})"
        )


def _meta_page(fd: int, index: int, offset: int) -> tuple[int, ...]:
    """The MDB_meta fields of meta page ``index``, read at ``offset`` and checked as
    ``mdb_env_read_header`` checks them (P_META, then the magic number)."""
    head = os.pread(fd, PAGE_HEADER + _META.size, offset)
    if len(head) < PAGE_HEADER + _META.size:
        what = "the file is empty" if not head and not offset else f"meta page {index} is cut short"
        raise PageFormatError(f"{what}: not an LMDB file, or a truncated one")
    flags = _HEADER.unpack_from(head)[2]
    if not flags & P_META:
        raise PageFormatError(f"page {index} is not an LMDB meta page (flags {flags:#x})")
    fields = _META.unpack_from(head, PAGE_HEADER)
    if fields[0] != MAGIC:
        raise PageFormatError(f"meta page {index} has no LMDB magic number ({fields[0]:#x})")
    return fields


def _best_meta(fd: int) -> tuple[int, int, int] | str:
    """(page size, main root page, last page) of the meta page LMDB reads from; why not
    (a str) when the file is LMDB's but not the format parsed here. Raises PageFormatError
    where LMDB refuses the file too.

    ``mdb_env_read_header`` reads meta page 1 at meta page 0's page size and refuses the
    file unless both are meta pages of its magic number and data version; the newer
    transaction's page is used, page 0 on a tie (``mdb_env_pick_meta``), page size included
    (``mdb_env_open2``)."""
    first = _meta_page(fd, 0, 0)
    if first[1] != DATA_VERSION:
        return f"it is LMDB data version {first[1]}, not {DATA_VERSION}"
    _check_page_size(first[4], "meta page 0")  # the free database's md_pad: the page size
    second = _meta_page(fd, 1, first[4])
    if second[1] != DATA_VERSION:
        raise PageFormatError(f"meta page 1 is of LMDB data version {second[1]}, page 0 of 1")
    meta = second if second[-1] > first[-1] else first
    _check_page_size(meta[4], f"meta page {int(meta is second)}")
    if meta[13] != 0:
        # py-lmdb writes every shard's main database with no flags (no duplicates, no
        # integer keys): others are a damaged meta page, not a format to hand to py-lmdb's
        # memory map in a reading process.
        raise PageFormatError(
            f"the meta page gives the main database flags {meta[13]:#x}; the store writes "
            f"none (a damaged meta page)"
        )
    return meta[4], meta[19], meta[20]


# ---- whole-shard walks (epic-check)
#
# epic-check reads every shard through ShardPages (opened with ``sequential=True``), as
# training does, so that "the check passes" means "every read succeeds" and a reader's
# failure is one the check names. What it needs beyond lookups: the file's length and key
# count as the meta page states them, and a walk of every key in key order.


class MainDatabase:
    """The main database as the newer meta page records it (the page ShardPages.open takes:
    the newer transaction, the older on a tie, as LMDB's ``mdb_env_pick_meta``)."""

    __slots__ = ("page_size", "root", "last_page", "entries")

    def __init__(self, page_size: int, root: int, last_page: int, entries: int) -> None:
        self.page_size, self.root, self.last_page = page_size, root, last_page
        #: ``md_entries``: the number of keys, which no lookup reads.
        self.entries = entries

    @property
    def bytes_needed(self) -> int:
        """The file's length through its last page: the length of a compacted copy, which
        is what epic-extract publishes."""
        return (self.last_page + 1) * self.page_size


def main_database(path: str | Path) -> MainDatabase | None:
    """What the newer meta page of the file at ``path`` says of the main database; None
    when page 0 is not an LMDB 0.9 meta page with a usable page size (then the file is not
    one ShardPages parses either). Meta page 1 is left out when it is not one (ShardPages
    refuses the file then, as LMDB does)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        first = _meta_fields(fd, 0)
        if first is None or not _usable_page_size(first[4]):
            return None
        second = _meta_fields(fd, first[4])  # the free database's md_pad: the page size
    finally:
        os.close(fd)
    metas = [first] if second is None else [first, second]
    meta = max(metas, key=lambda m: m[-1])  # the newer transaction; meta 0 on a tie
    if not _usable_page_size(meta[4]):
        return None
    return MainDatabase(meta[4], root=meta[19], last_page=meta[20], entries=meta[18])


def _usable_page_size(page_size: int) -> bool:
    return 512 <= page_size <= MAX_PAGE_SIZE and not page_size & (page_size - 1)


def _meta_fields(fd: int, offset: int) -> tuple[int, ...] | None:
    """The MDB_meta fields of the meta page at ``offset``; None when it is not LMDB 0.9's."""
    head = os.pread(fd, PAGE_HEADER + _META.size, offset)
    if len(head) < PAGE_HEADER + _META.size:
        return None
    fields = _META.unpack_from(head, PAGE_HEADER)
    return fields if (fields[0], fields[1]) == (MAGIC, DATA_VERSION) else None


def iter_keys(pages: ShardPages) -> collections.abc.Iterator[bytes]:
    """Every key of the shard in key order, walking the B-tree from its root with the
    lookups' page parser: what epic-check compares with the keys the metadata accounts for.

    Raises :class:`PageFormatError` on a damaged page (as soon as the walk meets it), on a
    page reached twice (a cycle, or two branches sharing a child), on a tree deeper than a
    lookup descends, and on a key not above the one before it: LMDB never writes one, and
    its binary search, which a lookup repeats, finds the keys of a page out of order or
    not depending on which nodes it probes."""
    if pages.root == INVALID_PAGE:
        return
    seen: set[int] = set()
    parents: list[tuple[_Page, int]] = []  # (branch page, index of the child being walked)
    previous: bytes | None = None
    number: int | None = pages.root
    while number is not None:
        if number in seen:
            raise PageFormatError(f"page {number} is reached twice in the B-tree (a cycle)")
        seen.add(number)
        page = pages._page(number)
        if page.branch:
            if len(parents) >= MAX_LOOKUP_DEPTH:
                raise PageFormatError(
                    f"the B-tree is deeper than {MAX_LOOKUP_DEPTH} levels (a cycle)"
                )
            if page.count == 0:
                raise PageFormatError(f"branch page {number} has no nodes")
            parents.append((page, 0))
            number = page.target(0)  # type: ignore[assignment]
            continue
        for i in range(page.count):
            key = page.key(i)
            if previous is not None and key <= previous:
                raise PageFormatError(
                    f"page {number}: key {i} {key!r} is not above the key before it "
                    f"{previous!r} (keys out of order)"
                )
            previous = key
            yield key
        number = _next_child(parents)


def _next_child(parents: list[tuple[_Page, int]]) -> int | None:
    """The page after the subtree just walked (None: the walk is over); ``parents`` is
    updated to lead to it."""
    while parents:
        page, i = parents.pop()
        if i + 1 < page.count:
            parents.append((page, i + 1))
            return page.target(i + 1)  # type: ignore[return-value]
    return None
