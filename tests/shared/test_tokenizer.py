import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vlac.shared.tokenizer import ActionTokenizer


@given(bins=st.integers(2, 1024),
       actions=hnp.arrays(np.float64, (7, 4), elements=st.floats(-1, 1)))
@settings(max_examples=200, deadline=None)
def test_round_trip_error_is_at_most_half_a_bin(bins, actions):
    tok = ActionTokenizer([-1] * 4, [1] * 4, bins)
    tokens = tok.encode(actions)
    assert tokens.dtype == np.int32 and tokens.shape == (7, 4)
    assert tokens.min() >= 0 and tokens.max() < bins
    err = np.abs(tok.decode(tokens) - actions)
    assert (err <= tok.max_error + 1e-6).all()


def test_default_256_bins_bound():
    tok = ActionTokenizer([-1, -2], [1, 2])
    assert tok.bins == 256
    np.testing.assert_allclose(tok.max_error, [1 / 256, 2 / 256])


@given(actions=hnp.arrays(np.float64, (5, 3), elements=st.floats(-100, 100)))
@settings(max_examples=100, deadline=None)
def test_out_of_box_actions_are_clipped(actions):
    tok = ActionTokenizer([-1, 0, -0.5], [1, 2, 0.5], 64)
    back = tok.decode(tok.encode(actions))
    clipped = np.clip(actions, tok.low, tok.high)
    assert (np.abs(back - clipped) <= tok.max_error + 1e-6).all()


def test_extremes_map_to_first_and_last_token():
    tok = ActionTokenizer([-1], [1], 10)
    assert tok.encode(np.array([[-1.0], [1.0], [5.0], [-5.0]])).ravel().tolist() == [0, 9, 9, 0]


def test_bad_inputs_are_named():
    tok = ActionTokenizer([-1, -1], [1, 1], 8)
    with pytest.raises(ValueError, match="3 dims"):
        tok.encode(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.array([np.nan, 0]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        tok.decode(np.array([0, 8]))
    with pytest.raises(ValueError, match="greater than"):
        ActionTokenizer([1], [1])
    with pytest.raises(ValueError, match="bins=1"):
        ActionTokenizer([0], [1], 1)
