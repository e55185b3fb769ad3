"""Signed weight manifests: what a robot checks before it loads a new policy.

The publisher signs a manifest (policy version, parent version, artifact sha256 and size,
action tokenizer and observation specs, creation time) with its ed25519 key; robots hold the
publisher's public key from enrolment. ``ManifestVerifier.accept`` refuses, with a reason:
an unsigned or badly signed manifest, one whose artifact bytes do not match its hash or size,
and one older than or equal to the version the robot already trusts (a replay), unless it is
a signed fleet *rollback*, which names the version it rolls back from.

This is the part of weight publishing that both sides share; the publisher, object store
upload and the robot's updater build on it.
"""

from __future__ import annotations

import hashlib
import json
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
    rollback_from: int | None = None
    """Set on a fleet rollback: the newer version being rolled back from."""

    def payload(self) -> bytes:
        """Canonical bytes that are signed (sorted-key JSON)."""
        return json.dumps(msgspec.to_builtins(self), sort_keys=True,
                          separators=(",", ":")).encode()


class SignedManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    manifest: Manifest
    signature: bytes


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
                  action_tokenizer: dict, observation: dict,
                  rollback_from: int | None = None) -> Manifest:
    digest, size = file_digest(artifact)
    return Manifest(version=version, parent_version=parent_version, sha256=digest, size=size,
                    artifact=Path(artifact).name, action_tokenizer=action_tokenizer,
                    observation=observation, created_at=time.time(),
                    rollback_from=rollback_from)


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> SignedManifest:
    return SignedManifest(manifest=manifest, signature=key.sign(manifest.payload()))


def encode(signed: SignedManifest) -> bytes:
    return msgspec.msgpack.encode(signed)


def decode(data: bytes) -> SignedManifest:
    try:
        return msgspec.msgpack.decode(data, type=SignedManifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ManifestError(f"not a signed manifest: {e}") from None


class ManifestVerifier:
    """The robot's side: trusts one publisher key and remembers the version it runs."""

    def __init__(self, publisher_key: Ed25519PublicKey, trusted_version: int = -1) -> None:
        self.key = publisher_key
        self.trusted_version = trusted_version

    def check_signature(self, signed: SignedManifest) -> Manifest:
        if not signed.signature:
            raise ManifestError("manifest is unsigned; refusing it")
        try:
            self.key.verify(signed.signature, signed.manifest.payload())
        except InvalidSignature:
            raise ManifestError("manifest signature does not verify against the publisher "
                                "key this robot was enrolled with; refusing it") from None
        return signed.manifest

    def accept(self, signed: SignedManifest, artifact: str | Path) -> Manifest:
        """Verify signature, ordering and the artifact's bytes; return the manifest."""
        m = self.check_signature(signed)
        if m.rollback_from is not None:
            if m.rollback_from != self.trusted_version:
                raise ManifestError(f"rollback from version {m.rollback_from} does not apply: "
                                    f"this robot runs version {self.trusted_version}")
        elif m.version <= self.trusted_version:
            raise ManifestError(f"manifest version {m.version} is not newer than the running "
                                f"version {self.trusted_version} (a replay or an old "
                                "announcement); a fleet rollback must be signed as one")
        digest, size = file_digest(artifact)
        if size != m.size:
            raise ManifestError(f"artifact is {size} bytes, the manifest says {m.size} "
                                "(truncated or wrong download)")
        if digest != m.sha256:
            raise ManifestError("artifact sha256 does not match the manifest (corrupted or "
                                "tampered); refusing it")
        return m

    def commit(self, manifest: Manifest) -> None:
        """Call after the new policy passed its health check and is running."""
        self.trusted_version = manifest.version
