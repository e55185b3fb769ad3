import pytest

from tests.helpers import make_keyring


@pytest.fixture
def keyring(tmp_path):
    return make_keyring(tmp_path)
