"""Where an episode store lives, and the one way to open it: ``open_episode_store``.

A store root is a folder (``.cache/store``, ``file:///data/store``): ``EpisodeStore``; or an
S3 URI (``s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:7480``): ``S3EpisodeStore``, with the
same methods, layout and guarantees. Every command that takes a store root takes either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from vlac.cloud.store.episodes import EpisodeStore
from vlac.shared.config import ConfigError

if TYPE_CHECKING:
    from vlac.cloud.store.s3 import S3EpisodeStore

# pathlib folds "//" into "/", so an s3:// URI that went through a Path-typed config field
# arrives as "s3:/bucket/...?endpoint=http:/host"; both are put back.
_FOLDED_SCHEME = re.compile(r"^s3:/(?!/)")
_FOLDED_ENDPOINT = re.compile(r"(=https?:)/(?!/)")


def store_location(root: str | Path, field: str = "store_root") -> str | Path:
    """A store root as given on a command line or in a config: an ``s3://`` URI (a string)
    or a folder (a Path). Any other URI scheme is a ConfigError naming ``field``."""
    text = str(root)
    if _FOLDED_SCHEME.match(text):
        text = _FOLDED_ENDPOINT.sub(r"\1//", _FOLDED_SCHEME.sub("s3://", text))
    if text.startswith("s3://"):
        return text
    if text.startswith("file://"):
        return Path(urlparse(text).path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise ConfigError(f"config field `{field}`: {text!r} is not an episode store: give "
                          "a folder or s3://BUCKET/PREFIX?endpoint=URL")
    return Path(text)


def is_s3(root: str | Path) -> bool:
    return isinstance(store_location(root), str)


def open_episode_store(root: str | Path, *, read_only: bool = False, fsync: bool = True,
                       compression: str = "zstd") -> EpisodeStore | S3EpisodeStore:
    """The episode store at ``root`` (a folder or an s3:// URI, see ``store_location``):
    an ``EpisodeStore`` or an ``S3EpisodeStore``, the same public methods either way."""
    where = store_location(root)
    if isinstance(where, str):
        from vlac.cloud.store.s3 import S3EpisodeStore  # boto3 only where S3 is used

        return S3EpisodeStore(where, read_only=read_only, fsync=fsync,
                              compression=compression)
    return EpisodeStore(where, read_only=read_only, fsync=fsync, compression=compression)
