"""The exported actor that benchmarks/fleet.py and benchmarks/edge.py measure, from the cache.

An actor checkpoint (``vlac actor pretrain``) and an episode store holding demonstrations of
its tasks (the export's example and calibration frames) make ``vlac actor export``'s two files,
``actor_fp32.onnx`` and ``actor_int8.onnx``, in ``<actor folder>/export``. ``ensure_int8``
reuses that export when it is there and not older than the actor, exports it when the actor
and the store are there (15 s on 2 cores for the 2-demo INT8-encoder actor), and otherwise
refuses with the commands that make what is missing. Nothing is substituted.

The defaults are the learning benchmark's inputs: the 2-demo imitation actor
``.cache/actor-bc2/actor.pt`` and the demonstration store ``.cache/critic-data/store``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlac.shared.tasks import HEADLINE_TASKS

DEFAULT_ACTOR = Path(".cache/actor-bc2/actor.pt")
DEFAULT_STORE = Path(".cache/critic-data/store")
DEMOS_PER_TASK = 12  # what the default store holds: the critic's and the help variants' demos
ACTOR_DEMOS = 2  # the weak imitation actor the learning benchmark starts from


@dataclass(frozen=True)
class ActorSource:
    """Where an actor, its demonstrations and its export live."""

    actor: Path = DEFAULT_ACTOR
    store_root: Path = DEFAULT_STORE
    export_dir: Path | None = None  # default: <actor folder>/export
    tasks: tuple[str, ...] = tuple(HEADLINE_TASKS)

    @property
    def out(self) -> Path:
        return self.export_dir or self.actor.parent / "export"

    @property
    def int8(self) -> Path:
        return self.out / "actor_int8.onnx"


def tasks_without_episodes(store_root: Path, tasks: tuple[str, ...]) -> list[str]:
    """The tasks of which ``store_root`` holds no complete episode (all when no store)."""
    if not (store_root / "episodes").is_dir():
        return list(tasks)
    from vlac.cloud.store.episodes import EpisodeStore

    have = {e.get("task_id") for e in EpisodeStore(store_root, read_only=True).list_episodes()}
    return [t for t in tasks if t not in have]


def export_is_current(src: ActorSource, names: tuple[str, ...] = ("actor_int8.onnx",)) -> bool:
    """The export's files exist and none is older than the actor (when the actor is there)."""
    files = [src.out / n for n in names]
    if not all(f.exists() for f in files):
        return False
    return not src.actor.exists() or \
        all(src.actor.stat().st_mtime <= f.stat().st_mtime for f in files)


def choose(src: ActorSource, needs: Literal["artifact", "actor"]) -> Literal["use", "export"]:
    """``use``: the export is there; ``export``: make it from the actor first. ``needs``:
    ``artifact`` (fleet.py: the INT8 file alone), ``actor`` (edge.py: also the actor and
    demonstrations of every task, and both exports). Refuses (``SystemExit``, naming the
    commands) otherwise."""
    current = export_is_current(src, ("actor_int8.onnx",) if needs == "artifact" else
                                ("actor_int8.onnx", "actor_fp32.onnx"))
    if needs == "artifact" and current:
        return "use"
    missing = tasks_without_episodes(src.store_root, src.tasks)
    store_short = missing if needs == "actor" else \
        (missing if len(missing) == len(src.tasks) else [])
    if src.actor.exists() and not store_short:
        return "use" if current else "export"
    raise SystemExit(refusal(src, store_short, needs))


def refusal(src: ActorSource, missing_tasks: list[str], needs: str) -> str:
    """What is missing and the commands that make it."""
    what = ("publishes a real exported INT8 actor" if needs == "artifact" else
            "measures a real actor and its exports on held-out demonstration frames")
    lines = [f"this benchmark {what}; it needs an actor checkpoint and an episode store with "
             "demonstrations of its tasks (it exports the actor itself), but:"]
    if not src.actor.exists():
        lines.append(f"- {src.actor} does not exist")
    if missing_tasks:
        lines.append(f"- {src.store_root} holds no episodes of {', '.join(missing_tasks)}")
    lines.append("make what is missing, then run the benchmark again:")
    if missing_tasks:
        lines.append(f"  vlac demos collect --tasks {','.join(missing_tasks)} --episodes "
                     f"{DEMOS_PER_TASK} --store-root {src.store_root}")
    if not src.actor.exists():
        tasks = "" if src.tasks == tuple(HEADLINE_TASKS) else f" --tasks {','.join(src.tasks)}"
        pretrain = (f"  vlac actor pretrain --store-root {src.store_root} --demos-per-task "
                    f"{ACTOR_DEMOS}{tasks} --out {src.actor.parent}")
        if src.actor.name != "actor.pt":
            pretrain += f"  (it writes actor.pt there; pass --actor {src.actor.parent}/actor.pt)"
        lines.append(pretrain)
    lines.append("or pass --actor and --store-root of an actor you have (after `vlac train`: "
                 "--actor .cache/train/actor/actor.pt --store-root .cache/train/store)")
    return "\n".join(lines)


def export_actor(src: ActorSource, **options) -> None:
    """``vlac actor export`` of ``src.actor`` into ``src.out`` (``options``: more
    ``ActorExportConfig`` fields)."""
    from vlac.cloud.actor.export import ActorExportConfig
    from vlac.cloud.actor.export import main as export

    export(ActorExportConfig(actor=src.actor, out=src.out, store_root=src.store_root,
                             tasks=list(src.tasks), **options))


def ensure_int8(src: ActorSource, needs: Literal["artifact", "actor"], say=print,
                **options) -> Path:
    """The INT8 export of ``src``, exported first when missing or older than the actor."""
    if choose(src, needs) == "export":
        say(f"exporting {src.actor} to {src.out} (`vlac actor export --actor {src.actor} "
            f"--out {src.out} --store-root {src.store_root}`)")
        export_actor(src, **options)
    return src.int8
