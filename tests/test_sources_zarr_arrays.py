"""Zarr sources on disk: opening, block alignment, every way a store can be wrong.

Every store here is a real Zarr array written under pytest's ``tmp_path``, in
format 2 and 3, with rows cut evenly, with a shorter last chunk, and with the
columns split across chunks. Damage is done to the files themselves (a chunk
file deleted, truncated, one bit flipped), never simulated.
"""

from __future__ import annotations

import os
import pickle
import re

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import mixture_data

from distmix import GaussianMixture
from distmix.datasets import TrueMixture, random_mixture, sample_rows, write_zarr
from distmix.engines.base import rows_at
from distmix.engines.factory import make_engine
from distmix.nonfinite import NonFiniteInputError
from distmix.sources.dataset import open_dataset
from distmix.sources.zarr_arrays import ChunkReadError, MissingChunkError, storage_chunk_shape
from distmix.sources.zarr_write import create_zarr_array

N_ROWS, N_FEATURES, N_COMPONENTS = 1000, 4, 3
FORMATS = (2, 3)
#: Zarr chunk shapes: rows cut evenly, a shorter last chunk (7 × 128 + 104),
#: and columns split over two chunks (3 + 1) with a shorter last row chunk
CHUNKINGS = {"even": (100, 4), "uneven_last": (128, 4), "columns_split": (300, 3)}
#: who wrote the store: distmix (checksum, NaN fill) or Zarr's defaults
WRITERS = ("distmix", "zarr_defaults")
SAME_RTOL = 1e-10


# -- helpers ------------------------------------------------------------------
def rows() -> np.ndarray:
    """Overlapping components, so that EM takes a few dozen iterations."""
    return mixture_data(
        11, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS, separation=3.0
    )


def write(
    path, X: np.ndarray, chunks: tuple[int, int], zarr_format: int, writer: str = "distmix"
) -> zarr.Array:
    """``X`` stored at ``path`` as ``writer`` would store it."""
    if writer == "distmix":
        array = create_zarr_array(str(path), X.shape, chunks, X.dtype, zarr_format=zarr_format)
    else:
        array = zarr.create_array(
            str(path), shape=X.shape, chunks=chunks, dtype=X.dtype, zarr_format=zarr_format
        )
    array[:] = X
    return array


def chunk_file(path, array: zarr.Array, coords: tuple[int, int]) -> str:
    """The file of the chunk at grid ``coords``, its key encoded by Zarr itself."""
    return os.path.join(str(path), array.metadata.encode_chunk_key(coords))


def flip_bit(file: str, at: float = 0.5) -> None:
    data = bytearray(open(file, "rb").read())
    data[int(len(data) * at)] ^= 0x10
    open(file, "wb").write(bytes(data))


def truncate(file: str) -> None:
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) // 2])


def assert_same_fit(a: GaussianMixture, b: GaussianMixture) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        expected = getattr(b, name)
        np.testing.assert_allclose(
            getattr(a, name),
            expected,
            rtol=SAME_RTOL,
            atol=SAME_RTOL * float(np.max(np.abs(expected))),
            err_msg=name,
        )
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=SAME_RTOL, atol=0)


@pytest.fixture(params=FORMATS, ids=lambda f: f"v{f}")
def zarr_format(request) -> int:
    return request.param


@pytest.fixture(params=list(CHUNKINGS), ids=str)
def chunks(request) -> tuple[int, int]:
    return CHUNKINGS[request.param]


# -- opening and block alignment ---------------------------------------------------
@pytest.mark.parametrize("writer", WRITERS)
def test_round_trip(tmp_path, zarr_format, chunks, writer):
    X = rows()
    write(tmp_path / "x.zarr", X, chunks, zarr_format, writer)
    Xd = open_dataset(tmp_path / "x.zarr")
    assert Xd.shape == X.shape and Xd.dtype == X.dtype
    np.testing.assert_array_equal(Xd.compute(), X)


def test_float32_round_trip(tmp_path, zarr_format):
    X = rows().astype(np.float32)
    write(tmp_path / "x.zarr", X, (128, 4), zarr_format)
    Xd = open_dataset(str(tmp_path / "x.zarr"))
    assert Xd.dtype == np.float32
    np.testing.assert_array_equal(Xd.compute(), X)


def test_blocks_hold_whole_chunks_and_all_columns(tmp_path, zarr_format, chunks):
    X = rows()
    write(tmp_path / "x.zarr", X, chunks, zarr_format)
    chunk_rows = chunks[0]
    Xd = open_dataset(tmp_path / "x.zarr")
    assert Xd.chunks[1] == (N_FEATURES,)  # one block spans every column chunk
    # one Zarr row chunk per block, the last one shorter where the array is
    expected = tuple(min(chunk_rows, N_ROWS - s) for s in range(0, N_ROWS, chunk_rows))
    assert Xd.chunks[0] == expected
    # each block is exactly its rows
    for i, start in enumerate(np.cumsum((0,) + expected[:-1])):
        np.testing.assert_array_equal(
            Xd.blocks[i].compute(), X[start : start + expected[i]], err_msg=f"block {i}"
        )


@pytest.mark.parametrize("block_rows", [1, 250, 450, 999, 5000])
def test_block_rows_are_rounded_down_to_whole_chunks(tmp_path, chunks, block_rows):
    X = rows()
    write(tmp_path / "x.zarr", X, chunks, 3)
    chunk_rows = chunks[0]
    Xd = open_dataset(tmp_path / "x.zarr", block_rows=block_rows)
    step = max(1, block_rows // chunk_rows) * chunk_rows
    assert Xd.chunks[0] == tuple(min(step, N_ROWS - s) for s in range(0, N_ROWS, step))
    starts = np.cumsum((0,) + Xd.chunks[0][:-1])
    assert np.all(starts % chunk_rows == 0)
    # an upper bound on a block's rows wherever one chunk fits in it
    assert max(Xd.chunks[0]) <= max(block_rows, chunk_rows)
    np.testing.assert_array_equal(Xd.compute(), X)


def test_block_lengths_must_start_on_chunk_boundaries(tmp_path):
    X = rows()
    write(tmp_path / "x.zarr", X, (100, 4), 3)
    Xd = open_dataset(tmp_path / "x.zarr", block_rows=(300, 200, 500))
    assert Xd.chunks[0] == (300, 200, 500)
    with pytest.raises(ValueError, match=r"cuts through the Zarr chunks of .*x\.zarr.*100 rows"):
        open_dataset(tmp_path / "x.zarr", block_rows=(250, 750))
    with pytest.raises(ValueError, match="summing to the number of rows"):
        open_dataset(tmp_path / "x.zarr", block_rows=(300, 300))


def test_sharded_array_blocks_hold_whole_shards(tmp_path):
    X = rows()
    array = create_zarr_array(str(tmp_path / "x.zarr"), X.shape, (100, 4), shards=(300, 4))
    array[:] = X
    assert storage_chunk_shape(array) == (300, 4)
    Xd = open_dataset(tmp_path / "x.zarr", block_rows=700)
    assert Xd.chunks[0] == (600, 400)
    np.testing.assert_array_equal(Xd.compute(), X)
    os.remove(chunk_file(tmp_path / "x.zarr", array, (1, 0)))
    with pytest.raises(MissingChunkError, match=r"c/1/0 \(rows 300–599\)"):
        open_dataset(tmp_path / "x.zarr")


def test_same_array_opened_twice_gives_the_same_graph(tmp_path):
    write(tmp_path / "x.zarr", rows(), (128, 4), 3)
    a, b = open_dataset(tmp_path / "x.zarr"), open_dataset(tmp_path / "x.zarr")
    assert a.name == b.name
    assert open_dataset(tmp_path / "x.zarr", block_rows=256).name != a.name


# -- ways of naming the array ------------------------------------------------------
def test_open_zarr_array_object(tmp_path, zarr_format):
    X = rows()
    array = write(tmp_path / "x.zarr", X, (128, 3), zarr_format)
    Xd = open_dataset(array)
    assert Xd.chunks[0][0] == 128
    np.testing.assert_array_equal(Xd.compute(), X)
    # the estimator's entry point (make_engine) takes the array as it is
    engine = make_engine(array, passes="one")
    np.testing.assert_array_equal(rows_at(engine, np.arange(X.shape[0])), X)


def test_open_file_url(tmp_path, zarr_format):
    X = rows()
    write(tmp_path / "x.zarr", X, (128, 4), zarr_format)
    url = (tmp_path / "x.zarr").as_uri()
    assert url.startswith("file://")
    np.testing.assert_array_equal(open_dataset(url).compute(), X)


def test_group_with_one_2d_array_and_named_arrays(tmp_path, zarr_format):
    X = rows()
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    array = group.create_array("train/X", shape=X.shape, chunks=(128, 4), dtype="f8")
    array[:] = X
    group.create_array("labels", shape=(N_ROWS,), dtype="i8")[:] = 0
    # the only 2-D array below the group is found
    np.testing.assert_array_equal(open_dataset(tmp_path / "g.zarr").compute(), X)
    # or named after '#'
    np.testing.assert_array_equal(open_dataset(f"{tmp_path / 'g.zarr'}#train/X").compute(), X)
    with pytest.raises(FileNotFoundError, match=r"No Zarr array 'test/X' in .*g\.zarr.*train/X"):
        open_dataset(f"{tmp_path / 'g.zarr'}#test/X")
    # a missing chunk inside a group is named relative to the array
    os.remove(
        os.path.join(str(tmp_path / "g.zarr"), "train/X", array.metadata.encode_chunk_key((2, 0)))
    )
    with pytest.raises(MissingChunkError, match=r"g\.zarr#train/X.*rows 256–383"):
        open_dataset(tmp_path / "g.zarr")


def test_group_with_two_2d_arrays_asks_for_a_name(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=(10, 2), dtype="f8")
    group.create_array("b", shape=(10, 3), dtype="f8")
    with pytest.raises(ValueError, match=r"g\.zarr holds 2 2-D arrays .*a \(10, 2\).*#NAME"):
        open_dataset(tmp_path / "g.zarr")


# -- refused before any pass ---------------------------------------------------------
@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file_url"])
def test_missing_store_names_the_path(tmp_path, as_url):
    path = tmp_path / "nowhere.zarr"
    source = path.as_uri() if as_url else str(path)
    with pytest.raises(FileNotFoundError, match=re.escape(source)):
        open_dataset(source)


def test_1d_array_names_path_and_shape(tmp_path, zarr_format):
    array = zarr.create_array(
        str(tmp_path / "v.zarr"), shape=(50,), chunks=(10,), dtype="f8", zarr_format=zarr_format
    )
    array[:] = 1.0
    with pytest.raises(ValueError, match=r"X at .*v\.zarr is a 1-D Zarr array of shape \(50,\)"):
        open_dataset(tmp_path / "v.zarr")


def test_non_numeric_dtype_names_the_path(tmp_path):
    array = zarr.create_array(str(tmp_path / "s.zarr"), shape=(10, 2), chunks=(5, 2), dtype=str)
    array[:] = "a"
    with pytest.raises(TypeError, match=r"X at .*s\.zarr has dtype .* not numeric"):
        open_dataset(tmp_path / "s.zarr")


def test_no_rows_is_refused(tmp_path):
    zarr.create_array(str(tmp_path / "e.zarr"), shape=(0, 3), chunks=(10, 3), dtype="f8")
    with pytest.raises(ValueError, match=r"X at .*e\.zarr has 0 rows"):
        open_dataset(tmp_path / "e.zarr")


@pytest.mark.parametrize("writer", WRITERS)
def test_missing_chunk_file_is_named(tmp_path, zarr_format, chunks, writer):
    path = tmp_path / "x.zarr"
    array = write(path, rows(), chunks, zarr_format, writer)
    grid_cols = -(-N_FEATURES // chunks[1])
    lost = (2, grid_cols - 1)  # the last column chunk of the third row chunk
    key = array.metadata.encode_chunk_key(lost)
    os.remove(chunk_file(path, array, lost))
    start, stop = 2 * chunks[0], min(3 * chunks[0], N_ROWS)
    with pytest.raises(MissingChunkError) as info:
        open_dataset(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{key} (rows {start}–{stop - 1})" in message
    assert "1 of" in message and "missing_chunks='fill'" in message
    assert info.value.keys == (key,) and info.value.rows == ((start, stop),)
    # the estimator's way in (a zarr.Array) checks too, and a failed fit leaves no model
    model = GaussianMixture(N_COMPONENTS, random_state=0)
    with pytest.raises(MissingChunkError, match=re.escape(key)):
        model.fit(zarr.open_array(str(path), mode="r"))
    assert not hasattr(model, "means_")


def test_many_missing_chunks_are_counted(tmp_path, zarr_format):
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), zarr_format)
    for i in (1, 3, 4, 5, 6, 7, 9):
        os.remove(chunk_file(path, array, (i, 0)))
    with pytest.raises(MissingChunkError, match=r"7 of 10 chunk\(s\).* and 2 more") as info:
        open_dataset(path)
    assert len(info.value.keys) == 7
    assert info.value.rows[-1] == (900, 1000)


def test_missing_chunks_fill_reads_the_fill_value(tmp_path):
    """The opt-out, for arrays whose all-fill chunks were never written on purpose."""
    path = tmp_path / "x.zarr"
    X = rows()
    array = write(path, X, (100, 4), 2, writer="zarr_defaults")  # v2 default fill: 0
    os.remove(chunk_file(path, array, (3, 0)))
    got = open_dataset(path, missing_chunks="fill").compute()
    np.testing.assert_array_equal(got[300:400], 0.0)
    np.testing.assert_array_equal(
        np.delete(got, np.s_[300:400], 0), np.delete(X, np.s_[300:400], 0)
    )
    with pytest.raises(ValueError, match="missing_chunks='ignore' is not one of"):
        open_dataset(path, missing_chunks="ignore")


def test_chunk_check_lists_keys_without_reading_chunks(tmp_path, zarr_format):
    """Every chunk corrupt, yet opening succeeds: the check reads no chunk data."""
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), zarr_format)
    for i in range(10):
        flip_bit(chunk_file(path, array, (i, 0)))
    Xd = open_dataset(path)
    with pytest.raises(ChunkReadError):
        Xd.compute()


# -- damage found while reading --------------------------------------------------------
@pytest.mark.parametrize("damage", [truncate, flip_bit], ids=["truncated", "bit_flipped"])
def test_damaged_chunk_names_rows_path_and_chunk(tmp_path, zarr_format, chunks, damage):
    path = tmp_path / "x.zarr"
    array = write(path, rows(), chunks, zarr_format)  # checksummed by distmix
    coords = (1, 0)
    key = array.metadata.encode_chunk_key(coords)
    damage(chunk_file(path, array, coords))
    chunk_rows = chunks[0]
    block = f"rows {chunk_rows}–{min(2 * chunk_rows, N_ROWS) - 1}"
    Xd = open_dataset(path)
    with pytest.raises(ChunkReadError) as info:
        Xd.compute()
    message = str(info.value)
    assert message.startswith(f"reading {block} of {path} failed: chunk {key} ({block})")
    assert "checksum" in message
    assert isinstance(info.value.__cause__, Exception)  # the original error, chained
    assert info.value.key == key and info.value.path == str(path)
    # the other blocks still read
    np.testing.assert_array_equal(Xd.blocks[0].compute(), rows()[:chunk_rows])


def test_damaged_chunk_inside_a_larger_block_is_located(tmp_path):
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), 3)
    flip_bit(chunk_file(path, array, (5, 0)))
    with pytest.raises(
        ChunkReadError, match=r"^reading rows 400–799 of .* chunk c/5/0 \(rows 500–599\)"
    ):
        open_dataset(path, block_rows=400).compute()


def test_truncated_chunk_without_checksum_is_still_an_error(tmp_path, zarr_format):
    """Zarr's default codecs compress; a cut compressed chunk fails to decode."""
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), zarr_format, writer="zarr_defaults")
    truncate(chunk_file(path, array, (4, 0)))
    with pytest.raises(ChunkReadError, match=r"reading rows 400–499 of .*x\.zarr failed"):
        open_dataset(path).compute()


def test_damaged_chunk_stops_the_fit(tmp_path):
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (128, 4), 3)
    truncate(chunk_file(path, array, (6, 0)))
    model = GaussianMixture(N_COMPONENTS, random_state=0)
    with pytest.raises(
        ChunkReadError, match=r"reading rows 768–895 of .*x\.zarr failed: chunk c/6/0"
    ):
        model.fit(open_dataset(path))
    assert not hasattr(model, "means_")


def test_read_errors_survive_pickling(tmp_path):
    """Distributed workers send errors back pickled: message and fields survive."""
    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), 3)
    flip_bit(chunk_file(path, array, (2, 0)))
    with pytest.raises(ChunkReadError) as info:
        open_dataset(path).compute()
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.key == "c/2/0" and copy.rows == (200, 300)
    os.remove(chunk_file(path, array, (2, 0)))
    with pytest.raises(MissingChunkError) as missing:
        open_dataset(path)
    copy = pickle.loads(pickle.dumps(missing.value))
    assert str(copy) == str(missing.value) and copy.keys == ("c/2/0",)


# -- fitting ---------------------------------------------------------------------------
@pytest.mark.parametrize("block_rows", [None, 300])
def test_fit_equals_in_memory_fit(tmp_path, zarr_format, chunks, block_rows):
    X = rows()
    write(tmp_path / "x.zarr", X, chunks, zarr_format)
    Xd = open_dataset(tmp_path / "x.zarr", block_rows=block_rows)
    kwargs = dict(n_components=N_COMPONENTS, random_state=0, tol=1e-8, max_iter=200)
    on_disk = GaussianMixture(**kwargs).fit(Xd)
    in_memory = GaussianMixture(block_size=Xd.chunks[0], **kwargs).fit(X)
    assert on_disk.n_iter_ > 10 and on_disk.converged_
    assert_same_fit(on_disk, in_memory)
    np.testing.assert_array_equal(on_disk.predict(Xd).compute(), in_memory.predict(X))


def test_fit_on_zarr_array_rounds_block_size_to_chunks(tmp_path):
    X = rows()
    array = write(tmp_path / "x.zarr", X, (100, 4), 3)
    kwargs = dict(n_components=N_COMPONENTS, random_state=1, tol=1e-8)
    on_disk = GaussianMixture(block_size=250, **kwargs).fit(array)
    in_memory = GaussianMixture(block_size=200, **kwargs).fit(X)
    assert_same_fit(on_disk, in_memory)


def test_nonfinite_row_is_named_by_its_global_index(tmp_path, zarr_format):
    X = rows()
    X[537, 2] = np.nan
    X[912, 0] = np.inf
    write(tmp_path / "x.zarr", X, (128, 4), zarr_format)
    with pytest.raises(NonFiniteInputError, match=r"2 row\(s\); the first is row 537"):
        GaussianMixture(N_COMPONENTS, random_state=0).fit(open_dataset(tmp_path / "x.zarr"))


# -- what distmix writes --------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_written_arrays_end_with_a_checksum_and_fill_with_nan(tmp_path, fmt):
    array = write_zarr(str(tmp_path / "d.zarr"), 700, 3, 2, seed=4, chunk_rows=256, zarr_format=fmt)
    reopened = zarr.open_array(str(tmp_path / "d.zarr"), mode="r")
    assert np.isnan(reopened.fill_value)
    if fmt == 3:
        assert reopened.metadata.codecs[-1].to_dict() == {"name": "crc32c"}
    else:
        assert reopened.metadata.compressor.codec_id == "crc32c"
    assert reopened.attrs["distmix_generator"]["seed"] == 4
    truth = TrueMixture.from_attrs(reopened.attrs)
    np.testing.assert_array_equal(truth.means, random_mixture(3, 2, 4).means)
    np.testing.assert_array_equal(reopened[:], sample_rows(truth, 0, 700, 4, 256))
    assert array.shape == (700, 3)


def test_compressed_arrays_keep_the_checksum_last(tmp_path):
    from zarr.codecs import ZstdCodec

    array = create_zarr_array(str(tmp_path / "z.zarr"), (100, 2), 50, compressors=ZstdCodec())
    assert [c.to_dict()["name"] for c in array.metadata.codecs] == ["bytes", "zstd", "crc32c"]
    with pytest.raises(ValueError, match="float arrays"):
        create_zarr_array(str(tmp_path / "i.zarr"), (10, 2), 5, dtype="i8")
    with pytest.raises(ValueError, match="single compressor slot"):
        create_zarr_array(
            str(tmp_path / "v2.zarr"), (10, 2), 5, zarr_format=2, compressors=ZstdCodec()
        )


def test_chunks_of_only_nan_are_written(tmp_path):
    """An all-NaN chunk is stored too, so that an absent file always means loss."""
    path = tmp_path / "x.zarr"
    array = create_zarr_array(str(path), (300, 2), 100)
    array[:] = np.nan
    open_dataset(path)  # no MissingChunkError


def test_generated_rows_follow_the_mixture(tmp_path):
    """The per-component product equals the textbook μ_k + L_k z (an independent oracle)."""
    truth = random_mixture(3, 4, seed=2)
    got = sample_rows(truth, 0, 500, seed=2, chunk_rows=200)
    chol = np.linalg.cholesky(truth.covariances)
    expected = []
    for chunk, start in enumerate(range(0, 500, 200)):
        rng = np.random.default_rng([2, 1, chunk])
        n = min(200, 500 - start)
        labels = rng.choice(4, size=n, p=truth.weights)
        z = rng.standard_normal(size=(n, 3))
        expected.append(truth.means[labels] + np.einsum("ned,nd->ne", chol[labels], z))
    np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-12, atol=1e-12)


def test_generated_dataset_is_a_valid_source(tmp_path):
    write_zarr(str(tmp_path / "d.zarr"), 2000, 3, 2, seed=0, chunk_rows=300)
    Xd = open_dataset(tmp_path / "d.zarr")
    assert Xd.chunks[0] == (300,) * 6 + (200,)
    assert isinstance(Xd, da.Array) and np.isfinite(Xd.sum().compute())


def test_read_error_from_a_worker_process_names_rows_path_and_chunk(tmp_path):
    """On a real cluster the chain is lost in transit; the message carries the cause."""
    from distributed import Client, LocalCluster

    path = tmp_path / "x.zarr"
    array = write(path, rows(), (100, 4), 3)
    truncate(chunk_file(path, array, (3, 0)))
    with (
        LocalCluster(
            n_workers=1,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        with pytest.raises(ChunkReadError, match=r"rows 300–399 of .*x\.zarr.*c/3/0.*checksum"):
            client.compute(open_dataset(path).sum()).result()
