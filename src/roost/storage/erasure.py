"""The erasure-coding backend: pyeclib over liberasurecode with ISA-L, loaded with care.

What is installed where (pyeclib 1.8): the manylinux wheels for x86_64 and aarch64 bundle
liberasurecode and ISA-L under ``pyeclib.libs/`` (as ``liberasurecode-pyeclib.so.1`` and
``libisal-pyeclib.so.2``), so ``pip install pyeclib`` is all those machines need. Elsewhere
pip builds pyeclib from source against Debian's ``liberasurecode-dev``; liberasurecode
then ``dlopen``s ISA-L (``libisal.so.2``) the first time a coder asks for an ``isa_l_*``
backend, and Debian's ``liberasurecode1`` only *suggests* ``libisal2``, so a machine can
import pyeclib and still have no backend. Each of those cases is one
``StorageBackendError`` line naming the package, never a traceback.

glibc and big buffers: pyeclib allocates fresh fragment buffers on every call. With
glibc's default (dynamic) mmap and trim thresholds every 1 MiB segment is served by a
new ``mmap`` and handed back at once, and the page faults make ISA-L ~25× slower than it
is (~330 MB/s instead of ~8 GB/s at 4+4 on the project's machine). ``tune_malloc`` keeps
such buffers on the heap so they are reused; the codec's worker processes call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import TYPE_CHECKING

from roost.errors import StorageBackendError

if TYPE_CHECKING:
    from pyeclib.ec_iface import ECDriver

EC_TYPE = "isa_l_rs_vand_inv"
"""The backend Roost codes with: Reed-Solomon over a Vandermonde matrix made systematic by
inversion, MDS for every k and m (plain ``isa_l_rs_vand`` is not beyond 4 parity shares)."""

CODECS = (EC_TYPE, "isa_l_rs_cauchy")
"""The erasure codes a manifest may name. Cauchy is MDS too, and is what a pyeclib built
against an older liberasurecode (Debian 12 has 1.6.2; ``_vand_inv`` came in 1.7) offers."""

MAX_SHARES = 32
"""liberasurecode's ISA-L backends take at most 32 fragments (k + m)."""

_PACKAGES = {
    # backend prefix: (library liberasurecode dlopens, Debian package that has it)
    "isa_l": ("libisal.so.2", "libisal2"),
    "jerasure": ("libJerasure.so.2", "libjerasure2"),
}

_INSTALL = "or run scripts/setup"


def _import_error(err: ImportError) -> StorageBackendError:
    if "liberasurecode" in str(err):
        return StorageBackendError(
            "pyeclib cannot load liberasurecode.so.1 (Debian: apt-get install liberasurecode1, "
            f"{_INSTALL})"
        )
    return StorageBackendError(f"pyeclib is not installed (pip install pyeclib, {_INSTALL})")


def _unavailable(ec_type: str) -> StorageBackendError:
    from pyeclib.ec_iface import check_backend_available
    from pyeclib_c import get_liberasurecode_version  # type: ignore[import-untyped]

    family = ec_type.partition("_rs_")[0]
    library, package = _PACKAGES.get(family, (ec_type, ec_type))
    if family == "isa_l" and check_backend_available("isa_l_rs_vand"):
        # ISA-L loads, so it is liberasurecode that does not know this backend.
        number: int = get_liberasurecode_version()
        version = f"{number >> 16}.{number >> 8 & 0xFF}.{number & 0xFF}"
        return StorageBackendError(
            f"pyeclib's liberasurecode {version} has no {ec_type} backend (new in 1.7): "
            "install pyeclib's wheel (x86_64, aarch64) or code with isa_l_rs_cauchy"
        )
    return StorageBackendError(
        f"pyeclib's erasure-coding backend {ec_type} is not available: {library} is "
        f"missing (Debian: apt-get install {package}, {_INSTALL})"
    )


@functools.lru_cache(maxsize=64)
def driver(k: int, m: int, ec_type: str = EC_TYPE) -> ECDriver:
    """A coder for ``k`` data and ``m`` parity fragments, one per process and shape."""
    try:
        from pyeclib.ec_iface import ECDriver, ECDriverError, check_backend_available
    except ImportError as err:
        raise _import_error(err) from err
    if not check_backend_available(ec_type):
        raise _unavailable(ec_type)
    try:
        return ECDriver(k=k, m=m, ec_type=ec_type)
    except ECDriverError as err:
        raise StorageBackendError(f"pyeclib cannot make a {k}+{m} {ec_type} coder: {err}") from err


@functools.cache
def tune_malloc() -> bool:
    """Keep big buffers on glibc's heap for reuse (see the module docstring).

    Returns whether it could (it is a no-op where the C library is not glibc). It changes
    the whole process, so it belongs in processes that code: the codec pool's workers, the
    benchmark, and the hub once its store is used (its routes call it). There pyeclib, the
    codec's shares, TLS and the body's chunks allocate buffers of 64 KiB to a few MiB per
    segment; glibc maps and unmaps each one, and the page faults cost the hub ~2–3 ms of
    kernel CPU per MB put (bench/storage_e2e.py: 5.4–6.7 ms/MB of kernel time without,
    3.1–3.6 with). The heap then keeps what the codec's working set was (a few MiB per
    thread), not more.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    # 32 MiB is the largest mmap threshold glibc takes on 64-bit; a segment's buffers are
    # far below it. Up to 256 MiB of free heap top is kept rather than given back.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
