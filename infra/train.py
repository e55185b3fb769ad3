"""`vlac train`: the whole loop on one machine, the README's main job.

1. **Prepare** (only what is not cached in ``--workdir``): CURVE keys for ingest and robots,
   the publisher's signing key, scripted-expert demonstrations of the tasks, the critic, the
   ~30% imitation actor (few demonstrations per task, learnt on its INT8 image encoder), and
   its fp32 and INT8 exports, one of them (``--precision``, int8 by default) published as
   version 0.
2. **Run** every part as its own process on loopback, as across machines: ingest (episodes
   into the store, heartbeats into the fleet state), the critic service, the publisher's
   announcer, the PPO learner (critic rewards, demonstration replay, publishes every
   ``--publish-every`` versions) and one simulated robot per task (the actor under ONNX
   Runtime, weight updater). Human-guided exploration is on by default: the simulated
   operator takes over when the critic's progress stalls, to the end of the episode, and
   the learner behaviour-clones its takeovers (``--no-hitl.guide-on-stall`` turns it off).
   A live line shows episodes, success rate, policy versions and rewards.
3. **Report** in ``WORKDIR/report/``: success vs episodes per task (``success.png``), versions
   pushed and when, throughput, interventions, the critic's VOC, PPO's mean importance
   weight and (``--final-eval N``: 20, or 10 with ``--quick``) the starting and the final policy,
   greedy, on the same N fixed evaluation layouts per task with their paired difference, as
   ``report.md`` + ``report.json``.

Ctrl-C (or SIGTERM) stops every process cleanly (robots finish their step and flush their
spools; the learner checkpoints). Running it again resumes: the store, spools, learner
checkpoint and fleet state are all in the workdir, and ``--episodes`` bounds the total.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console

from vlac.infra.stack import free_port
from vlac.shared.config import check, describe, opt

log = logging.getLogger(__name__)
TASKS = ["reach-v3", "button-press-v3", "drawer-open-v3", "push-v3"]
QUICK_TASKS = ["button-press-v3", "drawer-open-v3"]
"""The two tasks the 2-demo imitation policy half solves: in a 15-minute run each gets 40
episodes, enough for 5 PPO updates to show; reach and push start near 0% (#7's benchmark)."""


@dataclass
class HitlConfig:
    demo_replay: bool = opt(True, "Offline demonstration replay: behaviour cloning on stored "
                            "demos inside every PPO update.")
    guide_on_stall: bool = opt(True, "Human-guided exploration: the (simulated) operator "
                               "takes over when the critic's progress stalls; its steps are "
                               "demonstration data, never PPO samples.")
    return_on_stall: bool = opt(False, "Return and explore: a stalled episode restarts from "
                                "its most promising saved state.")
    takeover_prob: float = opt(0.0, "Also take over at random with this per-step chance.")
    takeover_steps: int = opt(15, "Steps a random takeover lasts.")
    guide_steps: int = opt(0, "Steps the operator keeps control after a stall (0: to the "
                           "end of the episode, as in HG-DAgger).")
    stall_check_every: int = opt(10, "Steps between the robot's progress checks (each asks "
                                 "the critic service without waiting for it).")
    stall_patience: int = opt(2, "Progress checks without a new best that count as a stall.")
    stall_min_gain: float = opt(0.05, "Progress gain over the episode's best that counts as "
                                "a new best.")
    takeover_replay: int = opt(200, "Takeovers of the last N episodes that had one stay in "
                               "the behaviour-cloning term (HG-DAgger's aggregated data; 0: "
                               "only each update's own).")
    bc_coef: float = opt(1.0, "Weight of behaviour cloning (demonstrations, takeovers) in "
                         "each PPO update.")
    bc_steps: int = opt(100, "Extra behaviour-cloning-only steps per update at bc_lr (0: BC "
                        "only rides along PPO's minibatches).")
    bc_lr: float = opt(3e-4, "Learning rate of those steps.")

    def __post_init__(self) -> None:
        check(not (self.guide_on_stall and self.return_on_stall), "return_on_stall",
              "choose one stall response: guided exploration is on by default, so add "
              "--no-hitl.guide-on-stall to --hitl.return-on-stall")
        check(self.bc_coef > 0 or not (self.demo_replay or self.guide_on_stall or
                                       self.takeover_prob), "bc_coef",
              "demonstration replay and takeovers are only used by behaviour cloning: give "
              "it a weight > 0, or switch them off")

    @property
    def cloned(self) -> bool:
        """Whether any protocol feeds the behaviour-cloning term."""
        return self.demo_replay or self.guide_on_stall or self.takeover_prob > 0


@dataclass
class TrainConfig:
    workdir: Path = opt(Path(".cache/train"), "Everything lives here (resumable).")
    quick: bool = opt(False, "Small and fast (under 15 minutes on 2 cores): fewer demos, "
                      "shorter training, fewer RL episodes.")
    tasks: list[str] = opt([], "Meta-World tasks; one robot per task (empty: reach, "
                           "button-press, drawer-open and push; quick: button-press and "
                           "drawer-open).")
    episodes: int = opt(0, "RL episodes in total across robots (0: 800, quick: 80).")
    demos_per_task: int = opt(0, "Expert demos per task for the critic (0: 12, quick: 6).")
    actor_demos_per_task: int = opt(2, "Demos the imitation actor learns from (the ~30% knob).")
    critic_steps: int = opt(0, "Critic training steps (0: 3000, quick: 600).")
    actor_steps: int = opt(0, "Imitation steps (0: 2000, quick: 600).")
    episodes_per_update: int = opt(8, "Episodes per PPO update.")
    publish_every: int = opt(1, "Learner versions between publications.")
    lr: float = opt(3e-5, "Learner learning rate.")
    max_steps: int = opt(150, "Step limit of an episode.")
    critic: Path | None = opt(None, "Use this critic instead of training one.")
    actor: Path | None = opt(None, "Use this imitation actor instead of training one.")
    hitl: HitlConfig = field(default_factory=HitlConfig,
                             metadata={"help": "Human-in-the-loop protocols."})
    timeout_s: float = opt(0.0, "Stop after this long (0: when the episodes are done).")
    object_store: str = opt("", "Weights and checkpoints: a folder or s3://bucket/prefix?"
                            "endpoint=URL (empty: WORKDIR/objects).")
    temperature: float = opt(1.0, "Robots' sampling temperature (the learner scores their "
                             "tokens at the same one).")
    final_eval: int | None = opt(None, "After the RL loop the starting and the final policy "
                                 "each act greedily on this many fixed evaluation layouts per "
                                 "task (the same ones, never trained on), in the report "
                                 "(default: 20; quick: 10; 0: skip).")
    precision: Literal["int8", "fp32"] = opt(
        "int8", "What the simulated robots run: int8 (the edge artifact: the actor's INT8 "
        "encoder and INT8-stored head weights; 96% of its greedy tokens are the learner's) "
        "or fp32 (the same encoder and the fp32 head: the learner's actor exactly).")

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.tasks = list(self.tasks) or list(QUICK_TASKS if self.quick else TASKS)
        for t in self.tasks:
            check(t.endswith("-v3"), "tasks", f"{t!r} is not a Meta-World v3 task")
        check(self.episodes >= 0, "episodes", "must be >= 0")
        check(self.actor_demos_per_task >= 1, "actor_demos_per_task", "must be >= 1")
        check(self.episodes_per_update >= 1, "episodes_per_update", "must be >= 1")
        check(self.precision in ("int8", "fp32"), "precision", "use int8 or fp32")
        check(self.temperature > 0, "temperature", "must be > 0")
        for name in ("critic", "actor"):
            path = getattr(self, name)
            if path is not None:
                setattr(self, name, Path(path))
                check(Path(path).exists(), name, f"{path} does not exist")
        self.episodes = self.episodes or (80 if self.quick else 800)
        self.demos_per_task = self.demos_per_task or (6 if self.quick else 12)
        self.critic_steps = self.critic_steps or (600 if self.quick else 3000)
        self.actor_steps = self.actor_steps or (600 if self.quick else 2000)
        if self.final_eval is None:
            self.final_eval = 10 if self.quick else 20
        check(self.final_eval >= 0, "final_eval", "must be >= 0 (0: skip)")
        check(self.demos_per_task > self.actor_demos_per_task, "demos_per_task",
              "must exceed actor_demos_per_task (the critic holds some out)")


class Paths:
    def __init__(self, root: Path, object_store: str = "") -> None:
        self.root = root
        self.keys, self.store, self.fleet = root / "keys", root / "store", root / "fleet"
        self.objects = object_store or str(root / "objects")
        self.critic_dir, self.actor_dir = root / "critic", root / "actor"
        self.features, self.export = root / "features", root / "export"
        self.signing = root / "keys" / "publisher" / "publisher.ed25519"
        self.report = root / "report"


# ----------------------------------------------------------------------------- prepare
def prepare(cfg: TrainConfig, p: Paths, console: Console) -> tuple[Path, Path, Path]:
    """Keys, demos, critic, actor, v0 export + publication. Returns (critic, actor, v0)."""
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.shared import keys

    keys.generate(p.keys, [f"robot-{i}" for i in range(len(cfg.tasks))])
    have: dict[str, int] = {}
    if (p.store / "episodes").exists():
        for e in EpisodeStore(p.store, read_only=True).list_episodes():
            if e.get("source") == "demo" and e["outcome"]["success"]:
                have[e.get("task_id", "")] = have.get(e.get("task_id", ""), 0) + 1
    missing = [t for t in cfg.tasks if have.get(t, 0) < cfg.demos_per_task]
    if missing:
        from vlac.infra.demos import DemosCollectConfig
        from vlac.infra.demos import main as collect

        console.rule(f"demonstrations: {cfg.demos_per_task} per task of {missing}")
        collect(DemosCollectConfig(tasks=missing, episodes=cfg.demos_per_task, noise=0.1,
                                   store_root=p.store, max_steps=cfg.max_steps))
    critic = cfg.critic or p.critic_dir / "critic.pt"
    if not critic.exists():
        from vlac.cloud.critic.train import CriticTrainConfig
        from vlac.cloud.critic.train import main as train_critic

        console.rule(f"critic: {cfg.critic_steps} steps on {len(cfg.tasks)} tasks")
        train_critic(CriticTrainConfig(store_root=p.store, out=p.critic_dir,
                                       features=p.features, tasks=cfg.tasks,
                                       steps=cfg.critic_steps))
    actor = cfg.actor or p.actor_dir / "actor.pt"
    if not actor.exists():
        from vlac.cloud.actor.pretrain import ActorPretrainConfig, train

        console.rule(f"imitation actor: {cfg.actor_demos_per_task} demos per task")
        train(ActorPretrainConfig(store_root=p.store, out=p.actor_dir, features=p.features,
                                  tasks=cfg.tasks, demos_per_task=cfg.actor_demos_per_task,
                                  steps=cfg.actor_steps))
    if cfg.precision == "int8":
        from vlac.cloud.actor.export import int8_parity_warning
        from vlac.cloud.actor.model import TorchActor

        warning = int8_parity_warning(TorchActor.load(actor))
        if warning:
            console.print(f"[yellow]warning:[/] {actor}: {warning}: delete {p.actor_dir} and "
                          f"{p.export} to pretrain it again, or run with --precision fp32")
    v0 = p.export / f"actor_{cfg.precision}.onnx"
    if not v0.exists():
        from vlac.cloud.actor.export import ActorExportConfig
        from vlac.cloud.actor.export import main as export

        console.rule("export of version 0 (fp32 and INT8)")
        export(ActorExportConfig(actor=actor, out=p.export, store_root=p.store,
                                 tasks=cfg.tasks, calibration_frames=64, version=0))
    from vlac.cloud.fleet.publisher import Publisher

    pub = Publisher(publisher_config(p, precision=cfg.precision))
    if pub.fleet.latest_version() is None:
        pub.upload(v0, 0)
    pub.fleet.close()
    return critic, actor, v0


def publisher_config(p: Paths, bind: str = "tcp://127.0.0.1:0", precision: str = "int8"):
    from vlac.cloud.fleet.publisher import PublisherConfig

    return PublisherConfig(fleet_dir=p.fleet, object_store=p.objects, signing_key=p.signing,
                           bind=bind, resend_s=2.0, precision=precision)


# ----------------------------------------------------------------------------- processes
def _child(kind: str, cfg) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore")
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The parent may have trained in-process (its rendezvous port is still bound): every
    # child that runs DeepSpeed sets up its own single-process group.
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(var, None)
    if kind == "ingest":
        from vlac.cloud.ingest.service import main
    elif kind == "critic":
        from vlac.cloud.critic.service import main
    elif kind == "publisher":
        from vlac.cloud.fleet.publisher import serve_main as main
    elif kind == "learner":
        import contextlib
        import io

        from vlac.cloud.learner.process import main
        with contextlib.redirect_stdout(io.StringIO()):  # the parent shows progress
            main(cfg)
        return
    else:
        from vlac.edge.process import main
    main(cfg)


def wait_for_critic(address: str, timeout_s: float = 300.0) -> None:
    """Block until the critic service answers (it binds once its encoders are loaded)."""
    from vlac.cloud.critic.service import RewardClient

    client = RewardClient(address, timeout_s=timeout_s)
    try:
        client.episode_rewards("ready?", np.zeros((2, 64, 64, 3), np.uint8))
    finally:
        client.close()


def start_all(cfg: TrainConfig, p: Paths, critic: Path, actor: Path, v0: Path,
              done_before: int) -> dict[str, mp.Process]:
    from vlac.cloud.critic.service import RewardServiceConfig
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.cloud.learner.algorithms import PPOConfig
    from vlac.cloud.learner.config import BCConfig, LearnerConfig, PublishConfig, RewardsConfig
    from vlac.edge.process import EdgeAgentConfig
    from vlac.edge.robots.metaworld import MetaWorldRobotConfig
    from vlac.edge.transport.sender import SenderConfig
    from vlac.edge.updater import UpdaterConfig

    ingest_addr = f"tcp://127.0.0.1:{free_port()}"
    critic_addr = f"tcp://127.0.0.1:{free_port()}"
    pub_addr = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.get_context("spawn")
    procs: dict[str, mp.Process] = {}

    def start(name: str, kind: str, c) -> None:
        proc = ctx.Process(target=_child, args=(kind, c), name=name)
        proc.start()
        procs[name] = proc

    start("ingest", "ingest", IngestConfig(
        bind=ingest_addr, store_root=p.store, server_secret_key=p.keys / "server/ingest.key_secret",
        allowed_keys_dir=p.keys / "robots", status_every_s=0.0, fleet_dir=p.fleet))
    start("critic", "critic", RewardServiceConfig(critic=critic, bind=critic_addr))
    on_stall = "guide" if cfg.hitl.guide_on_stall else \
        "return" if cfg.hitl.return_on_stall else "none"
    if on_stall != "none":  # robots check progress from their first episode on
        wait_for_critic(critic_addr)
    start("publisher", "publisher", publisher_config(p, pub_addr, cfg.precision))
    left = max(0, cfg.episodes - done_before)
    updates = max(1, -(-cfg.episodes // cfg.episodes_per_update))
    lcfg = LearnerConfig(
        store_root=p.store, init=actor, out=p.root / "learner", object_store=p.objects,
        features=p.features, episodes_per_update=cfg.episodes_per_update, max_updates=updates,
        idle_timeout_s=60.0, poll_s=1.0, checkpoint_every=5, threads=1,
        rewards=RewardsConfig(mode="critic", service=critic_addr),
        algorithm=PPOConfig(lr=cfg.lr, temperature=cfg.temperature),
        bc=BCConfig(coef=cfg.hitl.bc_coef if cfg.hitl.cloned else 0.0,
                    demo_episodes=20 if cfg.hitl.demo_replay else 0,
                    takeover_replay=cfg.hitl.takeover_replay,
                    steps=cfg.hitl.bc_steps if cfg.hitl.cloned else 0, lr=cfg.hitl.bc_lr),
        publish=PublishConfig(enabled=True, every=cfg.publish_every, tasks=cfg.tasks,
                              publisher=publisher_config(p, pub_addr, cfg.precision)))
    start("learner", "learner", lcfg)
    per_robot = -(-left // len(cfg.tasks))
    for i, task in enumerate(cfg.tasks):
        name = f"robot-{i}"
        sender = SenderConfig(robot_id=name, ingest_address=ingest_addr,
                              robot_secret_key=p.keys / f"robots/{name}.key_secret",
                              server_public_key=p.keys / "server/ingest.key",
                              spool_dir=p.root / "spool" / name)
        start(name, "robot", EdgeAgentConfig(
            sender=sender, robot=MetaWorldRobotConfig(task=task, seed=2000 + 97 * done_before
                                                      + i, max_steps=cfg.max_steps),
            updater=UpdaterConfig(publisher_address=pub_addr, object_store=p.objects,
                                  publisher_key=p.signing.with_name("publisher.ed25519.pub"),
                                  state_dir=p.root / "weights" / name),
            policy="onnx", policy_path=v0, temperature=cfg.temperature, episodes=per_robot,
            chunk_steps=16,
            takeover_prob=cfg.hitl.takeover_prob, takeover_steps=cfg.hitl.takeover_steps,
            on_stall=on_stall, critic_address=critic_addr if on_stall != "none" else "",
            guide_steps=cfg.hitl.guide_steps, stall_check_every=cfg.hitl.stall_check_every,
            stall_patience=cfg.hitl.stall_patience,
            stall_min_gain=cfg.hitl.stall_min_gain,
            sync_every=max(1, cfg.episodes_per_update * cfg.publish_every // len(cfg.tasks)),
            sync_timeout_s=180.0,  # an update whose episodes all tie publishes nothing
            quiet=True))
    return procs


def policy_episodes(store_root: Path) -> list[dict]:
    from vlac.cloud.store.episodes import EpisodeStore

    if not (store_root / "episodes").exists():
        return []
    eps = [e for e in EpisodeStore(store_root, read_only=True).list_episodes()
           if e.get("source") != "demo"]
    return sorted(eps, key=lambda e: e["completed_at"])


def stop_all(procs: dict[str, mp.Process], timeout: float = 60.0) -> None:
    """SIGTERM robots first (they finish the step and flush), then the services."""
    order = [n for n in procs if n.startswith("robot")] + ["learner", "publisher", "critic",
                                                          "ingest"]
    for name in order:
        proc = procs.get(name)
        if proc is not None and proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()


# ----------------------------------------------------------------------------- main
def main(cfg: TrainConfig) -> dict:
    console = Console(width=120)
    console.print(describe(cfg))
    p = Paths(cfg.workdir, cfg.object_store)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    critic, actor, v0 = prepare(cfg, p, console)
    done_before = len(policy_episodes(p.store))
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    console.rule(f"RL: {len(cfg.tasks)} robots, {cfg.episodes} episodes "
                 f"({done_before} already done)")
    t_rl = time.time()
    procs = start_all(cfg, p, critic, actor, v0, done_before) \
        if done_before < cfg.episodes else {}
    try:
        watch(cfg, p, procs, stop, console, t_rl)
    finally:
        stop_all(procs)
    return report(cfg, p, critic, actor, console, t_start, t_rl)


def watch(cfg: TrainConfig, p: Paths, procs: dict[str, mp.Process], stop: threading.Event,
          console: Console, t0: float) -> None:
    from rich.live import Live

    from vlac.cloud.fleet.state import FleetState

    fleet = FleetState(p.fleet / "fleet.db")
    robots = [n for n in procs if n.startswith("robot")]
    h = cfg.hitl
    # the live line counts an episode the operator finished as a success; the report does not
    helped = ", operator's finishes included" if (
        h.guide_on_stall or h.return_on_stall or h.takeover_prob > 0) else ""
    with Live(console=console, refresh_per_second=1, transient=False) as live:
        while not stop.is_set():
            eps = policy_episodes(p.store)
            wins = [e["outcome"]["success"] for e in eps[-20:]]
            running = sorted({r["running_version"] for r in fleet.robots()})
            versions = fleet.versions()
            learner_log = p.root / "learner" / "learner_log.json"
            ret = ""
            if learner_log.exists():
                try:
                    rows = json.loads(learner_log.read_text())["log"]
                    if rows:
                        ret = f", mean return {rows[-1].get('return_mean', float('nan')):.2f}"
                except (ValueError, KeyError):
                    pass
            live.update(f"[bold]{len(eps)}/{cfg.episodes}[/] episodes, success (last 20{helped}) "
                        f"{np.mean(wins) if wins else 0:.0%}, published v"
                        f"{versions[-1]['version'] if versions else '-'}, robots run "
                        f"{running}{ret}, {time.time() - t0:.0f}s")
            robots_done = all(not procs[r].is_alive() for r in robots)
            if robots_done and (not procs.get("learner") or not procs["learner"].is_alive()
                                or len(eps) >= cfg.episodes):
                break
            if any(procs[n].exitcode not in (None, 0) for n in ("ingest", "critic",
                                                                 "publisher", "learner")
                   if n in procs):
                bad = [n for n in procs if procs[n].exitcode not in (None, 0)]
                raise RuntimeError(f"{bad} stopped with an error (see above); rerun `vlac "
                                   "train` to resume")
            if cfg.timeout_s and time.time() - t0 > cfg.timeout_s:
                console.print(f"timeout after {cfg.timeout_s:.0f}s; stopping")
                break
            stop.wait(2.0)
        if robots and all(not procs[r].is_alive() for r in robots) and "learner" in procs:
            procs["learner"].join(120)  # let it consume the last episodes
    fleet.close()


def rolling(x: list[bool], w: int) -> np.ndarray:
    x_ = np.asarray(x, float)
    return np.array([x_[max(0, i - w + 1):i + 1].mean() for i in range(len(x_))])


def _evaluate(job: tuple[str, list[str], int, int]) -> tuple[int, dict]:
    """One policy, greedy, on the fixed evaluation layouts (a child process: one thread).
    Returns the policy's version and the results per task."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vlac.cloud.actor.model import TorchActor
    from vlac.infra.evaluate import ActorPolicy, evaluate

    path, tasks, episodes, max_steps = job
    actor = TorchActor.load(path)
    return actor.version, evaluate(lambda: ActorPolicy(actor, greedy=True), tasks, episodes,
                                   max_steps=max_steps, console=Console(quiet=True))


def final_eval(cfg: TrainConfig, p: Paths, actor: Path) -> dict | None:
    """The starting and the final policy on the same fixed layouts, in two processes."""
    final = p.root / "learner" / "actor.pt"
    if not cfg.final_eval or not final.exists():
        return None
    jobs = [(str(path), cfg.tasks, cfg.final_eval, cfg.max_steps) for path in (actor, final)]
    with mp.get_context("spawn").Pool(2) as pool:
        (_, start), (final_version, end) = pool.map(_evaluate, jobs)
    diff = [int(b) - int(a) for t in cfg.tasks
            for a, b in zip(start[t]["outcomes"], end[t]["outcomes"], strict=True)]
    return {"episodes_per_task": cfg.final_eval, "final_version": final_version,
            "start": {t: start[t]["success_rate"] for t in cfg.tasks},
            "final": {t: end[t]["success_rate"] for t in cfg.tasks},
            "paired_diff": float(np.mean(diff)),
            "paired_se": float(np.std(diff) / np.sqrt(len(diff)))}


def solo_outcomes(eps: list[dict], taken: list[int]) -> dict[str, list[bool]]:
    """Per task, in completion order: did the policy succeed on its own? An episode with
    ``taken`` > 0 operator takeover steps does not count, nor does one that its robot
    restarted from a saved state (return and explore: its previous episode ended
    ``returned``)."""
    out: dict[str, list[bool]] = {}
    last_reason: dict[str, str] = {}
    for e, n in zip(eps, taken, strict=True):
        restarted = last_reason.get(e["robot_id"]) == "returned"
        last_reason[e["robot_id"]] = e["outcome"].get("reason", "")
        out.setdefault(e.get("task_id") or e["task"], []).append(
            bool(e["outcome"]["success"]) and not n and not restarted)
    return out


def report(cfg: TrainConfig, p: Paths, critic: Path, actor: Path, console: Console,
           t_start: float, t_rl: float) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.table import Table

    from vlac.cloud.fleet.state import FleetState
    from vlac.cloud.store.episodes import EpisodeStore

    p.report.mkdir(parents=True, exist_ok=True)
    eps = policy_episodes(p.store)
    store = EpisodeStore(p.store, read_only=True)
    taken, versions_seen = [], []
    for e in eps:
        cols = store.load_columns(e["robot_id"], e["episode_id"],
                                  ["intervention", "policy_version"])
        taken.append(int(np.asarray(cols["intervention"]).sum()))
        versions_seen.append(int(np.asarray(cols["policy_version"])[0]))
    by_task = solo_outcomes(eps, taken)
    interventions = sum(taken)
    returns = sum(e["outcome"].get("reason") == "returned" for e in eps)
    helped = any(taken) or returns > 0
    rl_s = time.time() - t_rl
    evaluation = final_eval(cfg, p, actor)
    w = max(4, min(20, len(eps) // max(1, 4 * len(by_task))))
    fig, ax = plt.subplots(1, 3 if evaluation else 2, figsize=(17 if evaluation else 12, 4))
    table = Table(title=f"vlac train: success per task (rolling {w})")
    for col in ("task", "episodes", "first window", "last window"):
        table.add_column(col)
    rows = {}
    for task, wins in sorted(by_task.items()):
        r = rolling(wins, w)
        line, = ax[0].plot(np.arange(1, len(r) + 1), r, label=task)
        if helped:  # the same episodes, counting the ones the operator finished
            raw = rolling([bool(e["outcome"]["success"]) for e in eps
                           if (e.get("task_id") or e["task"]) == task], w)
            ax[0].plot(np.arange(1, len(raw) + 1), raw, ls="--", color=line.get_color(),
                       label=f"{task}, with help")
        first, last = float(np.mean(wins[:w])), float(np.mean(wins[-w:]))
        rows[task] = {"episodes": len(wins), "first": first, "last": last}
        table.add_row(task, str(len(wins)), f"{first:.0%}", f"{last:.0%}")
    ax[0].set(xlabel="episode of the task", ylabel=f"success (rolling {w})",
              ylim=(-0.02, 1.02), title="rollouts: success vs episodes")
    if by_task:
        ax[0].legend(fontsize=8)
    ax[1].plot(np.arange(1, len(versions_seen) + 1), versions_seen)
    ax[1].set(xlabel="episode (all robots)", ylabel="policy version",
              title="version each episode ran")
    if evaluation:
        x = np.arange(len(cfg.tasks))
        for k, (key, label) in enumerate((("start", "starting policy"),
                                          ("final", f"final (v{evaluation['final_version']})"))):
            ax[2].bar(x + (k - 0.5) * 0.4, [evaluation[key][t] for t in cfg.tasks], 0.4,
                      label=label)
        ax[2].set_xticks(x, [t.removesuffix("-v3") for t in cfg.tasks], fontsize=8)
        ax[2].set(ylim=(0, 1.02), ylabel="success, greedy, no help",
                  title=f"the same {cfg.final_eval} fixed layouts per task")
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(p.report / "success.png", dpi=110)
    plt.close(fig)
    fleet = FleetState(p.fleet / "fleet.db")
    versions = fleet.versions()
    fleet.close()
    voc = None
    try:
        from vlac.cloud.critic.evaluate import CriticEvalConfig
        from vlac.cloud.critic.evaluate import main as critic_eval

        res = critic_eval(CriticEvalConfig(store_root=p.store, critic=critic,
                                           out=p.report / "critic", features=p.features,
                                           seen_tasks=cfg.tasks, unseen_tasks=[]),
                          Console(width=120, quiet=True))
        voc = res.get("summary", {}).get("voc_seen")
    except Exception as e:  # the report must still be written
        console.print(f"critic VOC not measured: {e}")
    steps = sum(e["n_steps"] for e in eps)
    learner_log = p.root / "learner" / "learner_log.json"
    updates = json.loads(learner_log.read_text())["log"] if learner_log.exists() else []
    weights = [u["mean_weight"] for u in updates if "mean_weight" in u]
    summary = {"episodes": len(eps), "tasks": rows, "versions_published": len(versions),
               "versions": [{"version": v["version"], "created_at": v["created_at"]}
                            for v in versions],
               "episode_versions": versions_seen,
               "intervention_steps": interventions, "returns": returns,
               "critic_voc_heldout": voc, "rl_seconds": rl_s,
               "steps_per_s": steps / rl_s if rl_s > 0 else None,
               "total_seconds": time.time() - t_start, "hitl": vars(cfg.hitl),
               "precision": cfg.precision, "temperature": cfg.temperature,
               "mean_importance_weight": float(np.mean(weights)) if weights else None,
               "final_eval": evaluation}
    (p.report / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    md = ["# vlac train report\n", "![success](success.png)\n",
          "| task | episodes | first window | last window |", "|---|---|---|---|"]
    md += [f"| {t} | {r['episodes']} | {r['first']:.0%} | {r['last']:.0%} |"
           for t, r in rows.items()]
    md += ["", "An episode counts as a success only if the policy did it alone: one with an "
           "operator takeover, or one restarted from a saved state, counts as a failure.", "",
           f"- versions published: {len(versions)}",
           f"- episodes: {len(eps)}, {steps} steps, {summary['steps_per_s'] or 0:.1f} steps/s "
           f"during RL ({rl_s / 60:.1f} min)",
           f"- interventions: {interventions} takeover steps, {returns} return-and-explore "
           "restarts", f"- critic VOC on held-out demos: {voc}",
           f"- robots ran the {cfg.precision} ONNX actor, sampling at temperature "
           f"{cfg.temperature}; PPO's mean importance weight (1: the robots sampled what the "
           f"learner scores): {summary['mean_importance_weight'] or float('nan'):.2f}",
           f"- human-in-the-loop: {vars(cfg.hitl)}"]
    if evaluation:
        md += ["", f"Starting policy against the final one (v{evaluation['final_version']}), "
               f"greedy, on the same {cfg.final_eval} fixed evaluation layouts per task:", "",
               "| task | start | final |", "|---|---|---|"]
        md += [f"| {t} | {evaluation['start'][t]:.0%} | {evaluation['final'][t]:.0%} |"
               for t in cfg.tasks]
        md += ["", f"Paired difference (final - start, layout by layout): "
               f"{evaluation['paired_diff']:+.0%} ± {evaluation['paired_se']:.0%} (one "
               "standard error)."]
    (p.report / "report.md").write_text("\n".join(md) + "\n")
    console.print(table)
    console.print(f"report: {p.report / 'report.md'} and {p.report / 'success.png'}")
    return summary
