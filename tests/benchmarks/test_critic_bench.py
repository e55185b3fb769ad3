"""benchmarks/critic.py on a tiny subset (2 training tasks, 1 test task, 20 steps, 2 seeds):
every step runs, the per-seed table and both key lines come out, and a rerun collects and
trains nothing again."""

import json
import re

import critic as bench
import pytest

from vlac.cloud.store.episodes import EpisodeStore

pytestmark = pytest.mark.filterwarnings("ignore")


def test_a_tiny_run_reports_the_test_task_per_seed(tmp_path, capsys):
    argv = ["--tasks", "reach-v3,button-press-v3/drawer-close-v3", "--episodes", "3",
            "--noisy", "0", "--stopped", "2", "--stop-after", "8", "--generic", "0.3",
            "--steps", "20", "--seeds", "2",
            "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    res = bench.main(argv)
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert re.fullmatch(r"voc_seen=\S+ voc_unseen=\S+ negatives_ok=\S+ pairs_per_s=\S+",
                        lines[-2])
    assert re.fullmatch(r"voc_direct_test=-?[\d.]+ auc_test=\S+ ref_gain=[+-][\d.]+ "
                        r"done_precision=\S+ negatives_ok=[\d.]+ ref_gain_generic=\S+", lines[-1])
    assert "drawer-close-v3" in out and "mean" in out
    # 3 clean and 2 stopping episodes per task; the stopping expert gives up within 8 steps,
    # so the test task has failures and an AUC
    eps = EpisodeStore(tmp_path / "work" / "store").list_episodes()
    assert len(eps) == 3 * 5
    for seed in (0, 1):
        row = res["results"][seed]["voc"]["unseen"]["drawer-close-v3"]
        assert row["failed"] == 2 and 0 <= row["auc"] <= 1
    assert (tmp_path / "work" / "critic" / "critic.pt").exists()
    assert (tmp_path / "work" / "critic-s1" / "critic.pt").exists()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["test_tasks"] == ["drawer-close-v3"] and set(summary["per_seed"]) == {"0", "1"}
    before = (tmp_path / "work" / "critic" / "critic.pt").stat().st_mtime_ns
    bench.main(argv)  # the second run re-measures only
    assert len(EpisodeStore(tmp_path / "work" / "store").list_episodes()) == 3 * 5
    assert (tmp_path / "work" / "critic" / "critic.pt").stat().st_mtime_ns == before
