"""Item size of NumPy array-protocol type strings without importing NumPy.

The grammar is the ``__array_interface__`` typestr of the NumPy reference ("The array interface
protocol"): an optional byte-order character, a kind character and a size. Only the common,
unambiguous forms are decoded here (importing NumPy costs more than scanning hundreds of files);
anything else is handed to ``numpy.dtype`` itself, so the answer is always NumPy's.
"""

from __future__ import annotations

import re

_FIXED = {"b1": 1, "i1": 1, "i2": 2, "i4": 4, "i8": 8, "u1": 1, "u2": 2, "u4": 4, "u8": 8,
          "f2": 2, "f4": 4, "f8": 8, "c8": 8, "c16": 16, "O": 8, "O8": 8}
_FLEX = re.compile(r"([SUV])([1-9][0-9]{0,7})")
_TIME = re.compile(r"[Mm]8(?:\[(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?")


def _simple(descr: str) -> tuple[int, bool] | None:
    body = descr[1:] if descr[:1] in ("<", ">", "|", "=") else descr
    size = _FIXED.get(body)
    if size is not None:
        return size, body.startswith("O")
    m = _FLEX.fullmatch(body)
    if m:
        n = int(m.group(2))
        return (4 * n if m.group(1) == "U" else n), False
    if _TIME.fullmatch(body):
        return 8, False
    return None


def dtype_info(descr: object) -> tuple[int, bool]:
    """(itemsize, holds Python objects) of a dtype description, as ``numpy.dtype(descr)`` gives them.

    Raises ``TypeError`` or ``ValueError`` (NumPy's own) for an invalid description.
    """
    if isinstance(descr, str):
        simple = _simple(descr)
        if simple is not None:
            return simple
    import numpy as np

    dt = np.dtype(descr)  # type: ignore[call-overload]
    return dt.itemsize, dt.hasobject
