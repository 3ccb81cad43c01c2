"""Unpickling files from elsewhere (``epic-validate --predictions``) without running code.

A pickle names the functions that rebuild its objects, and ``pickle.load`` calls them: a
crafted file runs ``os.system``. The :class:`Unpickler` here resolves only the globals the
official predictions formats hold and refuses every other one (:class:`RefusedGlobal`),
before anything is called:

- C1's ``test.py`` writes a plain pickle (a dict of numpy arrays, often named ``.pt``);
- C1's ``fuse.py`` and ``torch.save`` write a zip (``PK\\x03\\x04``) around a pickle of
  lists, dicts, numpy arrays and scalars, or torch tensors;
- ``torch.save(..., _use_new_zipfile_serialization=False)`` writes the legacy format: a
  plain pickle of a magic number, then the data.

Allowed: dicts, lists, tuples, sets, strings, bytes, numbers, ``collections.OrderedDict``,
numpy arrays, dtypes and scalars (under numpy 1's ``numpy.core`` and numpy 2's
``numpy._core`` module paths alike: a file pickled under one loads under the other), torch
tensors, parameters and dtypes. The module is its own ``pickle_module`` for ``torch.load``
(it has ``Unpickler`` and ``load``), which works from torch 2.1 on, where
``add_safe_globals`` does not exist yet.

A lenient mode (``load_file(path, lenient=True)``, for ``epic-train --weights``) reads the
C1 model-zoo checkpoints: PyTorch Lightning files that pickle their Hydra config
(``omegaconf.DictConfig``) and callback states beside the weights. Globals of
:data:`INERT_MODULES` become :class:`InertStub` classes made here, which store what the
pickle gives them as plain data and run nothing (the module is never imported); a few
inert builtins and containers are allowed as themselves (:data:`LENIENT_GLOBALS`); every
other global is still refused. The strict mode is unchanged.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import pickle
import sys
import types
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

#: The first bytes of a zip file (every ``torch.save`` since torch 1.6).
ZIP_MAGIC = b"PK\x03\x04"
#: The first object of a legacy (pre-zip) ``torch.save`` file.
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed ones (``module``, ``name``)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name} is not allowed")
        self.module = module
        self.name = name


@functools.cache
def allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> the object, for every global the unpickler resolves.

    The numpy functions are taken from the installed numpy by what its objects pickle to,
    so that both module paths map to the same, installed, function.
    """
    array = np.zeros(1, dtype=np.float32)
    reconstruct = array.__reduce__()[0]  # numpy{,._core}.multiarray._reconstruct
    frombuffer = array.__reduce_ex__(5)[0]  # numpy{,._core}.numeric._frombuffer (protocol 5)
    scalar = np.float32(0).__reduce__()[0]  # numpy{,._core}.multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # bytes, as protocol 2 writes them
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    if hasattr(torch._utils, "_rebuild_tensor_v3"):  # newer torch: dtypes without a storage
        allowed[("torch._utils", "_rebuild_tensor_v3")] = torch._utils._rebuild_tensor_v3
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes call it (latin-1 only)."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal("_codecs", f"encode(..., {encoding!r})")
    return text.encode("latin1")


class Unpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :func:`allowed_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's) name Python 2 modules (``__builtin__``), which
        # pickle's own find_class maps to Python 3's: the same mapping, here.
        key = _compat_pickle.NAME_MAPPING.get((module, name))
        if key is None:
            key = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        try:
            return allowed_globals()[key]
        except (KeyError, TypeError):  # TypeError: a name that is not a string
            raise RefusedGlobal(str(key[0]), str(key[1])) from None


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler` (``torch.load`` calls it as
    ``pickle_module.load`` for the legacy format's header)."""
    return Unpickler(file, **kwargs).load()


def load_file(path: str | Path, *, lenient: bool = False) -> Any:
    """The object in ``path``: a plain pickle, a ``torch.save`` zip or a legacy
    ``torch.save`` file, told apart by their first bytes, never by the suffix.

    ``lenient``: through :class:`LenientUnpickler` (framework objects become inert stubs).
    Raises :class:`RefusedGlobal` for a global outside the allowed ones, and whatever
    unpickling or ``torch.load`` raises for a damaged file.
    """
    path = Path(path)
    pickle_module = LENIENT if lenient else sys.modules[__name__]
    with path.open("rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            handle.seek(0)
            data = pickle_module.load(handle)
            if not _is_legacy_magic(data):
                return data
    if head == ZIP_MAGIC:
        _require_torch_save_zip(path)
    return torch.load(path, map_location="cpu", pickle_module=pickle_module, weights_only=False)


def _is_legacy_magic(data: Any) -> bool:
    return type(data) is int and data == LEGACY_TORCH_MAGIC


def _require_torch_save_zip(path: Path) -> None:
    """Refuse a zip that is not a ``torch.save`` file: ``torch.load`` hands a TorchScript
    archive (it holds ``constants.pkl``) to ``torch.jit.load``, which runs its code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise pickle.UnpicklingError(f"a damaged zip file ({exc})") from None
    parts = [name.split("/") for name in names]
    if any(p[-1] == "constants.pkl" for p in parts) or not any(
        len(p) == 2 and p[1] == "data.pkl" for p in parts
    ):
        raise pickle.UnpicklingError(
            "a zip file that is not a torch.save file (a TorchScript archive or another zip)"
        )


# ----------------------------------------------------------------------------- lenient mode

#: Top-level packages whose globals a lenient load turns into :class:`InertStub` classes:
#: the framework objects a Lightning checkpoint pickles beside its ``state_dict``, none of
#: which a weights loader needs. ``omegaconf``: the Hydra config (``DictConfig``, its nodes
#: and metadata) C1 saves as ``hyper_parameters``; ``pytorch_lightning``, ``lightning``
#: (its name from 2.0), ``lightning_fabric``, ``lightning_utilities``: ``AttributeDict``
#: hyper-parameters, callback states, trainer enums; ``typing``: ``typing.Any``, omegaconf's
#: ``ref_type``/``key_type``; ``pathlib``: paths in callback states and configs;
#: ``argparse``: the ``Namespace`` of argparse-driven hyper-parameters. ``enum`` is not
#: needed (an enum member pickles under its own class's module, one of these). Modules
#: that reach the system (``os``, ``subprocess``, ``builtins.eval``) are refused even so.
INERT_MODULES = frozenset(
    {
        "omegaconf",
        "pytorch_lightning",
        "lightning",
        "lightning_fabric",
        "lightning_utilities",
        "typing",
        "pathlib",
        "argparse",
    }
)

#: Real objects a lenient load resolves besides :func:`allowed_globals`: types as values
#: (omegaconf's ``object_type`` is ``dict``), ``collections.Counter`` (MultiStepLR's
#: milestones in ``lr_schedulers``) and ``collections.defaultdict`` (omegaconf 2.0's
#: resolver cache). Calling any of them builds an empty container or a number, nothing more.
LENIENT_GLOBALS: dict[tuple[str, str], Any] = {
    **{("builtins", t.__name__): t for t in (dict, list, tuple, str, int, float, bool)},
    ("collections", "Counter"): collections.Counter,
    ("collections", "defaultdict"): collections.defaultdict,
}


class InertStub:
    """Stands for a class or function of :data:`INERT_MODULES`. Calling it (``REDUCE``),
    ``NEWOBJ``, ``BUILD``, ``SETITEMS`` and ``APPENDS`` only store their arguments:
    ``args``, ``kwargs``, ``state``, ``items``, ``elements``."""

    stub_of = ""  # "module.name" of the global it stands for

    def __new__(cls, *args: Any, **kwargs: Any) -> InertStub:
        obj = super().__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.elements = None, {}, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<inert stub of {self.stub_of}>"


@functools.cache
def inert_class(module: str, name: str) -> type[InertStub]:
    """A new :class:`InertStub` subclass named after ``module.name`` (never imported)."""
    return type(
        name.rpartition(".")[2] or "stub",
        (InertStub,),
        {"__module__": module, "__qualname__": name, "stub_of": f"{module}.{name}"},
    )


class LenientUnpickler(Unpickler):
    """:class:`Unpickler` that also resolves :data:`LENIENT_GLOBALS` and turns globals of
    :data:`INERT_MODULES` into :func:`inert_class` stubs; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except RefusedGlobal as refused:
            if type(module) is not str or type(name) is not str:
                raise
            key = (refused.module, refused.name)  # after the Python 2 name mapping
            if key in LENIENT_GLOBALS:
                return LENIENT_GLOBALS[key]
            if key[0].split(".")[0] in INERT_MODULES:
                return inert_class(*key)
            raise


def _lenient_load(file: IO[bytes], **kwargs: Any) -> Any:
    return LenientUnpickler(file, **kwargs).load()


#: The ``pickle_module`` of a lenient :func:`load_file` (``torch.load`` uses its
#: ``Unpickler``, ``load`` and ``__name__``).
LENIENT = types.SimpleNamespace(
    __name__=f"{__name__}.lenient", Unpickler=LenientUnpickler, load=_lenient_load
)
