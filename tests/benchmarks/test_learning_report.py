"""The learning benchmark's numbers (benchmarks/learning_report.py) on hand-made rows whose
answers are worked out by hand below, and ``--combine`` over two folders."""

import json
import math
import sys

import learning
import pytest
from learning_report import (
    episodes_to_reach,
    eval_success,
    hitl_ratio,
    key_line,
    load_results,
    paired_points,
)


def ev(variant, seed, task, outcomes, mode="greedy"):
    return [{"variant": variant, "seed": seed, "task": task, "eval": True, "mode": mode,
             "layout": i, "success": bool(ok)} for i, ok in enumerate(outcomes)]


def roll(variant, seed, task, outcomes, interventions=()):
    return [{"variant": variant, "seed": seed, "task": task, "episode": k,
             "success": bool(ok), "interventions": 3 if k in interventions else 0,
             "returned": False} for k, ok in enumerate(outcomes)]


def rows():
    """Two tasks (A, B), two seeds, two evaluation layouts each."""
    r = []
    for seed, task, frozen, critic in [(0, "A", [1, 0], [1, 1]), (0, "B", [0, 0], [1, 0]),
                                       (1, "A", [1, 0], [0, 0]), (1, "B", [0, 1], [0, 1])]:
        r += ev("frozen", seed, task, frozen) + ev("ppo-critic", seed, task, critic)
        r += ev("ppo-critic", seed, task, [1, 1], mode="sampled")  # never in the key line
    r += ev("ppo-sparse", 0, "A", [0, 0]) + ev("ppo-sparse", 0, "B", [0, 0])  # seed 0 only
    # rollouts, window 2: the no-help variant's final rolling rate is the level to reach
    r += roll("ppo-critic", 0, "A", [0, 0, 1, 1]) + roll("ppo-critic", 0, "B", [0, 1, 0, 0])
    r += roll("ppo-critic", 1, "A", [1, 1, 1, 1]) + roll("ppo-critic", 1, "B", [1, 0, 1, 0])
    # the first success was the expert's (interventions): it does not count
    r += roll("ppo-critic-hitl", 0, "A", [1, 1, 1, 0], interventions=(0,))
    r += roll("ppo-critic-hitl", 0, "B", [0, 0, 0, 0])
    r += roll("ppo-critic-hitl", 1, "A", [1, 0, 1, 0])  # (1, B): no help run
    return r


def test_episodes_to_reach_counts_full_windows():
    assert episodes_to_reach([0, 1, 1, 0, 1], 2, 0.5) == 2  # window [0, 1] at episode 2
    assert episodes_to_reach([0, 1, 1, 0, 1], 2, 1.0) == 3  # [1, 1]
    assert episodes_to_reach([1, 0, 1, 0], 2, 1.0) == 4  # never: its full length
    assert episodes_to_reach([1, 1, 1], 3, 0.0) == 3  # no full window before episode 3
    assert episodes_to_reach([1, 1, 0], 2, 0.0) == 2


def test_paired_points_layout_by_layout_and_seed_by_seed():
    # critic - frozen per (seed, task, layout): (0,A) 0,+1; (0,B) +1,0; (1,A) -1,0; (1,B) 0,0
    assert paired_points(rows(), "ppo-critic", "frozen") == pytest.approx(100 * 1 / 8)
    # only seed 0 is shared: (0,A) +1,+1; (0,B) +1,0
    assert paired_points(rows(), "ppo-critic", "ppo-sparse") == pytest.approx(75.0)
    assert math.isnan(paired_points(rows(), "ppo-critic", "frozen", "sampled"))  # none
    assert math.isnan(paired_points(rows(), "ppo-oracle", "frozen"))
    # per (task, seed): 1, .5, 0, .5
    assert eval_success(rows(), "ppo-critic") == pytest.approx(0.5)
    assert eval_success(rows(), "ppo-critic", "sampled") == pytest.approx(1.0)


def test_hitl_ratio_against_the_no_help_final_rate():
    # (0,A): level mean([1, 1]) = 1; help [0*, 1, 1, 0] reaches [1, 1] at episode 3
    # (0,B): level 0; the first full window, episode 2
    # (1,A): level 1; help [1, 0, 1, 0] never: 4;  (1,B) has no help run
    assert hitl_ratio(rows(), "ppo-critic", 2) == pytest.approx((3 + 2 + 4) / 3 / 4)
    assert math.isnan(hitl_ratio(rows(), "ppo-sparse", 2))


def test_key_line():
    expected = ("critic_vs_frozen=+12.5 critic_vs_sparse=+75.0 oracle_vs_frozen=nan "
                "hitl_episodes_ratio=0.750 success_at_200=0.500")
    assert key_line(rows(), ["ppo"], window=2) == expected
    assert key_line(rows(), None, window=2) == expected  # ppo: the one with a critic variant
    # no ppo-critic among parl's: the best algorithm is parl, and every number is nan
    assert key_line(rows(), ["parl"], window=2) == (
        "critic_vs_frozen=nan critic_vs_sparse=nan oracle_vs_frozen=nan "
        "hitl_episodes_ratio=nan success_at_200=nan")


def write_results(folder, by_job):
    folder.mkdir()
    for (variant, seed), r in by_job.items():
        (folder / f"{variant}-s{seed}.json").write_text(json.dumps(r))


def split(rs):
    by_job = {}
    for r in rs:
        by_job.setdefault((r["variant"], r["seed"]), []).append(r)
    return by_job


def test_combine_reads_two_runs_and_refuses_a_job_twice(tmp_path, monkeypatch, capsys):
    jobs = split(rows())
    write_results(tmp_path / "s0", {k: v for k, v in jobs.items() if k[1] == 0})
    write_results(tmp_path / "s1", {k: v for k, v in jobs.items() if k[1] == 1})
    (tmp_path / "s0" / "run.json").write_text(json.dumps({"algorithms": ["ppo"]}))
    loaded, algorithms = load_results([tmp_path / "s0", tmp_path / "s1"])
    assert len(loaded) == len(rows()) and algorithms == ["ppo"]
    monkeypatch.setattr(sys, "argv", ["learning.py", "--combine", str(tmp_path / "s0"),
                                      str(tmp_path / "s1"), "--window", "2", "--out",
                                      str(tmp_path / "report")])
    learning.main()
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == key_line(rows(), ["ppo"], window=2)
    assert any("greedy" in line for line in out) and any("sampled" in line for line in out)
    assert (tmp_path / "report" / "learning.png").stat().st_size > 1000
    # the same (variant, seed) in two folders
    write_results(tmp_path / "again", {("frozen", 1): jobs[("frozen", 1)]})
    monkeypatch.setattr(sys, "argv", ["learning.py", "--combine", str(tmp_path / "s1"),
                                      str(tmp_path / "again")])
    with pytest.raises(SystemExit, match=r"frozen seed 1 is in both .*s1/frozen-s1\.json and "
                       r".*again/frozen-s1\.json"):
        learning.main()
