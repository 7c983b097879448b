"""Bad input: a clear error that names the problem, and nothing changes.

Every failing call is made on an already fitted model; afterwards every
attribute of the model (fitted attributes and parameters alike) must be exactly
what it was before the call, compared with ``np.array_equal``. Where the bad
input has another number of features than the fitted model, this also checks
that a failed fit does not leave half-updated metadata (``n_features_in_``)
behind.
"""

from __future__ import annotations

import copy
from typing import Any

import dask.array as da
import numpy as np
import pytest
from conftest import mixture_data

from distmix import GaussianMixture

N_ROWS, N_FEATURES, N_COMPONENTS = 200, 3, 2
CHUNK = 50  # rows per dask block: NaNs placed at rows >= 100 sit in a later block


# -- helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return mixture_data(3, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def _fitted_once(data: np.ndarray) -> GaussianMixture:
    return GaussianMixture(n_components=N_COMPONENTS, random_state=0).fit(data)


@pytest.fixture
def fitted(_fitted_once: GaussianMixture) -> GaussianMixture:
    """A fitted model each test may break."""
    return copy.deepcopy(_fitted_once)


def snapshot(estimator: GaussianMixture) -> dict[str, Any]:
    return copy.deepcopy(vars(estimator))


def assert_unchanged(estimator: GaussianMixture, before: dict[str, Any]) -> None:
    after = vars(estimator)
    assert sorted(after) == sorted(before), "attributes were added or removed"
    for name, old in before.items():
        new = after[name]
        if isinstance(old, (np.ndarray, list, tuple)) or isinstance(new, np.ndarray):
            new, old = np.asarray(new), np.asarray(old)
            equal_nan = new.dtype.kind in "fc" and old.dtype.kind in "fc"
            assert np.array_equal(new, old, equal_nan=equal_nan), f"{name} changed"
        else:
            assert type(new) is type(old) and new == old, f"{name} changed: {old!r} → {new!r}"


def assert_fit_fails(
    estimator: GaussianMixture,
    X: Any,
    match: str,
    exception: type[Exception] = ValueError,
    sample_weight: Any = None,
    **params: Any,
) -> None:
    """``fit`` raises ``exception`` matching ``match`` and leaves the model as it was."""
    estimator.set_params(**params)
    before = snapshot(estimator)
    with pytest.raises(exception, match=match):
        estimator.fit(X, sample_weight=sample_weight)
    assert_unchanged(estimator, before)


def with_nonfinite(X: np.ndarray, rows: list[int], value: float = np.nan) -> np.ndarray:
    X = X.copy()
    X[rows, -1] = value
    return X


def as_dask(X: np.ndarray) -> Any:
    return da.from_array(X, chunks=(CHUNK, -1))


def nonfinite_message(count: int, first: int) -> str:
    return rf"NaN or infinity in {count} row\(s\); the first is row {first}\b"


# -- NaN / inf in X ------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fit_nonfinite_numpy_names_count_and_first_row(fitted, data, value):
    X = with_nonfinite(data, [57, 80, 81, 199], value)
    assert_fit_fails(fitted, X, nonfinite_message(4, 57))


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_fit_nonfinite_dask_later_block_gives_global_row(fitted, data, init_params):
    # rows 123 and 140 are in the third block (rows 100-149), row 190 in the fourth
    X = as_dask(with_nonfinite(data, [123, 140, 190]))
    assert_fit_fails(fitted, X, nonfinite_message(3, 123), init_params=init_params)


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_fit_nonfinite_with_other_n_features_changes_nothing(fitted, data, backend):
    """A failed fit on data of another width must not reset ``n_features_in_``."""
    X = with_nonfinite(data[:, :2], [150])
    X = as_dask(X) if backend == "dask" else X
    assert_fit_fails(fitted, X, nonfinite_message(1, 150))
    # the model still predicts on data of its own width
    fitted.predict(data)


def test_fit_nonfinite_with_user_init_dask(fitted, data):
    """With every starting parameter given, the first E-step pass still names the rows."""
    means = data[:N_COMPONENTS].astype(np.float64)
    X = as_dask(with_nonfinite(data, [101, 177]))
    assert_fit_fails(
        fitted,
        X,
        nonfinite_message(2, 101),
        weights_init=np.full(N_COMPONENTS, 1 / N_COMPONENTS),
        means_init=means,
        precisions_init=np.stack([np.eye(N_FEATURES)] * N_COMPONENTS),
    )


# -- shape -------------------------------------------------------------------
def test_fit_1d_numpy(fitted, data):
    assert_fit_fails(fitted, data[:, 0], "Expected 2D array, got 1D array")


# a 3-D array: the error names its shape and the reshape that makes it rows × features
RESHAPE_3D = (
    r"got 3-D with shape \(200, 3, 1\)\. To use each of its 200 entries along the first axis "
    r"as one sample of 3×1 = 3 features, make it \(200, 3\): reshape it with "
    r"X\.reshape\(len\(X\), -1\)\.$"
)


def test_fit_3d_numpy(fitted, data):
    assert_fit_fails(fitted, data[:, :, None], RESHAPE_3D)


@pytest.mark.parametrize("ndim", [1, 3])
def test_fit_wrong_ndim_dask(fitted, data, ndim):
    X = da.from_array(data[:, 0] if ndim == 1 else data[:, :, None])
    match = r"got 1-D with shape \(200,\)\..*X\.reshape\(-1, 1\)" if ndim == 1 else RESHAPE_3D
    assert_fit_fails(fitted, X, rf"must be 2-D \(rows × features\), {match}")


def test_fit_3d_zarr(fitted, data, tmp_path):
    import zarr

    X = zarr.create_array(tmp_path / "x3.zarr", shape=(200, 3, 2), chunks=(50, 3, 2), dtype="f8")
    X[:] = np.repeat(data[:, :, None], 2, axis=2)
    match = (
        r"x3\.zarr is a 3-D Zarr array of shape \(200, 3, 2\); .* one sample of 3×2 = 6 "
        r"features, make it \(200, 6\): store it with that shape, or fit "
        r"dask\.array\.from_zarr\(\.\.\.\)\.reshape\(200, -1\)\.$"
    )
    for source in (X, str(tmp_path / "x3.zarr")):
        assert_fit_fails(fitted, source, match)
    # the remedy it names works
    six = GaussianMixture(N_COMPONENTS, random_state=0).fit(
        da.from_zarr(tmp_path / "x3.zarr").reshape(200, -1)
    )
    assert six.n_features_in_ == 6


def test_fit_zero_rows_numpy(fitted, data):
    assert_fit_fails(fitted, data[:0], r"0 sample\(s\)")


def test_fit_zero_rows_dask(fitted, data):
    assert_fit_fails(fitted, da.from_array(data[:0]), "0 rows")


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_fit_fewer_rows_than_components(fitted, data, backend):
    X = data[:2] if backend == "numpy" else da.from_array(data[:2])
    assert_fit_fails(fitted, X, "n_samples=2 rows but n_components=3", n_components=3)


# -- dtype -------------------------------------------------------------------
STRINGS = np.array([["a", "b", "c"]] * 10)
DATES = (
    np.array([["2020-01-01", "2021-03-01", "2022-05-07"]] * 10, dtype="datetime64[D]")
    + np.arange(10)[:, None]
)


@pytest.mark.parametrize(
    ("X", "exception", "match"),
    [
        (STRINGS, TypeError, r"dtype <U1, which is not numeric"),
        (STRINGS.astype(object), ValueError, "could not convert string to float: 'a'"),
        (DATES, TypeError, r"dtype datetime64\[D\], which is not numeric"),
    ],
    ids=["str", "object-str", "datetime"],
)
def test_fit_non_numeric_numpy(fitted, X, exception, match):
    assert_fit_fails(fitted, X, match, exception)


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (STRINGS, r"dtype <U1, which is not numeric"),
        (STRINGS.astype(object), r"dtype object, which is not numeric"),
        (DATES, r"dtype datetime64\[D\], which is not numeric"),
    ],
    ids=["str", "object-str", "datetime"],
)
def test_fit_non_numeric_dask(fitted, X, match):
    assert_fit_fails(fitted, da.from_array(X, chunks=(5, -1)), match, TypeError)


# -- wrong number of features at prediction ------------------------------------
PREDICTION_METHODS = ["predict", "predict_proba", "score_samples", "score"]


@pytest.mark.parametrize("method", PREDICTION_METHODS)
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_predict_wrong_n_features(fitted, data, method, backend):
    X = data[:, :2] if backend == "numpy" else as_dask(data[:, :2])
    before = snapshot(fitted)
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        # dask outputs are lazy: the error must come at the call, not at compute
        getattr(fitted, method)(X)
    assert_unchanged(fitted, before)


# -- NaN at prediction time ----------------------------------------------------
def _run(result: Any) -> Any:
    return result.compute() if hasattr(result, "compute") else result


@pytest.mark.parametrize("method", PREDICTION_METHODS)
def test_predict_nonfinite_numpy(fitted, data, method):
    X = with_nonfinite(data, [57, 80, 81])
    before = snapshot(fitted)
    with pytest.raises(ValueError, match=nonfinite_message(3, 57)):
        _run(getattr(fitted, method)(X))
    assert_unchanged(fitted, before)


@pytest.mark.parametrize("method", PREDICTION_METHODS)
def test_predict_nonfinite_dask_later_block(fitted, data, method):
    # both bad rows in the third block (rows 100-149): its global indices are named
    X = as_dask(with_nonfinite(data, [123, 140]))
    before = snapshot(fitted)
    with pytest.raises(ValueError, match=nonfinite_message(2, 123)):
        _run(getattr(fitted, method)(X))
    assert_unchanged(fitted, before)


@pytest.mark.parametrize("method", PREDICTION_METHODS)
def test_predict_nonfinite_numpy_blocks_side_by_side(fitted, data, method):
    """In-memory blocks of 10 rows run on threads: the first bad block in row order
    is named (row 57 alone in its block), whichever block finished first; ``score``
    sees every block."""
    fitted.set_params(block_size=10)
    X = with_nonfinite(data, [57, 80, 81])
    before = snapshot(fitted)
    count = 3 if method == "score" else 1
    for _ in range(5):
        with pytest.raises(ValueError, match=nonfinite_message(count, 57)):
            _run(getattr(fitted, method)(X))
    assert_unchanged(fitted, before)


def test_score_nonfinite_dask_several_blocks(fitted, data):
    """``score`` returns a number, so it sees every block: count and first row are global."""
    X = as_dask(with_nonfinite(data, [123, 190, 191]))
    with pytest.raises(ValueError, match=nonfinite_message(3, 123)):
        fitted.score(X)


# -- parameters ----------------------------------------------------------------
def test_unknown_covariance_type_lists_valid_names(fitted, data):
    assert_fit_fails(
        fitted,
        data,
        r"covariance_type='fulll' is not one of 'full', 'tied', 'diag', 'spherical'",
        covariance_type="fulll",
    )


def test_unknown_init_params_lists_valid_names(fitted, data):
    assert_fit_fails(
        fitted,
        data,
        r"init_params='kmeans\+\+' is not one of 'kmeans', 'k-means\+\+', 'random', "
        r"'random_from_data'",
        init_params="kmeans++",
    )


@pytest.mark.parametrize(
    ("covariance_type", "precisions", "match"),
    [
        (
            "full",
            np.stack([np.eye(3), -np.eye(3)]),
            r"precisions_init\[1\] is not positive-definite",
        ),
        (
            "full",
            np.stack([np.eye(3), np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])]),
            r"precisions_init\[1\] is not positive-definite",
        ),
        (
            "full",
            np.stack([np.eye(3), np.triu(np.ones((3, 3)))]),
            r"precisions_init\[1\] is not symmetric",
        ),
        ("tied", np.diag([1.0, 0.0, 1.0]), r"precisions_init is not positive-definite"),
        (
            "diag",
            np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]),
            r"precisions_init\[1\] is not positive",
        ),
        ("spherical", np.array([-1.0, 1.0]), r"precisions_init\[0\] is not positive"),
        ("spherical", np.array([1.0, np.nan]), r"precisions_init\[1\] is not positive"),
    ],
    ids=[
        "full-negdef",
        "full-indefinite",
        "full-asymmetric",
        "tied",
        "diag",
        "spherical",
        "spherical-nan",
    ],
)
def test_precisions_init_not_positive_definite(fitted, data, covariance_type, precisions, match):
    assert_fit_fails(
        fitted, data, match, covariance_type=covariance_type, precisions_init=precisions
    )


@pytest.mark.parametrize(
    ("covariance_type", "precisions", "shape"),
    [
        ("full", np.stack([np.eye(2)] * 2), r"\(2, 3, 3\), got \(2, 2, 2\)"),
        ("full", np.eye(3), r"\(2, 3, 3\), got \(3, 3\)"),
        ("tied", np.stack([np.eye(3)] * 2), r"\(3, 3\), got \(2, 3, 3\)"),
        ("diag", np.ones(3), r"\(2, 3\), got \(3,\)"),
        ("spherical", np.ones(3), r"\(2,\), got \(3,\)"),
    ],
)
def test_precisions_init_wrong_shape(fitted, data, covariance_type, precisions, shape):
    match = rf"precisions_init for covariance_type='{covariance_type}' must have shape {shape}"
    assert_fit_fails(
        fitted, data, match, covariance_type=covariance_type, precisions_init=precisions
    )


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.6], r"weights_init must sum to 1, but they sum to 1\.1"),
        ([0.3, 0.3], r"weights_init must sum to 1, but they sum to 0\.6"),
        ([1.5, -0.5], r"weights_init must lie in \[0, 1\]"),
        ([0.5, 0.25, 0.25], r"weights_init must have shape \(n_components,\) = \(2,\), got \(3,\)"),
    ],
)
def test_weights_init_invalid(fitted, data, weights, match):
    assert_fit_fails(fitted, data, match, weights_init=np.array(weights))


@pytest.mark.parametrize("shape", [(3, 3), (2, 2), (6,)])
def test_means_init_wrong_shape(fitted, data, shape):
    expected = r"means_init must have shape \(n_components, n_features\) = \(2, 3\)"
    match = rf"{expected}, got {re_shape(shape)}"
    assert_fit_fails(fitted, data, match, means_init=np.zeros(shape))


def re_shape(shape: tuple[int, ...]) -> str:
    return "\\(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + "\\)"


def test_means_init_nonfinite(fitted, data):
    assert_fit_fails(
        fitted,
        data,
        "means_init contains NaN or infinity",
        means_init=np.array([[0, 0, 0], [np.nan, 0, 0]]),
    )


# -- sample_weight ---------------------------------------------------------------
def _weights(bad_row: int, value: float) -> np.ndarray:
    w = np.ones(N_ROWS)
    w[bad_row] = value
    return w


@pytest.mark.parametrize("backend", ["numpy", "dask", "dask-weights"])
def test_negative_sample_weight(fitted, data, backend):
    w = _weights(150, -1.0)
    X = data if backend == "numpy" else as_dask(data)
    if backend == "dask-weights":
        w = da.from_array(w, chunks=CHUNK)
    assert_fit_fails(fitted, X, r"(?i)negative.*sample_weight", sample_weight=w)


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_nan_sample_weight(fitted, data, backend):
    X = data if backend == "numpy" else as_dask(data)
    assert_fit_fails(fitted, X, r"sample_weight.*NaN", sample_weight=_weights(150, np.nan))


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_sample_weight_wrong_shape(fitted, data, backend):
    X = data if backend == "numpy" else as_dask(data)
    assert_fit_fails(fitted, X, r"sample_weight.*\(199,\)", sample_weight=np.ones(N_ROWS - 1))


# -- split_every / block_size -------------------------------------------------------
@pytest.mark.parametrize("split_every", [1, 0, -3, 2.5, True, "4", None])
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_invalid_split_every(fitted, data, split_every, backend):
    X = data if backend == "numpy" else as_dask(data)
    assert_fit_fails(
        fitted,
        X,
        rf"split_every must be an integer >= 2, got {split_every!r}",
        split_every=split_every,
    )


@pytest.mark.parametrize("block_size", [0, -1, 2.5, True, "a", (100, 50)], ids=repr)
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_invalid_block_size(fitted, data, block_size, backend):
    """Not a positive block length (nor lengths summing to the rows), on either input.

    ``-1`` would mean "one block" to dask and ``True`` a length of 1; as a
    ``block_size`` of distmix both are errors, as they are for in-memory input.
    """
    X = data if backend == "numpy" else as_dask(data)
    assert_fit_fails(fitted, X, r"block_size", block_size=block_size)


@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_invalid_block_size_zero_length_block(fitted, data, backend):
    assert_fit_fails(
        fitted,
        data if backend == "numpy" else da.from_array(data, chunks=50),
        r"block_size=\(100, 0, 100\): a tuple of block lengths must hold positive",
        block_size=(100, 0, 100),
    )
