"""The object store interface on a local folder and on a real S3 server (Ceph radosgw)."""

import os
import uuid

import pytest

from vlac.shared.objstore import (
    LocalObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    download_prefix,
    open_store,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    ep = request.getfixturevalue("s3_endpoint")
    return S3ObjectStore(f"vlac-{uuid.uuid4().hex[:8]}", "fleet", endpoint_url=ep["endpoint"],
                         access_key=ep["access_key"], secret_key=ep["secret_key"],
                         create_bucket=True)


def test_round_trips_and_listing(store, tmp_path):
    store.put_bytes("weights/v1/manifest.msgpack", b"manifest")
    big = os.urandom(9 << 20)  # over the multipart threshold on S3
    src = tmp_path / "actor.onnx"
    src.write_bytes(big)
    store.put_file("weights/v1/actor.onnx", src)
    assert store.get_bytes("weights/v1/manifest.msgpack") == b"manifest"
    out = store.get_file("weights/v1/actor.onnx", tmp_path / "dl" / "actor.onnx")
    assert out.read_bytes() == big
    assert store.exists("weights/v1/actor.onnx") and not store.exists("weights/v2/actor.onnx")
    assert store.list("weights/") == ["weights/v1/actor.onnx", "weights/v1/manifest.msgpack"]
    store.delete("weights/v1/manifest.msgpack")
    assert store.list() == ["weights/v1/actor.onnx"]


def test_download_prefix_fetches_a_folder(store, tmp_path):
    """A checkpoint folder under a prefix comes down whole, relative paths kept; a prefix
    that merely starts the same (critics/tiny-2) is not part of it."""
    files = {"config.json": b"{}", "model.safetensors": os.urandom(1000),
             "tokenizer/vocab.txt": b"a\nb\n"}
    for name, data in files.items():
        store.put_bytes(f"critics/tiny/{name}", data)
    store.put_bytes("critics/tiny-2/config.json", b"other")
    dest = download_prefix(store, "critics/tiny/", tmp_path / "ck")
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
           if p.is_file()}
    assert got == files
    with pytest.raises(ObjectStoreError, match="nothing under 'critics/none/'"):
        download_prefix(store, "critics/none", tmp_path / "none")


def test_missing_objects_and_bad_keys(store, tmp_path):
    with pytest.raises(ObjectStoreError, match="no object nope"):
        store.get_bytes("nope")
    with pytest.raises(ObjectStoreError, match="no object nope"):
        store.get_file("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".tmp-*"))
    for bad in ("../etc/passwd", "a//b", "/abs", "a/../b"):
        with pytest.raises(ObjectStoreError, match="not a valid object key"):
            store.put_bytes(bad, b"x")


def test_unreachable_s3_endpoint_says_so():
    s = S3ObjectStore("b", endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b",
                      timeout_s=1, retries=1)
    with pytest.raises(ObjectStoreError, match="is the endpoint reachable"):
        s.get_bytes("k")


def test_open_store_picks_the_backend(tmp_path):
    assert isinstance(open_store(tmp_path), LocalObjectStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalObjectStore)
    s = open_store("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9")
    assert isinstance(s, S3ObjectStore) and s.bucket == "bucket" and s.prefix == "some/prefix"
