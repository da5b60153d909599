"""``Array``: a numpy array inside a pydantic result model, written to JSON as nested lists.

Results of every capability family hold per-record arrays (scores, radii, indices); this one
annotated type lets them stay numpy in Python and become plain lists in ``report.json``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema


def _to_array(value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object:
        raise ValueError("expected a numeric array")
    return a


Array = Annotated[
    np.ndarray,
    PlainValidator(_to_array),
    PlainSerializer(lambda a: a.tolist(), return_type=list, when_used="json"),
    WithJsonSchema({"type": "array"}),
]
