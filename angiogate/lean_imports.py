"""Importing pydicom and openvino without optional parts they load that angiogate never uses.

What `angiogate score FILE` spends its start on is mostly imports; two of
these libraries import, unasked, things the gate never calls:

* pydicom registers every pixel decoder and encoder plugin on import, which
  imports python-gdcm (a large SWIG library), and pydicom.data's downloader,
  which imports requests (with urllib3 and charset_normalizer) and tqdm: a
  quarter to a half of pydicom's import (0.09-0.27 s of 0.35-0.47 s on a
  loaded 2-core EPYC). The judge removes GDCM's decoders as soon as it is
  imported (`angiogate.clip.decode`: GDCM aborts the process on some corrupt
  data), so the decoders left are the same either way, and nothing
  downloads pydicom's test files. Only the RLE encoder loses its gdcm plugin.
* openvino imports its model converter (`openvino.tools.ovc`, with its
  telemetry) into its namespace: two thirds of its import (0.13-0.19 s of
  0.22-0.24 s, same machine). Serving only compiles and runs IRs; the one
  conversion (`exports.convert`) imports the converter itself.

`hidden` makes such a module look not installed while a library is first
imported (`import name` raises ImportError, which each of them expects of
a missing extra) and then un-hides it, so a later import of it works as
usual. Modules already imported are left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

PYDICOM_EXTRAS = ("gdcm", "requests", "tqdm")
OPENVINO_EXTRAS = ("openvino.tools.ovc",)


@contextmanager
def hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, importing any of `names` (not yet imported) raises ImportError."""
    hiding = [name for name in names if name not in sys.modules]
    for name in hiding:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in hiding:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def import_pydicom() -> None:
    """Import pydicom and its pixel plugins without gdcm, requests and tqdm (before anything else imports it)."""
    with hidden(PYDICOM_EXTRAS):
        import pydicom  # noqa: F401
        import pydicom.pixels  # noqa: F401  the plugins register here
