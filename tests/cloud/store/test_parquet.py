import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlac.cloud.store.parquet import arrow_to_numpy, vectors_to_arrow

ROWS = [[1.5, -2.0, 3.0], [4.0, 5.0, 6.25]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_])
def test_round_trip_keeps_values_shape_and_dtype(dtype):
    arr = (np.arange(12).reshape(4, 3) % 3).astype(dtype)
    col = vectors_to_arrow(arr)
    assert pa.types.is_fixed_size_list(col.type) and col.type.list_size == 3
    assert len(col) == 4 and col.type.value_type == pa.from_numpy_dtype(np.dtype(dtype))
    back = arrow_to_numpy(col)
    assert back.dtype == dtype and back.shape == (4, 3)
    np.testing.assert_array_equal(back, arr)


def test_cast_on_the_way_in_and_a_non_contiguous_input():
    arr = np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2]  # a strided view
    col = vectors_to_arrow(arr, np.float32)
    assert col.type == pa.list_(pa.float32(), 3)
    np.testing.assert_array_equal(arrow_to_numpy(col), arr.astype(np.float32))


@pytest.mark.parametrize("kind", [lambda t: pa.list_(t, 3), pa.list_, pa.large_list],
                         ids=["fixed_size_list", "list", "large_list"])
def test_every_list_type_reads_as_rows(kind):
    col = pa.array(ROWS, kind(pa.float32()))
    out = arrow_to_numpy(col)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.array(ROWS, np.float32))


def test_chunked_and_sliced_columns():
    chunked = pa.chunked_array([pa.array(ROWS, pa.list_(pa.float64(), 3)),
                                pa.array(ROWS[:1], pa.list_(pa.float64(), 3))])
    np.testing.assert_array_equal(arrow_to_numpy(chunked), np.array(ROWS + ROWS[:1]))
    sliced = pa.array(ROWS * 2, pa.list_(pa.float64())).slice(1, 2)  # offset into the values
    np.testing.assert_array_equal(arrow_to_numpy(sliced), np.array([ROWS[1], ROWS[0]]))
    empty = pa.chunked_array([], pa.list_(pa.int32(), 4))
    assert arrow_to_numpy(empty).shape == (0, 4)


def test_plain_columns_stay_one_dimensional():
    np.testing.assert_array_equal(arrow_to_numpy(pa.array([1, 2, 3], pa.int64())), [1, 2, 3])
    flags = arrow_to_numpy(pa.chunked_array([[True], [False, True]]))
    assert flags.dtype == bool and flags.tolist() == [True, False, True]


def test_round_trip_through_a_parquet_file(tmp_path):
    arr = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    pq.write_table(pa.table({"v": vectors_to_arrow(arr)}), tmp_path / "t.parquet",
                   row_group_size=3)  # three row groups: read back as a chunked column
    col = pq.read_table(tmp_path / "t.parquet").column("v")
    assert col.num_chunks > 1
    np.testing.assert_array_equal(arrow_to_numpy(col), arr)


def test_malformed_inputs_are_refused_in_words():
    with pytest.raises(ValueError, match=r"\(T, D\) array"):
        vectors_to_arrow(np.zeros(5))
    with pytest.raises(ValueError, match=r"\(T, D\) array"):
        vectors_to_arrow(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="same length"):
        arrow_to_numpy(pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float64())))
    with pytest.raises(ValueError, match="null"):
        arrow_to_numpy(pa.array([[1.0], None], pa.list_(pa.float64())))
