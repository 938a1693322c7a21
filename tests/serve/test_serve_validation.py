"""Input parsing without HTTP: the fast path for plain number batches agrees exactly with the full checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracemark.serve import InvalidInputError
from tracemark.serve.validation import InputSpec, _checked_values, parse_json_inputs

SPEC = InputSpec((1, 4, 4), max_batch=8, value_range=(0.0, 1.0))


@pytest.mark.parametrize("flat", [False, True])
def test_plain_number_batches_parse_to_the_same_float32_array_as_the_full_checks(flat: bool) -> None:
    x = np.random.default_rng(0).random((3, 1, 4, 4))
    x[0, 0, 0, :2] = (0.0, 1.0)  # the range is inclusive
    doc = {"inputs": (x.reshape(3, -1) if flat else x).tolist()}
    for body in (json.dumps(doc).encode(), json.dumps(doc, indent=2).encode(), b'{"inputs": [[[[1, 0, 1, 0]] * 4]]}'.replace(b" * 4", b"")):
        got = parse_json_inputs(body, InputSpec((1, 1, 4), 8) if b"[[[[1, 0" in body else SPEC)
        full = _checked_values(np.asarray(json.loads(body)["inputs"], dtype=np.float64), SPEC).reshape(got.shape)
        assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, full)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [[["0.5"] * 16]]}'.replace(b" * 16", b""), "non-numbers"),  # a numeric string is not a number
    (b'{"inputs": [[[null, 0.5, 0.5, 0.5]] ]}', "non-numbers"),
    (b'{"inputs": [[[true, 0, 0, 0]]]}', "true/false"),
    (json.dumps({"inputs": [[[[1.0000001] * 4] * 4]]}).encode(), "outside the allowed range"),
    (json.dumps({"inputs": [[[[-1e-9] * 4] * 4]]}).encode(), "outside the allowed range"),
    (b'{"inputs": [[[[NaN, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]]}', "NaN"),
    (b'{"inputs": [[[[Infinity, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]]}', "NaN or infinity"),
    (json.dumps({"inputs": [[[[0.5] * 4] * 3]]}).encode(), "shape [1, 3, 4]"),
    (b'{"inputs": [[[[0.5], [0.5, 0.5]]]]}', "ragged"),
    (b'{"inputs": [[]]}', "shape [0]"),
])
def test_bodies_the_fast_path_cannot_take_get_the_full_checks_message(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_json_inputs(body, SPEC)
