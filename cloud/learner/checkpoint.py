"""The learner's checkpoints, in the object store under ``learner/checkpoints/``.

A checkpoint is the DeepSpeed checkpoint of the algorithm's engine (weights, optimizer, and a
client state: version, consumed episodes, log, the algorithm's ``state_dict``) plus the actor
(``actor.pt``, or the folder ``actor/`` of a transformers actor), uploaded as
``learner/checkpoints/step<version>/...``; ``latest`` names the newest and is written last,
so it never names a partial one. A learner resumes from the object store alone (a fresh
output folder is fine); the oldest checkpoints beyond ``keep`` are pruned.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vlac.cloud.learner.actors import LearnerActor
from vlac.cloud.learner.distributed import barrier
from vlac.cloud.models import engine as eng

CHECKPOINT_PREFIX = "learner/checkpoints"


class Checkpoints:
    """Save and restore through the local folder ``local`` (every rank calls both; rank 0
    alone downloads, uploads and prunes)."""

    def __init__(self, objects, local: Path, keep: int, rank: int = 0) -> None:
        self.objects, self.local, self.keep, self.rank = objects, local, keep, rank

    def restore(self, engine) -> dict[str, Any] | None:
        """Load the latest checkpoint into ``engine``; its client state (None: none yet)."""
        if self.rank == 0:
            shutil.rmtree(self.local, ignore_errors=True)
            if self.objects.exists(f"{CHECKPOINT_PREFIX}/latest"):
                tag = self.objects.get_bytes(f"{CHECKPOINT_PREFIX}/latest").decode().strip()
                for key in self.objects.list(f"{CHECKPOINT_PREFIX}/{tag}/"):
                    self.objects.get_file(key, self.local / key[len(CHECKPOINT_PREFIX) + 1:])
                (self.local / "latest").write_text(tag)
        barrier()
        return eng.load(engine, self.local)

    def save(self, engine, version: int, state: dict[str, Any], actor: LearnerActor,
             also: Path | None = None) -> None:
        """Checkpoint ``engine`` with ``state`` as version ``version``; rank 0 saves
        ``actor`` beside it (and to ``also``) and uploads."""
        eng.save(engine, self.local, version, state)
        tag = f"step{version}"
        barrier()
        with actor.gathered():  # every process: ZeRO-3 gathers the weights here
            if self.rank == 0:
                saved = self.local / tag / actor.checkpoint_name
                actor.save(saved)
                if also is not None:  # a copy, not a second save (a merge, a 2B write)
                    _copy(saved, also)
        if self.rank != 0:
            return
        for f in sorted((self.local / tag).rglob("*")):
            if f.is_file():
                self.objects.put_file(f"{CHECKPOINT_PREFIX}/{tag}/"
                                      f"{f.relative_to(self.local / tag).as_posix()}", f)
        self.objects.put_bytes(f"{CHECKPOINT_PREFIX}/latest", tag.encode())
        self._prune(tag)

    def _prune(self, current: str) -> None:
        tags = sorted({k.split("/")[2] for k in self.objects.list(f"{CHECKPOINT_PREFIX}/")
                       if k.count("/") >= 3 and k.split("/")[2].startswith("step")},
                      key=lambda t: int(t[4:]))
        for tag in [t for t in tags[:-self.keep] if t != current]:
            for key in self.objects.list(f"{CHECKPOINT_PREFIX}/{tag}/"):
                self.objects.delete(key)
            shutil.rmtree(self.local / tag, ignore_errors=True)


def _copy(src: Path, dst: Path) -> None:
    """A saved actor (a file or a checkpoint folder) copied over ``dst``."""
    if src.is_dir():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
