import json
import math
import re

import pytest

from benchmarks import critic_compare as cc


def write(folder, seeds):
    folder.mkdir(parents=True)
    per_seed = {str(i): {key: v for key in cc.METRICS.values()} for i, v in enumerate(seeds)}
    per_seed["0"]["ref_gain_unseen"] = None  # a metric a seed could not measure
    (folder / "summary.json").write_text(json.dumps({"per_seed": per_seed}))


def test_means_spreads_and_differences_by_hand(tmp_path, capsys):
    write(tmp_path / "control", [0.5, 0.7])
    write(tmp_path / "variant", [0.8, 0.8, 0.9])
    res = cc.main([str(tmp_path / "control"), str(tmp_path / "variant"),
                   "--out", str(tmp_path / "out")])
    c, v = res["control"]["voc_direct_test"], res["variant"]["voc_direct_test"]
    assert c["mean"] == pytest.approx(0.6) and c["sd"] == pytest.approx(math.sqrt(0.02))
    assert v["mean"] == pytest.approx(2.5 / 3) and v["n"] == 3
    assert v["vs_control"] == pytest.approx(2.5 / 3 - 0.6)
    assert res["control"]["ref_gain"]["n"] == 1  # the missing seed is left out, not zero
    assert (tmp_path / "out" / "compare.png").exists()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"best=variant best_voc_direct_test=0\.833 "
                        r"control_voc_direct_test=0\.600 control_sd=0\.141", last)


def test_a_folder_without_results_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run benchmarks/critic\.py"):
        cc.main([str(tmp_path / "nothing")])
