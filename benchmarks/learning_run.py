"""One job of the learning benchmark (a variant and a seed), in its own process: roll out
with the learner's current weights, update every ``per_update`` episodes, then evaluate the
final policy on fixed layouts, greedily and sampling at the rollout temperature.

``run_variant(job)`` takes the dict ``learning.job`` builds and returns the job's log rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from learning_oracle import OracleRewards, RewardRecorder
from learning_report import MODES, success_alone
from learning_variants import parse_variant


class Collect:
    """Episode sink that keeps the steps in memory (``keep=False``: drops them)."""

    def __init__(self, keep: bool = True) -> None:
        self.parts: list = []
        self.keep = keep
        self.success = False

    def add(self, steps) -> None:
        if self.keep:
            self.parts.append(steps)

    def end(self, success: bool, reason: str = "") -> None:
        self.success = success


def algorithm_config(name: str, overrides: dict):
    """The config section of algorithm ``name`` with those ``overrides`` that are fields of
    it (the others belong to other algorithms)."""
    from vlac.cloud.learner.algorithms import algorithm_class

    cls = algorithm_class(name).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in overrides.items() if k in fields})


def run_variant(args: dict) -> list[dict]:
    """One variant and seed: roll out, learn, and evaluate the final policy. Returns its log
    rows (one per rollout, then one per evaluation layout and mode)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vlac.cloud.store.episodes import EpisodeStore

    work, hitl = Path(args["work"]), args["hitl"]
    shutil.rmtree(work, ignore_errors=True)
    store = EpisodeStore(work / "store", fsync=False)
    if hitl.demo_replay:  # offline demonstration replay: the stored demos of these tasks
        copy_demos(EpisodeStore(args["demo_store"], read_only=True), store, args["tasks"],
                   args["demos"])
    learner, critic = make_learner(args, work, store.root)
    log, actor = roll_out_and_learn(args, learner, critic, store)
    actor.save(work / "actor.pt")  # the final policy, for evaluations after the fact
    if args["final_eval"]:  # the final policy on layouts no variant trained on
        log += final_evaluation(args, actor, learner.version)
    (work / "log.json").write_text(json.dumps(log))
    (work / "learner_log.json").write_text(json.dumps(learner.log))
    return log


def run_job(args: dict) -> tuple[str, int, list[dict]]:
    """``run_variant`` for a process pool: (variant, seed, rows)."""
    return args["variant"], args["seed"], run_variant(args)


def copy_demos(demo_store, store, tasks: list[str], per_task: int) -> None:
    """Up to ``per_task`` successful demonstrations of each task into ``store``."""
    have: dict[str, int] = {}
    for e in demo_store.list_episodes():
        t = e.get("task_id")
        if e.get("source") == "demo" and t in tasks and e["outcome"]["success"] and \
                have.get(t, 0) < per_task:
            have[t] = have.get(t, 0) + 1
            ep = demo_store.load_episode(e["robot_id"], e["episode_id"])
            store.write_episode("demo", e["episode_id"], e["task"], ep.steps, True,
                                source="demo", task_id=t)


def make_learner(args: dict, work: Path, store_root: Path):
    """The learner (the variant's algorithm and rewards; its ``bc`` section is the
    variant's, as it is) and the critic (None where neither the rewards nor the stall
    trigger need it)."""
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.service import InProcessRewards
    from vlac.cloud.learner.config import LearnerConfig, RewardsConfig
    from vlac.cloud.learner.process import Learner
    from vlac.cloud.models.encoders import ImageEncoder, TextEncoder

    v = parse_variant(args["variant"])
    img = ImageEncoder(args["encoder"], memo=args["encoder_memo"])
    txt = TextEncoder()
    critic = SmallVLACCritic.load(args["critic"], image_encoder=img, text_encoder=txt) \
        if v.reward == "critic" or v.helped else None
    # oracle rewards are shaped exactly like the critic's progress (potential differences,
    # plus the success reward)
    cfg = LearnerConfig(
        store_root=store_root, init=Path(args["init"]), out=work / "learner",
        features=work / "features", object_store=str(work / "objects"),
        episodes_per_update=args["per_update"], seed=args["seed"], threads=1,
        checkpoint_every=10_000,
        rewards=RewardsConfig(mode="sparse" if v.reward == "sparse" else "critic"),
        algorithm=algorithm_config(v.algorithm, args["overrides"]), bc=args["hitl"].bc)
    rewards = InProcessRewards(critic) if v.reward == "critic" else \
        OracleRewards() if v.reward == "oracle" else None
    return Learner(cfg, rewards, image_encoder=img, text_encoder=txt), critic


def stall_watches(args: dict, learner, critic) -> dict:
    """Per task, the stall trigger of the variant's operator section (guided exploration:
    the scripted expert, with action noise 0.1, stands in for the person); {} without."""
    from vlac.edge.hitl.operator import ScriptedExpert
    from vlac.edge.process import stall_watch

    operator = args["hitl"].operator
    if operator.on_stall != "guide":
        return {}

    def progress(a, b) -> float:
        cam = learner.camera
        d, _ = critic.critique([a.task], a.images[cam][None], b.images[cam][None])
        return float(d[0])

    return {t: stall_watch(operator, progress, ScriptedExpert(t, noise=0.1, seed=args["seed"]))
            for t in args["tasks"]}


def robot_seed(seed: int, task_index: int) -> int:
    """The seed of a job's training robot for its ``task_index``-th task: its layout pool and
    their order (the same for every variant)."""
    return seed * 1000 + task_index


class Rollouts:
    """The job's robots (each task's layouts follow its seed, the same for every variant),
    stall triggers and store; ``episode`` runs and stores one rollout."""

    def __init__(self, args: dict, learner, critic, store) -> None:
        from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig

        self.args, self.store, self.camera = args, store, learner.camera
        self.oracle = learner.rewards if isinstance(learner.rewards, OracleRewards) else None
        self.robots = {t: MetaWorldRobot(MetaWorldRobotConfig(
            task=t, seed=robot_seed(args["seed"], i), max_steps=args["max_steps"],
            layout_repeats=args.get("layout_repeats", 1),
            action_repeat=args.get("action_repeat", 1)))
            for i, t in enumerate(args["tasks"])}
        for r in self.robots.values():
            r.connect()
        if self.oracle is not None:  # record Meta-World's reward of every action
            self.robots = {t: RewardRecorder(r) for t, r in self.robots.items()}
        self.watch = stall_watches(args, learner, critic)
        self.retry: dict[str, object] = {}

    def close(self) -> None:
        for r in self.robots.values():
            r.close()

    def episode(self, t: str, actor, k: int, version: int) -> dict:
        """Rollout ``k`` of task ``t`` into the store; returns its log row (and its
        ``episode_id``). With ``--hitl-return`` a failed attempt's next one starts from its
        most promising saved state."""
        from vlac.edge.agent import run_episode
        from vlac.infra.evaluate import ActorPolicy
        from vlac.shared.episode import concat_steps

        a, robot, sink = self.args, self.robots[t], Collect()
        start = self.retry.pop(t, None)
        res = run_episode(robot, ActorPolicy(actor, a["temperature"], greedy=False),
                          lambda _, s=sink: s, operator=self.watch.get(t), start_from=start,
                          snapshot_every=0)
        if a["hitl"].helped and a["hitl_return"] and not res.success and \
                start is None and res.snapshot is not None:
            self.retry[t] = res.snapshot  # return and explore from the most promising state
        eid = f"{a['variant']}-s{a['seed']}-{t}-{k:04d}"
        steps = concat_steps(sink.parts)
        self.store.write_episode("bench", eid, res.task, steps, res.success, source="policy",
                                 task_id=t)
        if self.oracle is not None:
            self.oracle.register(steps.images[self.camera], robot.rewards)
        return {"variant": a["variant"], "seed": a["seed"], "task": t, "episode": k,
                "success": bool(res.success), "steps": res.steps,
                "interventions": res.interventions, "returned": start is not None,
                "version": version, "episode_id": eid}


def roll_out_and_learn(args: dict, learner, critic, store) -> tuple[list[dict], object]:
    """Rounds of one episode per task with the learner's current weights, an update every
    ``per_update`` episodes (none for the frozen control). Returns the log rows and the
    final policy."""
    variant, seed, tasks = args["variant"], args["seed"], args["tasks"]
    frozen = parse_variant(variant).frozen
    rollouts = Rollouts(args, learner, critic, store)
    log, pending = [], []
    counts = dict.fromkeys(tasks, 0)
    noise = np.random.default_rng([seed, 7])  # one sampling stream across versions
    actor = learner.snapshot()
    actor.rng = noise
    t0 = time.monotonic()
    while min(counts.values()) < args["episodes"]:
        for t in tasks:
            if counts[t] < args["episodes"]:
                row = rollouts.episode(t, actor, counts[t], learner.version)
                pending.append(row.pop("episode_id"))
                log.append(row)
                counts[t] += 1
        if frozen:
            pending.clear()  # the control: the starting policy, never updated
        elif len(pending) >= args["per_update"]:
            infos = [e for e in store.list_episodes() if e["episode_id"] in set(pending)]
            st = learner.update(infos, learner.demo_episodes())
            pending.clear()
            actor = learner.snapshot()
            actor.rng = noise
            recent = [success_alone(r) for r in log[-4 * len(tasks):]]
            extra = "".join(f", {k} {st[k]:.3g}" for k in ("approx_kl", "epochs") if k in st)
            print(f"[{variant} seed {seed}] {sum(counts.values())}/"
                  f"{args['episodes'] * len(tasks)} episodes, v{learner.version}, "
                  f"recent success {np.mean(recent):.0%}, return {st['return_mean']:.2f}"
                  f"{extra}, {time.monotonic() - t0:.0f}s", flush=True)
    rollouts.close()
    return log, actor


def final_evaluation(args: dict, actor, version: int, modes=MODES) -> list[dict]:
    """The final policy on ``final_eval`` fixed layouts per task (``vlac.infra.evaluate``'s:
    seed EVAL_SEED + the task's index, never trained on), decoded each of ``modes`` ways
    (greedy, sampling at the rollout temperature, the mean bin). The sampling noise is
    reseeded per (seed, task, layout), so every variant draws the same noise on the same
    layout."""
    from vlac.edge.agent import run_episode
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
    from vlac.infra.evaluate import EVAL_SEED, ActorPolicy

    rows = []
    for mode in modes:
        for ti, t in enumerate(args["tasks"]):
            cfg = MetaWorldRobotConfig(task=t, seed=EVAL_SEED + ti, max_steps=args["max_steps"],
                                       action_repeat=args.get("action_repeat", 1))
            with MetaWorldRobot(cfg) as robot:
                for i in range(args["final_eval"]):
                    actor.rng = np.random.default_rng([EVAL_SEED, args["seed"], ti, i])
                    policy = ActorPolicy(actor, args["temperature"], greedy=mode == "greedy",
                                         mean=mode == "mean")
                    res = run_episode(robot, policy, lambda _: Collect(keep=False))
                    rows.append({"variant": args["variant"], "seed": args["seed"], "task": t,
                                 "eval": True, "mode": mode, "layout": i,
                                 "success": bool(res.success), "steps": res.steps,
                                 "version": version})
    return rows
