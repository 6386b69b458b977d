"""The erasure-coding backend: a backend that cannot be loaded is one line that names the
package to install, never a traceback from pyeclib."""

from __future__ import annotations

import subprocess
import sys

import pytest

from roost.errors import StorageBackendError
from roost.storage.erasure import CODECS, driver, tune_malloc


def test_the_backends_roost_codes_with_load() -> None:
    for codec in CODECS:
        assert driver(4, 4, codec).k == 4


def test_a_backend_whose_library_is_missing_names_the_package() -> None:
    # pyeclib's wheel bundles ISA-L but not Jerasure: a real missing library here.
    with pytest.raises(StorageBackendError) as caught:
        driver(4, 4, "jerasure_rs_vand")
    assert str(caught.value) == (
        "pyeclib's erasure-coding backend jerasure_rs_vand is not available: "
        "libJerasure.so.2 is missing (Debian: apt-get install libjerasure2, or run scripts/setup)"
    )


def test_pyeclib_missing_is_one_line() -> None:
    # A fresh interpreter where pyeclib cannot be imported, as on a machine without it.
    code = (
        "import sys; sys.modules['pyeclib'] = None\n"
        "from roost.errors import StorageBackendError\n"
        "from roost.storage.erasure import driver\n"
        "try:\n"
        "    driver(4, 4)\n"
        "except StorageBackendError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "pyeclib is not installed (pip install pyeclib, or run scripts/setup)\n"
    assert out.stderr == ""


def test_malloc_is_tuned_where_glibc_is() -> None:
    assert tune_malloc() is True
