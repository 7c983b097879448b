"""The E-step and prediction kernels pass the conformance suite of :mod:`distmix.testing`
on every namespace, device and dtype we run them on.

NumPy takes a per-component path for ``full`` and ``tied`` and every other
namespace the batched one (see :mod:`distmix.estep`), so NumPy and
``array_api_strict`` between them check both implementations against the same
oracles. ``array_api_strict`` on its second device checks that the kernels make
every array they create next to the block. CuPy runs on a CUDA device only.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cupy_or_skip

from distmix.testing import KernelTests


class TestNumPyFloat64(KernelTests):
    xp = np
    dtype = "float64"


class TestNumPyFloat32(KernelTests):
    xp = np
    dtype = "float32"


class TestArrayApiStrictFloat64(KernelTests):
    dtype = "float64"

    @pytest.fixture(autouse=True)
    def _namespace(self):
        self.xp = pytest.importorskip("array_api_strict")


class TestArrayApiStrictFloat32(TestArrayApiStrictFloat64):
    dtype = "float32"


class TestArrayApiStrictOtherDevice(TestArrayApiStrictFloat64):
    """Arrays on the namespace's second device: mixing devices raises there."""

    @pytest.fixture(autouse=True)
    def _namespace(self):
        self.xp = pytest.importorskip("array_api_strict")
        self.device = self.xp.Device("device1")


@pytest.mark.gpu
class TestCuPyFloat64(KernelTests):
    dtype = "float64"

    @pytest.fixture(autouse=True)
    def _namespace(self):
        self.xp = cupy_or_skip()


class TestCuPyFloat32(TestCuPyFloat64):
    dtype = "float32"
