"""Importing pydicom without two optional modules it loads that angiogate never uses.

`import pydicom` registers every pixel decoder and encoder plugin, which
imports python-gdcm (a large SWIG library), and pydicom.data's downloader,
which imports requests: a quarter to a half of pydicom's import time here
(0.09-0.27 s of 0.35-0.47 s, on a loaded 2-core EPYC). angiogate uses neither:
the judge removes GDCM's decoders as soon as it is imported
(`angiogate.clip.decode`: GDCM aborts the process on some corrupt data), so
the decoders left are the same either way, and nothing downloads pydicom's
test files. `import_pydicom_lean` hides both while pydicom is first
imported, so pydicom takes them as not installed (its own fallbacks: no gdcm
plugin, urllib for downloads), then un-hides them: a later `import requests`
or `import gdcm` works as usual. Only the RLE encoder loses its gdcm plugin,
and `score` encodes nothing.
"""

from __future__ import annotations

import sys

UNUSED_BY_ANGIOGATE = ("gdcm", "requests")


def import_pydicom_lean() -> None:
    """Import pydicom (with its pixel plugins) as if gdcm and requests were not installed.

    Does nothing to modules already imported: called after pydicom, it changes nothing.
    """
    hidden = [name for name in UNUSED_BY_ANGIOGATE if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError, which pydicom expects of a missing extra
    try:
        import pydicom  # noqa: F401
        import pydicom.pixels  # noqa: F401  the plugins register here
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
