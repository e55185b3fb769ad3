import msgspec
import pytest

from vlac.shared import manifest as mf

TOK = {"low": [-1] * 4, "high": [1] * 4, "bins": 256}
OBS = {"camera": "corner", "image_shape": [128, 128, 3], "proprio_dim": 4}


@pytest.fixture
def setup(tmp_path):
    priv, pub = mf.generate_keypair(tmp_path / "keys")
    art = tmp_path / "actor_v1.onnx"
    art.write_bytes(b"weights-v1" * 100)
    return mf.load_private(priv), mf.load_public(pub), art, tmp_path


def signed(key, art, version, parent, **kw):
    return mf.sign(mf.make_manifest(art, version, parent, TOK, OBS, **kw), key)


def test_accepts_a_newer_signed_manifest(setup):
    key, pub, art, _ = setup
    s = mf.decode(mf.encode(signed(key, art, 1, 0)))
    v = mf.ManifestVerifier(pub, trusted_version=0)
    m = v.accept(s, art)
    assert m.version == 1 and m.size == 1000 and len(m.sha256) == 64
    v.commit(m)
    assert v.trusted_version == 1


def test_refuses_bad_signatures_and_unsigned(setup, tmp_path):
    key, pub, art, _ = setup
    s = signed(key, art, 1, 0)
    forged = msgspec.structs.replace(s, manifest=msgspec.structs.replace(s.manifest, version=9))
    v = mf.ManifestVerifier(pub, 0)
    with pytest.raises(mf.ManifestError, match="does not verify"):
        v.accept(forged, art)
    with pytest.raises(mf.ManifestError, match="unsigned"):
        v.accept(msgspec.structs.replace(s, signature=b""), art)
    other_priv, _ = mf.generate_keypair(tmp_path / "other")
    with pytest.raises(mf.ManifestError, match="does not verify"):
        v.accept(signed(mf.load_private(other_priv), art, 1, 0), art)


def test_refuses_replays_and_old_versions(setup):
    key, pub, art, _ = setup
    v = mf.ManifestVerifier(pub, trusted_version=3)
    for version in (3, 2):
        with pytest.raises(mf.ManifestError, match="not newer"):
            v.accept(signed(key, art, version, version - 1), art)


def assignment(key, version, seq, robot="robot-0", downgrade=False):
    a = mf.Assignment(robot_id=robot, version=version, seq=seq, manifest_key="m",
                      artifact_key="a", downgrade=downgrade, reason="test", issued_at=0.0)
    return mf.sign_assignment(a, key)


def test_assignments_are_checked_for_signature_robot_order_and_downgrade(setup, tmp_path):
    key, pub, art, _ = setup
    v = mf.ManifestVerifier(pub, trusted_version=3, robot_id="robot-0", last_seq=10)
    a = v.check_assignment(*assignment(key, 4, 11))
    assert (a.version, a.seq) == (4, 11)
    payload, sig = assignment(key, 4, 11)
    with pytest.raises(mf.ManifestError, match="does not verify"):
        v.check_assignment(payload.replace(b"robot-0", b"robot-1"), sig)
    with pytest.raises(mf.ManifestError, match="unsigned"):
        v.check_assignment(payload, b"")
    with pytest.raises(mf.ManifestError, match="not 'robot-0'"):
        v.check_assignment(*assignment(key, 4, 11, robot="robot-1"))
    for seq in (10, 9):
        with pytest.raises(mf.ManifestError, match="replay"):
            v.check_assignment(*assignment(key, 4, seq))
    with pytest.raises(mf.ManifestError, match="older than the running"):
        v.check_assignment(*assignment(key, 2, 12))
    assert v.check_assignment(*assignment(key, 2, 12, downgrade=True)).version == 2
    m = signed(key, art, 4, 3)
    with pytest.raises(mf.ManifestError, match="names 2"):
        v.check_manifest(m, v.check_assignment(*assignment(key, 2, 12, downgrade=True)))
    a = v.check_assignment(*assignment(key, 4, 13))
    v.commit(v.check_manifest(m, a), a)
    assert (v.trusted_version, v.last_seq) == (4, 13)


def test_refuses_corrupted_and_truncated_artifacts(setup):
    key, pub, art, tmp = setup
    s = signed(key, art, 1, 0)
    v = mf.ManifestVerifier(pub, 0)
    truncated = tmp / "t.onnx"
    truncated.write_bytes(art.read_bytes()[:500])
    with pytest.raises(mf.ManifestError, match="truncated"):
        v.accept(s, truncated)
    corrupted = tmp / "c.onnx"
    data = bytearray(art.read_bytes())
    data[10] ^= 1
    corrupted.write_bytes(bytes(data))
    with pytest.raises(mf.ManifestError, match="sha256 does not match"):
        v.accept(s, corrupted)


def test_garbage_is_not_a_manifest():
    with pytest.raises(mf.ManifestError, match="not a signed manifest"):
        mf.decode(b"\x00\x01garbage")


MANIFEST_V1_FIELDS = ("version", "parent_version", "sha256", "size", "artifact",
                      "action_tokenizer", "observation", "created_at")
"""What every robot since signed manifests decodes (forbid_unknown_fields: one more field
and they refuse every version). Deltas left it alone; their index is a file of its own."""


def test_the_manifest_is_unchanged_so_robots_that_predate_deltas_read_it():
    assert mf.Manifest.__struct_fields__ == MANIFEST_V1_FIELDS
    assert mf.SignedManifest.__struct_fields__ == ("manifest", "signature")


def delta_index(m, **kw):
    fields = dict(format_version=mf.DELTA_INDEX_VERSION, version=m.version, sha256=m.sha256,
                  deltas=[mf.DeltaRef(base_version=m.version - 1, base_sha256="b" * 64,
                                      key="weights/v000002/delta-from-v000001.bin", size=10,
                                      sha256="d" * 64)])
    fields.update(kw)
    return mf.DeltaIndex(**fields)


def test_a_delta_index_is_signed_and_names_its_manifests_artifact(setup, tmp_path):
    key, pub, art, _ = setup
    m = signed(key, art, 2, 1).manifest
    v = mf.ManifestVerifier(pub, 1)
    index = v.check_delta_index(mf.sign_delta_index(delta_index(m), key), m)
    assert index.base(1).size == 10 and index.base(0) is None
    assert mf.delta_index_key("weights/v000002/manifest.msgpack") == \
        "weights/v000002/deltas.msgpack"
    other = mf.load_private(mf.generate_keypair(tmp_path / "other")[0])
    with pytest.raises(mf.ManifestError, match="does not verify"):
        v.check_delta_index(mf.sign_delta_index(delta_index(m), other), m)
    unsigned = msgspec.msgpack.encode(mf.SignedDeltaIndex(
        payload=msgspec.msgpack.encode(delta_index(m)), signature=b""))
    with pytest.raises(mf.ManifestError, match="unsigned"):
        v.check_delta_index(unsigned, m)
    for wrong in ({"version": 3}, {"sha256": "0" * 64}):
        with pytest.raises(mf.ManifestError, match="delta index is for version"):
            v.check_delta_index(mf.sign_delta_index(delta_index(m, **wrong), key), m)
    with pytest.raises(mf.ManifestError, match="not a signed delta index"):
        v.check_delta_index(b"\x93junk", m)


def test_a_newer_delta_index_format_is_refused_by_name(setup):
    key, pub, art, _ = setup
    m = signed(key, art, 2, 1).manifest

    class FutureIndex(msgspec.Struct):  # a later format: another field, another version
        format_version: int
        version: int
        sha256: str
        deltas: list
        chunks: list

    payload = msgspec.msgpack.encode(FutureIndex(2, m.version, m.sha256, [], []))
    data = msgspec.msgpack.encode(mf.SignedDeltaIndex(payload=payload,
                                                      signature=key.sign(payload)))
    with pytest.raises(mf.ManifestError, match="delta index format version 2; this robot "
                                               "reads version 1"):
        mf.ManifestVerifier(pub, 1).check_delta_index(data, m)
