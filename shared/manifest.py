"""Signed weight manifests: what a robot checks before it loads a new policy.

Two signed things, both ed25519 with the publisher's key (robots hold its public key from
enrolment):

- a **Manifest**, once per version: policy version, parent version, artifact sha256 and size,
  action tokenizer and observation specs, creation time. It says what the bytes are.
- an **Assignment**, once per fleet decision: "robot R runs version V", with a fleet-wide
  sequence number that only grows (kept in the fleet state, so it survives publisher
  restarts) and a ``downgrade`` flag that only a fleet rollback, a pin to an older version or
  the end of a canary sets. It says what a robot should run.

``ManifestVerifier`` is the robot's side. It refuses, with a reason: an unsigned or badly
signed manifest or assignment, an assignment for another robot, a replayed or out-of-order
assignment (sequence not above the last one applied), an older version than the running one
unless the assignment is a signed downgrade, and an artifact whose bytes do not match the
manifest's size or hash.

A third signed thing, optional, sits beside a version's manifest: its **DeltaIndex**
(``deltas.msgpack`` in the manifest's folder), the deltas (``vlac.shared.delta``) from which
the version's artifact can be rebuilt on a robot that runs one of their base versions, each
with its base's sha256 and its own size and sha256. The manifest itself is unchanged by
deltas, byte for byte, so a robot that predates them reads every version as before and
downloads the whole artifact; a robot that finds no index (a publisher that predates them,
or one that wrote no delta) does the same. The index has a ``format_version`` of its own:
one this robot does not speak is refused by name (``check_delta_index``), and the robot
downloads the whole artifact. A rebuilt artifact gets exactly the checks of a downloaded
one: the manifest's size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)


class ManifestError(ValueError):
    """The manifest or artifact must not be used; the message says why."""


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    parent_version: int
    sha256: str
    size: int
    artifact: str
    """Object-store key (or file name) of the artifact."""
    action_tokenizer: dict[str, Any]
    observation: dict[str, Any]
    created_at: float

    def payload(self) -> bytes:
        """Canonical bytes that are signed (sorted-key JSON)."""
        return json.dumps(msgspec.to_builtins(self), sort_keys=True,
                          separators=(",", ":")).encode()


class SignedManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    manifest: Manifest
    signature: bytes


class Assignment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A fleet decision for one robot; signed as its msgpack bytes."""

    robot_id: str
    version: int
    seq: int
    """Fleet-wide, strictly increasing: a robot never applies a sequence it has passed."""
    manifest_key: str
    artifact_key: str
    downgrade: bool
    """True only for a fleet rollback, a pin to an older version or the end of a canary."""
    reason: str
    issued_at: float


DELTA_INDEX_VERSION = 1


class DeltaRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One delta: from the artifact of ``base_version`` (``base_sha256``) to the index's."""

    base_version: int
    base_sha256: str
    key: str
    """Object-store key of the encoded delta."""
    size: int
    sha256: str


class DeltaIndex(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The deltas that rebuild version ``version``'s artifact (``sha256``, the manifest's);
    signed as its msgpack bytes."""

    format_version: int
    version: int
    sha256: str
    deltas: list[DeltaRef]

    def base(self, version: int) -> DeltaRef | None:
        return next((d for d in self.deltas if d.base_version == version), None)


class SignedDeltaIndex(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: bytes
    signature: bytes


class _IndexHeader(msgspec.Struct):
    """Read before the full index, not refusing unknown fields, to name a newer format."""

    format_version: int = 0


def delta_index_key(manifest_key: str) -> str:
    """Where a version's delta index lives: beside its manifest."""
    return posixpath.join(posixpath.dirname(manifest_key), "deltas.msgpack")


def sign_delta_index(index: DeltaIndex, key: Ed25519PrivateKey) -> bytes:
    """The encoded ``SignedDeltaIndex`` to store at ``delta_index_key``."""
    payload = msgspec.msgpack.encode(index)
    return msgspec.msgpack.encode(SignedDeltaIndex(payload=payload, signature=key.sign(payload)))


def generate_keypair(directory: str | Path, name: str = "publisher") -> tuple[Path, Path]:
    """Write ``name.ed25519`` (private, mode 600) and ``name.ed25519.pub`` (PEM)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = directory / f"{name}.ed25519"
    pub = directory / f"{name}.ed25519.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def load_private(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError(f"{path} is not an ed25519 private key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError(f"{path} is not an ed25519 public key")
    return key


def file_digest(path: str | Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def make_manifest(artifact: str | Path, version: int, parent_version: int,
                  action_tokenizer: dict, observation: dict) -> Manifest:
    digest, size = file_digest(artifact)
    return Manifest(version=version, parent_version=parent_version, sha256=digest, size=size,
                    artifact=Path(artifact).name, action_tokenizer=action_tokenizer,
                    observation=observation, created_at=time.time())


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> SignedManifest:
    return SignedManifest(manifest=manifest, signature=key.sign(manifest.payload()))


def encode(signed: SignedManifest) -> bytes:
    return msgspec.msgpack.encode(signed)


def decode(data: bytes) -> SignedManifest:
    try:
        return msgspec.msgpack.decode(data, type=SignedManifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ManifestError(f"not a signed manifest: {e}") from None


def sign_assignment(a: Assignment, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(payload, signature): the payload is the assignment's msgpack bytes."""
    payload = msgspec.msgpack.encode(a)
    return payload, key.sign(payload)


class ManifestVerifier:
    """The robot's side: trusts one publisher key; remembers the running version and the last
    assignment sequence it applied (persist both with the robot's state)."""

    def __init__(self, publisher_key: Ed25519PublicKey, trusted_version: int = -1,
                 robot_id: str = "", last_seq: int = -1) -> None:
        self.key = publisher_key
        self.trusted_version = trusted_version
        self.robot_id = robot_id
        self.last_seq = last_seq

    def _verify(self, what: str, signature: bytes, payload: bytes) -> None:
        if not signature:
            raise ManifestError(f"{what} is unsigned; refusing it")
        try:
            self.key.verify(signature, payload)
        except InvalidSignature:
            raise ManifestError(f"{what} signature does not verify against the publisher "
                                "key this robot was enrolled with; refusing it") from None

    def check_signature(self, signed: SignedManifest) -> Manifest:
        self._verify("manifest", signed.signature, signed.manifest.payload())
        return signed.manifest

    def check_assignment(self, payload: bytes, signature: bytes) -> Assignment:
        """Signature, addressee and order of an assignment (before anything is downloaded)."""
        self._verify("assignment", signature, payload)
        try:
            a = msgspec.msgpack.decode(payload, type=Assignment)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ManifestError(f"not an assignment: {e}") from None
        if self.robot_id and a.robot_id != self.robot_id:
            raise ManifestError(f"assignment is for robot {a.robot_id!r}, not {self.robot_id!r}")
        if a.seq <= self.last_seq:
            raise ManifestError(f"assignment seq {a.seq} is not after the last applied "
                                f"({self.last_seq}): a replay or an out-of-date announcement")
        if a.version < self.trusted_version and not a.downgrade:
            raise ManifestError(f"version {a.version} is older than the running version "
                                f"{self.trusted_version} and the assignment is not a signed "
                                "rollback/pin; refusing it")
        return a

    def check_manifest(self, signed: SignedManifest, a: Assignment) -> Manifest:
        m = self.check_signature(signed)
        if m.version != a.version:
            raise ManifestError(f"manifest is for version {m.version}, the assignment names "
                                f"{a.version}")
        return m

    def check_artifact(self, m: Manifest, artifact: str | Path) -> None:
        digest, size = file_digest(artifact)
        if size != m.size:
            raise ManifestError(f"artifact is {size} bytes, the manifest says {m.size} "
                                "(truncated or wrong download)")
        if digest != m.sha256:
            raise ManifestError("artifact sha256 does not match the manifest (corrupted or "
                                "tampered); refusing it")

    def check_delta_index(self, data: bytes, m: Manifest) -> DeltaIndex:
        """The signed delta index in ``data``, if it is genuine and names ``m``'s artifact."""
        try:
            signed = msgspec.msgpack.decode(data, type=SignedDeltaIndex)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ManifestError(f"not a signed delta index: {e}") from None
        self._verify("delta index", signed.signature, signed.payload)
        try:
            head = msgspec.msgpack.decode(signed.payload, type=_IndexHeader)
            if head.format_version != DELTA_INDEX_VERSION:
                raise ManifestError(f"delta index format version {head.format_version}; this "
                                    f"robot reads version {DELTA_INDEX_VERSION} (a publisher "
                                    "newer than this robot's software)")
            index = msgspec.msgpack.decode(signed.payload, type=DeltaIndex)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ManifestError(f"not a delta index: {e}") from None
        if (index.version, index.sha256) != (m.version, m.sha256):
            raise ManifestError(f"delta index is for version {index.version} "
                                f"(sha256 {index.sha256[:12]}), the manifest for {m.version} "
                                f"(sha256 {m.sha256[:12]})")
        return index

    def accept(self, signed: SignedManifest, artifact: str | Path) -> Manifest:
        """Manifest-only check (no fleet assignment): signature, newer version, bytes."""
        m = self.check_signature(signed)
        if m.version <= self.trusted_version:
            raise ManifestError(f"manifest version {m.version} is not newer than the running "
                                f"version {self.trusted_version} (a replay or an old "
                                "announcement); a fleet rollback must be signed as one")
        self.check_artifact(m, artifact)
        return m

    def commit(self, manifest: Manifest, assignment: Assignment | None = None) -> None:
        """Call after the new policy passed its health check and is running."""
        self.trusted_version = manifest.version
        if assignment is not None:
            self.last_seq = assignment.seq
