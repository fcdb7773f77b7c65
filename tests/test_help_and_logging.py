"""The API documents itself; optional TensorBoard logging works where installed (issue 13, items 8, 11)."""
import importlib.util
import pydoc

import pytest
import torch

import dlsn


def test_dlsn_forward_is_documented_on_the_method():
    text = pydoc.render_doc(dlsn.DLSN.forward, renderer=pydoc.plaintext)
    for needle in ("[N, n_colors, h, w]", "scale*h", "rgb_range", "eval mode", "training mode", "rotations",
                   "backend", "dtype"):
        assert needle in text, needle
