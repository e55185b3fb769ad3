"""`vlac learner run`: the fleet's episodes in, better policies out, as episodes arrive.

The loop (``Learner.run``), one update at a time:

1. Poll: wait for ``episodes_per_update`` complete episodes not consumed yet (``source !=
   "demo"``); which ones were consumed is part of the checkpoint, so a restart never reuses
   an episode (``episodes``).
2. Reward: the critic's progress or the success flag, shaped (``rewards``); image features
   once per frame (the encoders are frozen).
3. Behaviour-cloning pool: takeovers, replayed demonstrations and successes (``replay``).
4. ``algorithm.update(batch)``: the RL algorithm chosen by ``--algorithm.name`` (PPO:
   ``algorithms.ppo``) trains on the batch; the version goes up by one when the weights
   changed.
5. Every ``publish.every`` updates ``on_publish(actor, version)``; every ``checkpoint_every``
   updates a checkpoint in the object store, where the next start resumes from
   (``checkpoint``). A stop (``--once``, ``max_updates``, the idle timeout, SIGTERM) finishes
   the update in hand and checkpoints; after a crash the learner rolls back to the last
   checkpoint and re-reads the episodes consumed after it.

Metrics go to TensorBoard (``out/tb``) and ``out/learner_curves.png`` (``plots``). The store is
opened read-only, so the learner runs beside a live ingest without touching its staging area.

Several processes (``torchrun --nproc_per_node 2 -m vlac.infra.cli learner run ...``): rank 0
chooses the episodes and asks the critic, every rank prepares the same batch and trains on its
share (``distributed``), rank 0 alone writes metrics, uploads checkpoints and publishes. The
ranks share ``out`` (one host, or a shared file system).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.critic.model import write_json
from vlac.cloud.critic.service import RewardSource
from vlac.cloud.learner.actors import load_learner_actor
from vlac.cloud.learner.algorithms import Context, UpdateBatch, make_algorithm
from vlac.cloud.learner.checkpoint import Checkpoints
from vlac.cloud.learner.config import LearnerConfig
from vlac.cloud.learner.distributed import broadcast_json, rank_and_world, shutdown
from vlac.cloud.learner.episodes import EpisodeData, EpisodeLoader, episode_key
from vlac.cloud.learner.plots import plot_curves
from vlac.cloud.learner.replay import BCReplay
from vlac.cloud.learner.rewards import critic_scores, reward_source, shape_rewards
from vlac.cloud.models import engine as eng
from vlac.cloud.models.encoders import ImageEncoder, TextEncoder
from vlac.cloud.store.episodes import Episode
from vlac.cloud.store.location import open_episode_store
from vlac.shared.config import check, describe
from vlac.shared.objstore import open_store
from vlac.shared.signals import on_stop_signals

__all__ = ["Learner", "LearnerConfig", "main"]

log = logging.getLogger(__name__)


def episode_stats(episodes: list[EpisodeData]) -> dict[str, Any]:
    """What the episodes of one update were like, whatever the algorithm does with them."""
    n_steps = sum(len(ep) for ep in episodes)
    return {"episodes": len(episodes), "steps": n_steps,
            "return_mean": float(np.mean([ep.rewards.sum() for ep in episodes])),
            "success_rate": float(np.mean([ep.success for ep in episodes])),
            "episode_length": n_steps / len(episodes),
            "intervention_fraction": float(np.mean(np.concatenate(
                [ep.intervention for ep in episodes]))),
            "used_steps": sum(len(ep.rewards) for ep in episodes)}


class Learner:
    """RL on the store's episodes. ``run()`` loops until a stop condition; ``update()`` is
    one update on given episodes. ``on_publish(actor, version)`` gets a copy of the weights
    every ``publish.every`` updates (rank 0 only)."""

    def __init__(self, cfg: LearnerConfig, rewards: RewardSource | None = None,
                 on_publish: Callable[[TorchActor, int], None] | None = None, *,
                 image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rewards = rewards if rewards is not None or cfg.rewards.mode == "sparse" \
            else reward_source(cfg.rewards)
        self.on_publish = on_publish
        store = open_episode_store(cfg.store_root, read_only=True)  # ingest writes beside us
        self.actor = load_learner_actor(cfg, image_encoder, text_encoder)
        self.camera = cfg.camera or self.actor.camera
        self.actor.camera = self.camera
        self.init_version = self.actor.version
        make_engine = functools.partial(eng.make_engine, zero_stage=cfg.zero_stage,
                                        ds_config=cfg.ds_config)
        self.algorithm = make_algorithm(cfg.algorithm, self.actor.module, Context(
            bc=cfg.bc, seed=cfg.seed, world=int(os.environ.get("WORLD_SIZE", "1")),
            make_engine=make_engine))
        self.rank, self.world = rank_and_world()
        self.episodes = EpisodeLoader(store, self.actor, self.camera)
        self.replay = BCReplay(cfg.bc, self.episodes, self.rank, self.world)
        self.objects = open_store(cfg.object_store or cfg.out / "objects")
        self.checkpoints = Checkpoints(self.objects, cfg.out / "checkpoints",
                                       cfg.keep_checkpoints, self.rank)
        self.version = self.init_version
        self.consumed: set[str] = set()
        self.log: list[dict[str, Any]] = []
        self._demos: dict[str, EpisodeData] = {}  # replayed demos with rewards, by key
        self._dirty = False  # consumed episodes or weights not yet checkpointed
        self._stop = threading.Event()
        self._writer = None
        self._resume()

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        client = self.checkpoints.restore(self.algorithm.engine)
        if not client:
            return
        self.version = int(client["version"])
        self.consumed = set(client["consumed"])
        self.log = list(client.get("log", []))
        saved = client.get("algorithm")
        if saved is not None:
            check(saved["name"] == self.algorithm.name, "algorithm.name",
                  f"the checkpoint in {self.objects} was written by {saved['name']!r}: resume "
                  f"with --algorithm.name {saved['name']}, or give a fresh --object-store")
            self.algorithm.load_state_dict(saved["state"])
        if self.rank == 0:
            log.info("resumed at version %d (%d episodes consumed) from %s",
                     self.version, len(self.consumed), self.objects)

    def save_checkpoint(self) -> None:
        """The engine, the learner's state and the actor, uploaded under
        learner/checkpoints/ (all ranks call this; rank 0 uploads)."""
        self.actor.version = self.version
        state = {"version": self.version, "consumed": sorted(self.consumed), "log": self.log,
                 "init_version": self.init_version,
                 "algorithm": {"name": self.algorithm.name,
                               "state": self.algorithm.state_dict()}}
        self.checkpoints.save(self.algorithm.engine, self.version, state, self.actor,
                              also=self.cfg.out / self.actor.checkpoint_name)
        self._dirty = False

    # ------------------------------------------------------------------ episodes
    def poll(self) -> list[dict]:
        """Complete, unconsumed fleet episodes (not demonstrations), oldest first."""
        return self.episodes.unconsumed(self.consumed)

    def demo_episodes(self) -> list[dict]:
        """Up to ``bc.demo_episodes`` successful demonstrations, round-robin over tasks."""
        return self.replay.demo_episodes()

    def load_episode(self, info: dict) -> EpisodeData:
        """Frames -> features (once per frame) and rewards."""
        ep, frames = self.episodes.frames(info)
        return self._featurise(info, ep, frames, self._score(ep.task, frames))

    def _load(self, infos: list[dict]) -> list[EpisodeData]:
        """The episodes featurised, with their rewards: one critic call per episode, not one
        per process (rank 0 asks, every rank gets its answers)."""
        loaded = [self.episodes.frames(i) for i in infos]
        scores = [self._score(ep.task, frames) for ep, frames in loaded] if self.rank == 0 \
            else None
        if self.world > 1:
            as_lists = [[d.tolist(), p.tolist()] for d, p in scores] if scores else None
            scores = [(np.asarray(d, np.float32), np.asarray(p, np.float32))
                      for d, p in broadcast_json(as_lists, self.rank)]
        return [self._featurise(i, ep, frames, sc)
                for i, (ep, frames), sc in zip(infos, loaded, scores, strict=True)]

    def _demo_data(self, demos: list[dict]) -> list[EpisodeData]:
        """The replayed demonstrations featurised with their rewards, for an algorithm that
        replays transitions (each demo is scored once per learner run)."""
        if not self.algorithm.wants_demo_episodes:
            return []
        todo = [i for i in demos if episode_key(i) not in self._demos]
        for info, ep in zip(todo, self._load(todo) if todo else [], strict=True):
            self._demos[episode_key(info)] = ep
        return [self._demos[episode_key(i)] for i in demos]

    def _score(self, task: str, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return critic_scores(self.rewards, self.cfg.rewards, task, frames)

    def _featurise(self, info: dict, ep: Episode, frames: np.ndarray,
                   scores: tuple[np.ndarray, np.ndarray]) -> EpisodeData:
        r = self.cfg.rewards
        rewards, terminal = shape_rewards(r.mode, len(ep), bool(info["outcome"]["success"]),
                                          *scores, r.done_threshold, r.success_reward)
        return self.episodes.featurise(info, ep, frames, rewards, terminal)

    # ------------------------------------------------------------------ one update
    def update(self, infos: list[dict], demos: list[dict] | None = None) -> dict[str, Any]:
        """One update on these episodes (and BC on takeovers + ``demos``). The version goes
        up by one unless there was nothing to learn from (no RL sample, no BC step)."""
        if not infos:
            raise ValueError("an update needs at least one episode")
        t0 = time.monotonic()
        episodes = self._load(infos)
        bc = self.replay.pool(episodes, demos or [])
        stats = {**episode_stats(episodes), "bc_samples": len(bc)}
        stats.update(self.algorithm.update(UpdateBatch(episodes, bc, self.version,
                                                       self._demo_data(demos or []))))
        self.consumed.update(ep.key for ep in episodes)
        self._dirty = True
        if stats["learned"]:  # a new policy version
            self.version += 1
        stats["version"] = self.version
        stats["seconds"] = time.monotonic() - t0
        self.log.append(stats)
        return stats

    # ------------------------------------------------------------------ run
    def stop(self) -> None:
        """Finish the update in hand, checkpoint and return from ``run``."""
        self._stop.set()

    def close(self) -> None:
        """Release what the learner holds: the critic's connection, the process group."""
        close = getattr(self.rewards, "close", None)
        if close is not None:
            close()
        shutdown()

    def _next_plan(self, updates: int) -> dict | None:
        """Rank 0 decides what the next update uses (None: stop); every rank gets it."""
        plan = None
        if self.rank == 0 and not (self.cfg.max_updates and updates >= self.cfg.max_updates):
            infos = self._wait_for_episodes()
            if infos:
                plan = {"episodes": infos, "demos": self.demo_episodes()}
        return broadcast_json(plan, self.rank)

    def _wait_for_episodes(self) -> list[dict] | None:
        cfg, seen, last_arrival = self.cfg, -1, time.monotonic()
        while not self._stop.is_set():
            new = self.poll()
            if len(new) >= cfg.episodes_per_update:
                return new[:cfg.episodes_per_update]
            if cfg.once:
                return new or None
            if len(new) > seen:
                seen, last_arrival = len(new), time.monotonic()
            if cfg.idle_timeout_s and time.monotonic() - last_arrival > cfg.idle_timeout_s:
                log.info("no new episode for %.0f s: stopping", cfg.idle_timeout_s)
                return None
            self._stop.wait(cfg.poll_s)
        return None

    def run(self) -> dict[str, Any]:
        """Update until a stop condition; checkpoint at the end. Returns a summary."""
        cfg, t0, updates, consumed = self.cfg, time.monotonic(), 0, 0
        self.actor.warm()  # load the encoders before the progress bar
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(cfg.out / "tb"))
            print(f"learner ({self.algorithm.name}) at version {self.version}, "
                  f"{len(self.consumed)} episodes consumed so far; {self.world} process(es); "
                  f"waiting for {cfg.episodes_per_update} episodes per update in "
                  f"{cfg.store_root}", flush=True)
        bar = tqdm(total=cfg.max_updates or None, desc="learner", unit="update",
                   disable=self.rank != 0, mininterval=2)
        stats: dict[str, Any] = {}
        try:
            while (plan := self._next_plan(updates)) is not None:
                stats = self.update(plan["episodes"], plan["demos"])
                updates += 1
                consumed += stats["episodes"]
                bar.update(1)
                bar.set_postfix(version=self.version, ret=f"{stats['return_mean']:.3f}",
                                success=f"{stats['success_rate']:.2f}",
                                kl=f"{stats.get('approx_kl', float('nan')):.4f}")
                self._after_update(stats)
        finally:
            bar.close()
        if self._dirty:
            self.save_checkpoint()
        summary = {"updates": updates, "version": self.version, "episodes": consumed,
                   "consumed_total": len(self.consumed), "seconds": time.monotonic() - t0,
                   "final": stats}
        if self.rank == 0:
            self._writer.close()
            plot_curves(self.log, cfg.out / "learner_curves.png")
            write_json(cfg.out / "learner_log.json", {**summary, "log": self.log})
            print(f"learner stopped at version {self.version} after {updates} updates "
                  f"({consumed} episodes)", flush=True)
        return summary

    def _after_update(self, stats: dict[str, Any]) -> None:
        v = self.version
        if self.rank == 0:
            for k, x in stats.items():
                if isinstance(x, (int, float)) and k not in ("version", "learned"):
                    self._writer.add_scalar(f"learner/{k}", x, v)
            self._writer.flush()
        if not stats["learned"]:
            return  # same weights as before: nothing to publish or checkpoint yet
        if v % self.cfg.publish.every == 0:
            self._publish(v)
        if v % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
            if self.rank == 0:
                plot_curves(self.log, self.cfg.out / "learner_curves.png")

    def _publish(self, version: int) -> None:
        """Rank 0 hands a snapshot to ``on_publish``; with --publish.enabled every process
        takes part (ZeRO-3 gathers the weights for it)."""
        gather = self.cfg.publish.enabled  # gathered() costs nothing unless ZeRO-3
        with self.actor.gathered() if gather else contextlib.nullcontext():
            if self.rank == 0 and self.on_publish is not None:
                self.on_publish(self.snapshot(), version)

    def snapshot(self) -> TorchActor:
        """A copy of the current weights as an actor (safe to keep while training goes on):
        a ``TorchActor``, or a ``TransformersActor`` with ``--actor.type hf``."""
        return self.actor.snapshot(self.version)


def main(cfg: LearnerConfig, on_publish: Callable[[TorchActor, int], None] | None = None
         ) -> dict[str, Any]:
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:
        print(describe(cfg), flush=True)
    publisher = None
    if cfg.publish.enabled and on_publish is None and rank0:
        from vlac.cloud.actor.export import ActorPublisher
        from vlac.cloud.fleet.publisher import Publisher

        publisher = Publisher(cfg.publish.publisher)
        on_publish = ActorPublisher(publisher, cfg.store_root, cfg.publish.tasks).publish

    learner = Learner(cfg, on_publish=on_publish)
    if cfg.publish.enabled:  # the fleet starts from the init (every rank: ZeRO-3 gathers)
        with learner.actor.gathered():
            if publisher is not None and publisher.fleet.latest_version() is None:
                on_publish(learner.snapshot(), learner.version)
    on_stop_signals(learner.stop)
    try:
        return learner.run()
    finally:
        learner.close()
