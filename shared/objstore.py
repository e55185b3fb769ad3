"""Object store: where weights, checkpoints and reports live. One interface, two backends.

- ``LocalObjectStore``: a folder (the default; keys are relative paths inside it).
- ``S3ObjectStore``: S3 through boto3 (AWS, Ceph radosgw, any S3 endpoint), with timeouts,
  retries and multipart transfers from boto3's transfer manager.

``open_store("s3://bucket/prefix?endpoint=http://127.0.0.1:7480")`` or
``open_store("/path/or/file:///path")`` picks the backend. Writes are atomic from a reader's
point of view (a local temp file renamed into place; S3 objects appear whole), downloads go to
a temp file first, and every failure is an ObjectStoreError that names the key and the cause.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlparse

_KEY_RE = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class ObjectStoreError(RuntimeError):
    """A store operation failed; the message names the key and what went wrong."""


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or any(p in (".", "..") for p in key.split("/")):
        raise ObjectStoreError(f"{key!r} is not a valid object key (letters, digits, "
                               "'_.=-' and '/' separators; no '..')")
    return key


class ObjectStore(Protocol):
    def put_file(self, key: str, path: str | Path) -> None: ...

    def get_file(self, key: str, dest: str | Path) -> Path: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...


class LocalObjectStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise ObjectStoreError(f"could not store {key}: {e}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        try:
            self.put_file(key, f.name)
        finally:
            os.unlink(f.name)

    def get_file(self, key: str, dest: str | Path) -> Path:
        src = self._path(key)
        if not src.exists():
            raise ObjectStoreError(f"no object {key} in {self.root}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return dest

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.exists():
            raise ObjectStoreError(f"no object {key} in {self.root}")
        return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            check_key(prefix.rstrip("/"))
        out = []
        for p in self.root.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3ObjectStore:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1", timeout_s: float = 30.0, retries: int = 4,
                 create_bucket: bool = False) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                          retries={"max_attempts": retries, "mode": "standard"},
                          s3={"addressing_style": "path"}))
        self.transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
        if create_bucket:
            self._call("create bucket", bucket, lambda: self._create_bucket())

    def _create_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou",
                                                   "BucketAlreadyExists"):
                raise

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn):
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectStoreError(f"no object {key} in s3://{self.bucket}/"
                                       f"{self.prefix}") from None
            raise ObjectStoreError(f"S3 {what} of {key} failed: {code} {e}") from None
        except (BotoCoreError, Boto3Error, OSError) as e:  # Boto3Error: transfer retries
            raise ObjectStoreError(f"S3 {what} of {key} failed ({type(e).__name__}: {e}); "
                                   "is the endpoint reachable?") from None

    def put_file(self, key: str, path: str | Path) -> None:
        self._call("upload", key, lambda: self.client.upload_file(
            str(path), self.bucket, self._key(key), Config=self.transfer))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("upload", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_file(self, key: str, dest: str | Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        try:
            self._call("download", key, lambda: self.client.download_file(
                self.bucket, self._key(key), str(tmp), Config=self.transfer))
        except ObjectStoreError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return dest

    def get_bytes(self, key: str) -> bytes:
        obj = self._call("download", key, lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._key(key)))
        return obj["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket,
                                                                    Key=self._key(key)))
            return True
        except ObjectStoreError as e:
            if str(e).startswith("no object"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            check_key(prefix.rstrip("/"))
        base = self.prefix + "/" if self.prefix else ""
        full = base + prefix
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")

        def run():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    out.append(k[len(self.prefix) + 1:] if self.prefix else k)

        self._call("list", prefix or "/", run)
        return sorted(out)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket,
                                                                    Key=self._key(key)))


def open_store(uri: str | Path) -> LocalObjectStore | S3ObjectStore:
    """A path / file:// URI -> local folder; s3://bucket/prefix[?endpoint=URL] -> S3.
    S3 credentials come from the usual AWS variables (or the endpoint's own)."""
    text = str(uri)
    if text.startswith("s3://"):
        u = urlparse(text)
        endpoint = parse_qs(u.query).get("endpoint", [os.environ.get("VLAC_S3_ENDPOINT")])[0]
        return S3ObjectStore(u.netloc, u.path.strip("/"), endpoint_url=endpoint)
    if text.startswith("file://"):
        text = urlparse(text).path
    return LocalObjectStore(text)


def download_prefix(store: ObjectStore, prefix: str, dest: str | Path) -> Path:
    """Every object under ``prefix/`` (a checkpoint folder, say) into ``dest``, keeping the
    relative paths (each one downloaded whole, then renamed into place). Returns ``dest``.
    Nothing under the prefix is an error that names it."""
    prefix = check_key(prefix.strip("/")) + "/"
    keys = store.list(prefix)
    if not keys:
        raise ObjectStoreError(f"nothing under {prefix!r} in the object store: upload the "
                               "folder there first, or give a local path")
    dest = Path(dest)
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, target)
    return dest
