"""The kernel conformance suite: the array-API E-step kernels on one (namespace, device, dtype).

Layer: a leaf beside the tests; it imports the kernels (:mod:`distmix.estep`),
scikit-learn and pytest, and nothing in :mod:`distmix` imports it.

The kernels take their namespace from the block, so a subclass of
:class:`KernelTests` names a namespace (``xp``), a device and a dtype, and
every test runs the kernels on blocks made there, against two oracles:

* a float64 NumPy reference written from the definitions (dense covariances,
  ``numpy.linalg.solve`` and ``slogdet``, an explicit log-sum-exp), on exactly
  the values the kernel sees (the block widened to float64). The kernels cast
  to float64 before any arithmetic, so a float32 block matches it to float64
  rounding (``ACCUMULATION_RTOL``): a kernel that summed in float32 would not;
  against the float64 data before the cast, the tolerance is the dtype's
  (``DTYPE_RTOL``);
* scikit-learn's ``GaussianMixture.score_samples``/``predict_proba`` on the
  same parameters, for the log-likelihood and the responsibilities.

Use::

    from distmix.testing import KernelTests

    class TestTorchFloat32(KernelTests):
        xp = array_api_compat.torch
        device = "cuda"
        dtype = "float32"

A subclass may also override :meth:`KernelTests.asarray` (how a block is made)
and :meth:`KernelTests.to_numpy` (how a result is read back).
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat
import numpy as np
import pytest
import scipy.special
from sklearn.mixture import GaussianMixture

from distmix.estep import (
    chunk_stats,
    predict_block,
    predict_proba_block,
    resp_stats,
    score_samples_block,
)
from distmix.params import Params
from distmix.suffstats import SuffStats
from distmix.testing.engines import FAR, assert_close, mixture_rows, random_params

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
N_ROWS, N_FEATURES, N_COMPONENTS = 257, 4, 3
#: global index of the blocks' first row
OFFSET = 1000
#: rows holding NaN and -inf
BAD_ROWS = (17, 200)
SEED = 11

#: kernel against the reference on the same float64 values: rounding of float64 sums only
ACCUMULATION_RTOL = 1e-10
#: kernel on the dtype's rows against the reference on the float64 rows before the cast
DTYPE_RTOL = {"float64": 1e-10, "float32": 2e-4}

_STAT_FIELDS = ("resp_sum", "x_sum", "second", "log_lik")


# --------------------------------------------------------------------------- #
# the oracles                                                                 #
# --------------------------------------------------------------------------- #
def dense_covariances(params: Params) -> np.ndarray:
    """Every component's covariance as a dense ``(K, D, D)`` matrix."""
    k, d = params.n_components, params.n_features
    cov = params.covariances
    if params.covariance_type == "full":
        return np.array(cov)
    if params.covariance_type == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    diagonal = cov if params.covariance_type == "diag" else np.outer(cov, np.ones(d))
    return diagonal[:, :, None] * np.eye(d)[None, :, :]


def reference_weighted_log_prob(values: np.ndarray, params: Params) -> np.ndarray:
    """``log π_k + log N(x_i | μ_k, Σ_k)``, shape ``(n, K)``, from dense covariances."""
    n, d = values.shape
    out = np.empty((n, params.n_components))
    for k, cov in enumerate(dense_covariances(params)):
        diff = values - params.means[k]
        maha = np.sum(diff.T * np.linalg.solve(cov, diff.T), axis=0)
        _, log_det = np.linalg.slogdet(cov)
        out[:, k] = np.log(params.weights[k]) - 0.5 * (d * np.log(2 * np.pi) + log_det + maha)
    return out


def reference_stats(
    values: np.ndarray,
    params: Params,
    sample_weight: np.ndarray | None,
    row_offset: int,
    resp: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """The SuffStats fields of ``values`` (n, D) float64, from their definitions.

    Non-finite rows are left out (and counted); ``resp`` (n, K), when given,
    replaces the responsibilities of ``params`` (the log-likelihood is then 0),
    and ``reference`` (K, D) the means as the point the moments are taken about.
    """
    n = values.shape[0]
    finite = np.all(np.isfinite(values), axis=1)
    x = values[finite]
    w = np.ones(x.shape[0]) if sample_weight is None else np.asarray(sample_weight)[finite]
    if resp is None:
        log_prob = reference_weighted_log_prob(x, params)
        log_norm = scipy.special.logsumexp(log_prob, axis=1)
        r = np.exp(log_prob - log_norm[:, None])
        log_lik = float(np.sum(w * log_norm))
    else:
        r, log_lik = np.asarray(resp)[finite], 0.0
    ref = params.means if reference is None else np.asarray(reference, dtype=np.float64)
    rw = r * w[:, None]
    diff = x[None, :, :] - ref[:, None, :]  # (K, n, D)
    full = np.einsum("nk,knd,kne->kde", rw, diff, diff)
    second = {
        "full": lambda: full,
        "tied": lambda: full.sum(axis=0),
        "diag": lambda: np.diagonal(full, axis1=1, axis2=2),
        "spherical": lambda: np.trace(full, axis1=1, axis2=2),
    }[params.covariance_type]()
    bad = np.flatnonzero(~finite)
    return {
        "reference": ref,
        "resp_sum": rw.sum(axis=0),
        "x_sum": np.einsum("nk,knd->kd", rw, diff),
        "second": second,
        "log_lik": log_lik,
        "n_rows": float(n),
        "n_nonfinite": float(bad.size),
        "first_nonfinite": float(row_offset + bad[0]) if bad.size else np.inf,
    }


def sklearn_mixture(params: Params) -> GaussianMixture:
    """scikit-learn's GaussianMixture holding ``params`` (same conventions), unfitted."""
    model = GaussianMixture(params.n_components, covariance_type=params.covariance_type)
    model.weights_ = np.array(params.weights)
    model.means_ = np.array(params.means)
    model.covariances_ = np.array(params.covariances)
    model.precisions_cholesky_ = np.array(params.precisions_cholesky)
    model.n_features_in_ = params.n_features
    return model


@functools.cache
def kernel_problem(
    covariance_type: str, shift: float = 0.0
) -> tuple[np.ndarray, Params, np.ndarray, np.ndarray]:
    """``(X with NaN/-inf rows, Params, weights, random responsibilities)``, seeded.

    The means are finite rows and the covariances random, so that every
    component takes a share of most rows. Cached: the arrays are read-only.
    """
    rng = np.random.default_rng(SEED)
    X = mixture_rows(SEED, n_rows=N_ROWS, n_features=N_FEATURES, shift=shift)
    finite = np.setdiff1d(np.arange(N_ROWS), BAD_ROWS)
    params = random_params(rng, X[rng.choice(finite, N_COMPONENTS, replace=False)], covariance_type)
    X[BAD_ROWS[0], 0], X[BAD_ROWS[1], 3] = np.nan, -np.inf
    weights = rng.uniform(0.0, 2.0, size=N_ROWS)
    resp = rng.dirichlet(np.ones(N_COMPONENTS), size=N_ROWS)
    for array in (X, weights, resp):
        array.setflags(write=False)
    return X, params, weights, resp


# --------------------------------------------------------------------------- #
# the suite                                                                   #
# --------------------------------------------------------------------------- #
class KernelTests:
    """Conformance tests of the E-step and prediction kernels on one namespace, device, dtype.

    Subclass as ``Test...`` with ``xp`` (the namespace blocks are made with),
    ``device`` (``None``: the namespace's default) and ``dtype`` (``"float64"``
    or ``"float32"``); set them in an autouse fixture to skip cleanly where the
    namespace or the device is missing.
    """

    xp: Any = np
    device: Any = None
    dtype: str = "float64"

    # -- what a subclass may change -----------------------------------------------
    def asarray(self, a: np.ndarray, dtype: str | None = None) -> Any:
        """``a`` as an array of the namespace, on the device, in ``dtype`` (default: ours)."""
        on_device = {} if self.device is None else {"device": self.device}
        return self.xp.asarray(
            np.asarray(a), dtype=getattr(self.xp, dtype or self.dtype), **on_device
        )

    def to_numpy(self, a: Any) -> np.ndarray:
        """A host NumPy copy of a result (CuPy through ``.get``, others through DLPack)."""
        if isinstance(a, (np.ndarray, np.generic, int, float)):
            return np.asarray(a)
        get = getattr(a, "get", None)
        if callable(get):
            return np.asarray(get())
        return np.asarray(np.from_dlpack(a))

    # -- helpers ------------------------------------------------------------------
    def kernel_values(self, X: np.ndarray) -> np.ndarray:
        """Rows as the kernel sees them: cast to our dtype, widened back to float64."""
        return np.asarray(X).astype(self.dtype).astype(np.float64)

    def _assert_stats(self, got: SuffStats, want: dict[str, Any], rtol: float, what: str) -> None:
        host = got.to_host()
        np.testing.assert_array_equal(host.reference, want["reference"], err_msg=what)
        for name in ("n_rows", "n_nonfinite", "first_nonfinite"):
            assert getattr(host, name) == want[name], (
                f"{what}: {name} is {getattr(host, name)}, expected {want[name]}"
            )
        for name in _STAT_FIELDS:
            assert_close(getattr(host, name), want[name], rtol, f"{what}: {name}")

    # -- the tests ----------------------------------------------------------------
    @pytest.mark.parametrize("location", ["origin", "far"])
    @pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_chunk_stats_match_reference(
        self, covariance_type: str, weighted: bool, location: str
    ) -> None:
        """The E-step's statistics are the definitions' on the values the kernel sees,
        to float64 rounding (float32 rows accumulate in float64), at the origin and 1e6
        from it."""
        X, params, weights, _ = kernel_problem(covariance_type, FAR if location == "far" else 0.0)
        w = weights if weighted else None
        got = chunk_stats(
            self.asarray(X), params, None if w is None else self.asarray(w, "float64"), OFFSET
        )
        want = reference_stats(self.kernel_values(X), params, w, OFFSET)
        self._assert_stats(got, want, ACCUMULATION_RTOL, f"{covariance_type}, {location}")

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_chunk_stats_within_dtype_tolerance(self, covariance_type: str) -> None:
        """Against the float64 rows before any cast: the dtype's rounding of the input only."""
        X, params, weights, _ = kernel_problem(covariance_type)
        got = chunk_stats(self.asarray(X), params, self.asarray(weights, "float64"), OFFSET)
        want = reference_stats(np.asarray(X), params, weights, OFFSET)
        self._assert_stats(got, want, DTYPE_RTOL[self.dtype], f"{covariance_type} vs float64")

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_statistics_are_float64_on_the_input_device(self, covariance_type: str) -> None:
        X, params, weights, _ = kernel_problem(covariance_type)
        block = self.asarray(X)
        stats = chunk_stats(block, params, self.asarray(weights, "float64"), OFFSET)
        outputs = {name: getattr(stats, name) for name in _STAT_FIELDS}
        finite = self.asarray(np.asarray(X)[np.all(np.isfinite(X), axis=1)])
        outputs["predict_proba"] = predict_proba_block(finite, params)
        outputs["score_samples"] = score_samples_block(finite, params)
        xp = array_api_compat.array_namespace(block)
        for name, out in outputs.items():
            assert array_api_compat.array_namespace(out) is xp, f"{name} left the namespace"
            assert out.dtype == xp.float64, f"{name} is {out.dtype}, not float64"
            assert array_api_compat.device(out) == array_api_compat.device(block), name
        labels = predict_block(finite, params)
        assert xp.isdtype(labels.dtype, "integral"), f"labels are {labels.dtype}"

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_responsibilities_sum_to_one(self, covariance_type: str) -> None:
        X, params, weights, _ = kernel_problem(covariance_type)
        finite = np.all(np.isfinite(X), axis=1)
        proba = self.to_numpy(predict_proba_block(self.asarray(X[finite]), params))
        assert np.all((proba >= 0) & (proba <= 1))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        # so the E-step's responsibilities add up to the weight of the finite rows
        stats = chunk_stats(self.asarray(X), params, self.asarray(weights, "float64")).to_host()
        assert_close(stats.resp_sum.sum(), weights[finite].sum(), 1e-12, "Σ resp_sum")

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_log_likelihood_matches_scikit_learn(self, covariance_type: str) -> None:
        X, params, weights, _ = kernel_problem(covariance_type)
        finite = np.all(np.isfinite(X), axis=1)
        values = self.kernel_values(X[finite])
        model = sklearn_mixture(params)
        want = model.score_samples(values)
        block = self.asarray(X[finite])
        got = self.to_numpy(score_samples_block(block, params))
        assert_close(got, want, ACCUMULATION_RTOL, "score_samples")
        stats = chunk_stats(block, params, self.asarray(weights[finite], "float64")).to_host()
        assert_close(stats.log_lik, np.sum(weights[finite] * want), ACCUMULATION_RTOL, "log_lik")
        want_proba = model.predict_proba(values)
        proba = self.to_numpy(predict_proba_block(block, params))
        np.testing.assert_allclose(proba, want_proba, rtol=0, atol=1e-10)
        labels = self.to_numpy(predict_block(block, params))
        top = np.sort(want_proba, axis=1)
        clear = top[:, -1] - top[:, -2] > 1e-9
        assert clear.sum() > clear.size // 2
        np.testing.assert_array_equal(labels[clear], model.predict(values)[clear])

    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_nonfinite_rows_and_empty_blocks(self, covariance_type: str) -> None:
        """Bad rows are counted and the first named globally; a clean or empty block
        reports none, and an empty block adds nothing."""
        X, params, _, _ = kernel_problem(covariance_type)
        bad = chunk_stats(self.asarray(X), params, None, OFFSET).to_host()
        assert bad.n_nonfinite == len(BAD_ROWS)
        assert bad.first_nonfinite == OFFSET + min(BAD_ROWS)
        finite = np.asarray(X)[np.all(np.isfinite(X), axis=1)]
        clean = chunk_stats(self.asarray(finite), params, None, OFFSET).to_host()
        assert (clean.n_nonfinite, clean.first_nonfinite) == (0.0, np.inf)
        empty = chunk_stats(self.asarray(finite[:0]), params, None, OFFSET)
        zero = SuffStats.zeros(covariance_type, params.means)
        self._assert_stats(
            empty,
            {name: getattr(zero, name) for name in ("reference", *_STAT_FIELDS)}
            | {"n_rows": 0.0, "n_nonfinite": 0.0, "first_nonfinite": np.inf},
            0.0,
            "an empty block",
        )

    @pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
    @pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
    def test_resp_stats_match_reference(self, covariance_type: str, weighted: bool) -> None:
        """Statistics of given responsibilities (initialisation) about given points."""
        X, params, weights, resp = kernel_problem(covariance_type)
        w = weights if weighted else None
        points = np.asarray(params.means)[::-1] + 0.5  # not the means
        got = resp_stats(
            self.asarray(X),
            self.asarray(resp, "float64"),
            points,
            covariance_type,
            None if w is None else self.asarray(w, "float64"),
            OFFSET,
        )
        want = reference_stats(
            self.kernel_values(X), params, w, OFFSET, resp=resp, reference=points
        )
        self._assert_stats(got, want, ACCUMULATION_RTOL, f"resp_stats {covariance_type}")
