"""How a version's artifact reaches the robot: rebuilt from a delta when it can, else whole.

``fetch`` is the updater's step 2 (after the manifest's signature):

1. the version's folder already holds bytes that match the manifest: nothing to move;
2. by delta: the signed delta index beside the manifest (``vlac.shared.manifest``) names a
   delta whose base is the running version; the robot downloads that delta, checks its size
   and sha256 against the index, rebuilds the artifact (``vlac.shared.delta``, which checks
   that the running artifact's bytes are the delta's base) and checks the result against the
   manifest's size and sha256, the checks a full download gets, before it writes the file;
3. whole: anything else (first install, a running version that is no base, no index, an
   index or a delta that does not verify, a rebuild that does not match, the store failing
   on the delta) downloads the full artifact, and ``Fetched.why_full`` says why. A full
   download that does not match is fetched once more before it is called corrupted
   (``ManifestError``: final for that assignment); an object-store failure there propagates
   (``ObjectStoreError``: the updater retries with backoff, the delta included).

Nothing a delta brings can make the robot run other bytes than the signed manifest names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vlac.shared import delta
from vlac.shared import manifest as mf
from vlac.shared.fsutil import write_atomic
from vlac.shared.objstore import ObjectStore, ObjectStoreError


@dataclass
class Fetched:
    path: Path
    via: str
    """``delta``, ``full`` or ``on disk``."""
    moved: int
    """Bytes read from the object store (delta index, delta, artifact) for this version."""
    seconds: float
    """Transfer, rebuild and sha256 checks."""
    why_full: str = ""
    """Why the artifact was downloaded whole ("" otherwise)."""
    expected: bool = True
    """False when a delta should have worked (corrupted, unavailable): worth a warning."""


class NoDelta(Exception):
    """The delta path ends here; the message says why, ``moved`` what it read on the way."""

    def __init__(self, reason: str, moved: int = 0, expected: bool = False) -> None:
        super().__init__(reason)
        self.moved, self.expected = moved, expected


def _index(store: ObjectStore, verifier: mf.ManifestVerifier, a: mf.Assignment,
           m: mf.Manifest) -> tuple[mf.DeltaIndex, int]:
    key = mf.delta_index_key(a.manifest_key)
    try:
        raw = store.get_bytes(key)
    except ObjectStoreError as e:
        if str(e).startswith("no object"):
            raise NoDelta(f"version {m.version} has no delta index (published without "
                          "deltas)", expected=True) from None
        raise NoDelta(f"delta index unavailable: {e}") from None
    try:
        return verifier.check_delta_index(raw, m), len(raw)
    except mf.ManifestError as e:
        raise NoDelta(f"delta index refused: {e}", len(raw)) from None


def by_delta(store: ObjectStore, verifier: mf.ManifestVerifier, a: mf.Assignment,
             m: mf.Manifest, dest: Path, base: tuple[int, Path] | None) -> int:
    """Rebuild ``m``'s artifact at ``dest`` from a delta against ``base`` (running version,
    its artifact); the bytes moved, or ``NoDelta``."""
    if base is None or not base[1].exists():
        raise NoDelta("no running artifact to patch", expected=True)
    index, moved = _index(store, verifier, a, m)
    ref = index.base(base[0])
    if ref is None:
        raise NoDelta(f"the running version {base[0]} is not a delta base of version "
                      f"{m.version} (bases: {[d.base_version for d in index.deltas]})", moved,
                      expected=True)
    if ref.size >= m.size:  # never moves more than the artifact (a hostile index's bound)
        raise NoDelta(f"the indexed delta ({ref.size} bytes) is not smaller than the "
                      f"artifact ({m.size})", moved)
    try:
        blob = store.get_bytes(ref.key)
    except ObjectStoreError as e:
        raise NoDelta(f"delta {ref.key} unavailable: {e}", moved) from None
    moved += len(blob)
    if len(blob) != ref.size or delta.sha256(blob) != ref.sha256:
        raise NoDelta(f"delta {ref.key} does not match its signed index (corrupted or "
                      "tampered)", moved)
    try:  # apply checks that the running artifact is the delta's base (size and sha256)
        new = delta.apply(base[1].read_bytes(), blob, m.size)
    except (delta.DeltaError, OSError) as e:
        raise NoDelta(f"delta {ref.key} cannot be applied: {e}", moved) from None
    if delta.sha256(new) != m.sha256:  # the check a download gets, before anything is written
        raise NoDelta(f"the artifact rebuilt from {ref.key} does not match the manifest's "
                      "sha256", moved)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, new)  # durable: state.json will name it as the last-known-good
    return moved


def download(store: ObjectStore, verifier: mf.ManifestVerifier, a: mf.Assignment,
             m: mf.Manifest, dest: Path) -> int:
    """The whole artifact to ``dest``, checked; fetched once more before it counts as
    corrupted (``ManifestError``). The bytes moved."""
    store.get_file(a.artifact_key, dest)
    moved = dest.stat().st_size
    try:
        verifier.check_artifact(m, dest)
        return moved
    except mf.ManifestError:
        dest.unlink(missing_ok=True)  # one fresh download before calling it corrupted
    store.get_file(a.artifact_key, dest)
    moved += dest.stat().st_size
    try:
        verifier.check_artifact(m, dest)
    except mf.ManifestError:
        dest.unlink(missing_ok=True)
        raise
    return moved


def fetch(store: ObjectStore, verifier: mf.ManifestVerifier, a: mf.Assignment,
          m: mf.Manifest, dest: Path, base: tuple[int, Path] | None) -> Fetched:
    """``m``'s verified artifact at ``dest`` (see the module docstring)."""
    t0 = time.perf_counter()
    if dest.exists():
        try:
            verifier.check_artifact(m, dest)
            return Fetched(dest, "on disk", 0, time.perf_counter() - t0)
        except mf.ManifestError:
            dest.unlink()
    try:
        moved = by_delta(store, verifier, a, m, dest, base)
        return Fetched(dest, "delta", moved, time.perf_counter() - t0)
    except NoDelta as e:
        why, moved, expected = str(e), e.moved, e.expected
    moved += download(store, verifier, a, m, dest)
    return Fetched(dest, "full", moved, time.perf_counter() - t0, why, expected)
