"""Every name the package promises in ``tracemark.__all__`` resolves, and is what its module defines."""

from __future__ import annotations

import importlib

import tracemark as tm


def test_every_public_name_resolves_to_its_module_object():
    from tracemark import _EXPORTS

    assert set(_EXPORTS) <= set(tm.__all__)
    for name, module in _EXPORTS.items():
        assert getattr(tm, name) is getattr(importlib.import_module(module), name), name
