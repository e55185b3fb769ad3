"""The episode store on S3 (AWS, Ceph radosgw, any S3 endpoint): ``S3EpisodeStore``.

The folder store's layout, as object keys under the URI's prefix, and the same Parquet bytes
(``parquet.steps_to_table``, written to memory and PUT whole)::

    PREFIX/staging/<robot_id>/<episode_id>/chunk-0000000.parquet     episodes still arriving
    PREFIX/episodes/robot_id=<robot_id>/episode_id=<episode_id>/
        chunk-0000000.parquet ...  _episode.json                      complete episodes

S3 has no rename, so completion is made atomic by a manifest written last and read first:

1. A chunk is PUT once, to its staging key, with ``If-None-Match: *``: the server refuses
   (412) a key that exists, so a chunk another writer (an ingest shard, or this one before a
   crash) stored is not stored again and is answered "duplicate". A PUT returns once the
   object is durable; ingest acknowledges only then. (An endpoint that ignores the header
   overwrites the key with the same bytes: the key is deterministic, so it is still one
   copy.) The chunk's ``vlac`` metadata also travels as the object's user metadata (when it
   fits S3's 2 KB), so rebuilding an index costs a HEAD per chunk, not a GET.
2. When chunks 0 .. n_chunks-1 are all in staging, each is copied (server-side, no bytes
   through this host) to its key under ``episodes/``; then ``_episode.json`` is PUT, again
   only if absent, after every chunk it names exists; then the staging objects are deleted.
3. Readers (``list_episodes``, ``load_episode``, ``load_columns``) read manifests first and
   then only the chunks a manifest names: an episode is complete iff its manifest exists, so
   no reader sees part of one. (A pyarrow dataset over ``episodes/`` sees copies a writer
   made before dying between 2's copies and its manifest, until a writer finishes them.)
4. Every writer starts by listing the prefix: manifests make the complete set; staging
   objects of a complete episode are leftovers of a writer that died after 2's manifest and
   are deleted; the rest are rebuilt into the index from their metadata, and an episode
   whose chunks are all there (a writer SIGKILLed before its manifest) is completed.

Writers never lock each other (``vlac.cloud.store.base`` says how their indexes stay right).
There is no cross-host lock, so `vlac store gc` on S3 does not wait for running ingests; it
drops only episodes idle past ``--older-than``, and ingest collects those by itself anyway.

boto3 through ``vlac.shared.objstore.S3ObjectStore`` (its client, timeouts and retries),
rather than pyarrow's S3 filesystem: conditional PUTs (``If-None-Match``), user metadata and
server-side copies are what make the protocol exactly-once, and pyarrow's filesystem offers
none of them; objects hold Parquet bytes that pyarrow reads from memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from vlac.cloud.store.base import ChunkWrite, IndexedStore, Key, StoreUnavailable, chunk_name
from vlac.cloud.store.parquet import META_KEY, steps_to_table
from vlac.cloud.store.staging import Staged, staged_from_chunks
from vlac.shared.objstore import S3ObjectStore, open_store

log = logging.getLogger(__name__)

_MISSING = ("404", "NoSuchKey", "NotFound")
_EXISTS = ("PreconditionFailed",)  # If-None-Match: * on a key that is there
_USER_META_MAX = 1800  # S3 allows 2 KB of user metadata per object
MANIFEST = "_episode.json"


class S3EpisodeStore(IndexedStore):
    """Exactly-once store of episode chunks in an S3 bucket (see the module docstring).

    ``uri`` is ``s3://BUCKET/PREFIX?endpoint=URL`` (credentials: the usual AWS variables).
    ``read_only=True`` is a reader beside running writers: no recovery, no writes. ``fsync``
    is accepted for the folder store's signature: a PUT is durable when it returns."""

    def __init__(self, uri: str, *, fsync: bool = True, compression: str = "zstd",
                 read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.root = uri
        objects = open_store(uri)
        if not isinstance(objects, S3ObjectStore):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        self.client, self.bucket = objects.client, objects.bucket
        self.endpoint = self.client.meta.endpoint_url
        self._base = objects.prefix + "/" if objects.prefix else ""
        self.fsync = fsync
        self.compression = compression
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="store-s3")
        self._manifests: dict[Key, dict[str, Any]] = {}  # never rewritten: read each once
        self._check_bucket()
        if not read_only:
            self._recover()

    # ------------------------------------------------------------------ S3 calls
    def _check_bucket(self) -> None:
        """Fail at start, naming the URI and the fix, if the bucket cannot be used."""
        where = f"the episode store {self.root}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreUnavailable(
                    f"{where}: bucket {self.bucket!r} does not exist at {self.endpoint}. "
                    f"Create it (e.g. `aws --endpoint-url {self.endpoint} s3 mb "
                    f"s3://{self.bucket}`) or fix the bucket in the URI") from None
            raise StoreUnavailable(
                f"{where}: {self.endpoint} refused bucket {self.bucket!r} ({code}). Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a key of that endpoint with "
                "access to the bucket") from None
        except NoCredentialsError:
            raise StoreUnavailable(f"{where}: no S3 credentials. Set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except (BotoCoreError, OSError) as e:
            raise StoreUnavailable(
                f"{where}: cannot reach the S3 endpoint {self.endpoint} ({type(e).__name__}: "
                f"{e}). Start the S3 server, or fix ?endpoint= in the URI "
                "(or $VLAC_S3_ENDPOINT)") from None

    def _call(self, what: str, key: str, fn: Callable[[], Any],
              ok: tuple[str, ...] = ()) -> Any:
        """``fn()``; None where S3 answers an error code in ``ok``; any other failure is a
        StoreUnavailable naming the key and the store."""
        try:
            return fn()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ok:
                return None
            raise StoreUnavailable(f"S3 {what} of {key} in {self.root} failed: {code} "
                                   f"{e}") from None
        except (BotoCoreError, OSError) as e:
            raise StoreUnavailable(f"S3 {what} of {key} in {self.root} failed "
                                   f"({type(e).__name__}: {e}); is {self.endpoint} "
                                   "reachable?") from None

    def _full(self, key: str) -> str:
        return self._base + key

    def _put(self, key: str, body: bytes, **extra: Any) -> bool:
        """PUT ``key`` unless it exists; False where it did."""
        return self._call("upload", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._full(key), Body=body, IfNoneMatch="*", **extra),
            ok=_EXISTS) is not None

    def _get(self, key: str) -> bytes | None:
        obj = self._call("download", key, lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._full(key)), ok=_MISSING)
        return None if obj is None else obj["Body"].read()

    def _list(self, prefix: str) -> list[tuple[str, int, float]]:
        """(key, size, last modified) of every object under ``prefix``."""
        out: list[tuple[str, int, float]] = []

        def run() -> None:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._full(prefix))
            for page in pages:
                for o in page.get("Contents", []):
                    out.append((o["Key"][len(self._base):], o["Size"],
                                o["LastModified"].timestamp()))

        self._call("list", prefix, run)
        return out

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000
            batch = [{"Key": self._full(k)} for k in keys[i:i + 1000]]
            self._call("delete", keys[i], lambda b=batch: self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}))

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _staging_prefix(robot_id: str, episode_id: str) -> str:
        return f"staging/{robot_id}/{episode_id}/"

    @staticmethod
    def _episode_prefix(robot_id: str, episode_id: str) -> str:
        return f"episodes/robot_id={robot_id}/episode_id={episode_id}/"

    def _grouped(self, top: str) -> dict[Key, dict[str, tuple[int, float]]]:
        """Objects under staging/ or episodes/ by episode: name -> (size, last modified)."""
        out: dict[Key, dict[str, tuple[int, float]]] = {}
        for key, size, mtime in self._list(top + "/"):
            parts = key.split("/")
            if len(parts) != 4:
                continue
            r, e = parts[1], parts[2]
            if top == "episodes":
                if not (r.startswith("robot_id=") and e.startswith("episode_id=")):
                    continue
                r, e = r[9:], e[11:]
            out.setdefault((r, e), {})[parts[3]] = (size, mtime)
        return out

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        for key, names in self._grouped("episodes").items():
            if MANIFEST in names:
                self._complete.add(key)
        for key, names in self._grouped("staging").items():
            if key in self._complete:  # a writer died after the manifest: leftovers
                self._drop_staging(key)
                continue
            st = self._staged_from([self._staging_prefix(*key) + n for n in names
                                    if n.endswith(".parquet")])
            if st is not None:
                self._staged[key] = st
                with self._lock:
                    self._maybe_complete(key)
        log.info("episode store %s: %d complete episodes, %d arriving", self.root,
                 len(self._complete), len(self._staged))

    def _chunk_meta(self, key: str) -> tuple[dict[str, Any], float] | None:
        """A staged chunk's ``vlac`` metadata and when it was stored (None: gone)."""
        head = self._call("head", key, lambda: self.client.head_object(
            Bucket=self.bucket, Key=self._full(key)), ok=_MISSING)
        if head is None:  # completed and deleted by another writer meanwhile
            return None
        text = head.get("Metadata", {}).get("vlac")
        if text is None:  # too long for user metadata: the file's own
            body = self._get(key)
            if body is None:
                return None
            text = pq.read_schema(pa.BufferReader(body)).metadata[META_KEY]
        return json.loads(text), head["LastModified"].timestamp()

    def _staged_from(self, keys: list[str]) -> Staged | None:
        return staged_from_chunks(m for m in self._pool.map(self._chunk_meta, keys) if m)

    # ------------------------------------------------------------------ backend
    def _lookup(self, key: Key) -> Staged | bool | None:
        if self.is_complete(*key):
            return True
        keys = [k for k, _, _ in self._list(self._staging_prefix(*key))
                if k.endswith(".parquet")]
        return self._staged_from(keys) if keys else None

    def _store_new(self, chunks: list[ChunkWrite]) -> list[bool]:
        return list(self._pool.map(self._put_chunk, chunks))

    def _put_chunk(self, c: ChunkWrite) -> bool:
        meta = c.meta()
        sink = pa.BufferOutputStream()
        pq.write_table(steps_to_table(c.steps, c.first_step, meta), sink,
                       compression=self.compression, use_dictionary=False,
                       write_statistics=False)
        text = json.dumps(meta)  # ASCII (json escapes the rest), as headers must be
        extra = {"Metadata": {"vlac": text}} if len(text) <= _USER_META_MAX else {}
        return self._put(self._staging_prefix(c.robot_id, c.episode_id) + chunk_name(c.seq),
                         sink.getvalue().to_pybytes(), **extra)

    def _copy(self, src: str, dest: str) -> bool:
        """Server-side copy; False where ``src`` is gone."""
        return self._call("copy", src, lambda: self.client.copy_object(
            Bucket=self.bucket, Key=self._full(dest),
            CopySource={"Bucket": self.bucket, "Key": self._full(src)}),
            ok=_MISSING) is not None

    def _finish(self, key: Key, st: Staged) -> bool:
        assert st.final is not None
        names = [chunk_name(s) for s in range(st.final["n_chunks"])]
        src, dest = self._staging_prefix(*key), self._episode_prefix(*key)
        copied = list(self._pool.map(self._copy, [src + n for n in names],
                                     [dest + n for n in names]))
        if not all(copied):  # another writer finished it and deleted staging first
            if self.is_complete(*key):
                self._drop_staging(key)  # what this writer stored since is a leftover
                return False
            raise StoreUnavailable(f"chunks of {key[0]}/{key[1]} vanished from staging in "
                                   f"{self.root} before the episode was complete (was "
                                   "`vlac store gc` run with a short --older-than?)")
        body = json.dumps(st.manifest(*key), indent=1).encode()
        first = self._put(dest + MANIFEST, body, ContentType="application/json")  # LAST
        self._drop_staging(key)
        return first

    def _drop_staging(self, key: Key) -> None:
        self._delete([k for k, _, _ in self._list(self._staging_prefix(*key))])

    # ------------------------------------------------------------------ reads
    def is_complete(self, robot_id: str, episode_id: str) -> bool:
        if (robot_id, episode_id) in self._manifests:
            return True
        key = self._episode_prefix(robot_id, episode_id) + MANIFEST
        return self._call("head", key, lambda: self.client.head_object(
            Bucket=self.bucket, Key=self._full(key)), ok=_MISSING) is not None

    def _manifest(self, key: Key) -> dict[str, Any] | None:
        info = self._manifests.get(key)
        if info is None:
            body = self._get(self._episode_prefix(*key) + MANIFEST)
            if body is None:
                return None
            info = self._manifests[key] = json.loads(body)
        return info

    def list_episodes(self) -> list[dict[str, Any]]:
        """Summaries (the ``_episode.json`` contents) of all complete episodes."""
        objects = {k: v for k, v in self._grouped("episodes").items() if MANIFEST in v}
        keys = sorted(objects)
        out = []
        for key, info in zip(keys, self._pool.map(self._manifest, keys), strict=True):
            if info is None:
                continue
            names = objects[key]
            out.append({**info, "bytes": sum(names.get(chunk_name(s), (0, 0))[0]
                                             for s in range(info["n_chunks"]))})
        out.sort(key=lambda i: (i["robot_id"], i["completed_at"]))
        return out

    def incomplete(self) -> list[dict[str, Any]]:
        """Episodes still in staging, as ``EpisodeStore.incomplete`` gives them. A read-only
        store rebuilds them from the objects (a HEAD per chunk)."""
        objects = self._grouped("staging")
        if self.read_only:
            staged = {}
            for key, names in objects.items():
                st = self._staged_from([self._staging_prefix(*key) + n for n in names
                                        if n.endswith(".parquet")])
                if st is not None:
                    staged[key] = st
        else:
            with self._lock:
                staged = {k: st.copy() for k, st in self._staged.items()}
        now = time.time()
        return [{"robot_id": r, "episode_id": e, "task": st.task, "chunks": sorted(st.chunks),
                 "final_seen": st.final is not None, "age_s": max(0.0, now - st.updated_at),
                 "bytes": sum(size for size, _ in objects.get((r, e), {}).values())}
                for (r, e), st in sorted(staged.items())]

    def _episode_table(self, robot_id: str, episode_id: str,
                       columns: list[str] | None = None) -> tuple[dict[str, Any], pa.Table]:
        info = self._manifest((robot_id, episode_id))
        if info is None:
            raise self._missing(robot_id, episode_id)
        prefix = self._episode_prefix(robot_id, episode_id)
        keys = [prefix + chunk_name(s) for s in range(info["n_chunks"])]
        tables = []
        for k, body in zip(keys, self._pool.map(self._get, keys), strict=True):
            if body is None:
                raise StoreUnavailable(f"{k} is missing from {self.root} although its "
                                       "episode's manifest names it; was it deleted by hand?")
            tables.append(pq.read_table(pa.BufferReader(body), columns=columns))
        return info, pa.concat_tables(tables)

    # ------------------------------------------------------------------ housekeeping
    @contextlib.contextmanager
    def writer_lock(self, *, exclusive: bool) -> Iterator[None]:
        """No lock: S3 offers none across hosts (see the module docstring)."""
        yield
