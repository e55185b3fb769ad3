"""A live `vlac ingest serve` survives a Hypothesis fuzz campaign from a robot with a valid
key, keeps serving honest robots throughout, and stays self-consistent
(``tests.fuzz_campaign``; ``benchmarks/ingest_fuzz.py`` is the long run)."""

from tests.fuzz_campaign import run


def test_live_ingest_survives_fuzzing_and_still_acks_honest_robots(tmp_path):
    report = run(tmp_path, n_frames=250, honest_robots=2, min_episodes=3)
    assert report.ingest_deaths == 0, report.killers
    assert report.alive_after and report.honest_acked_after
    assert report.store_inconsistent == "" and report.complete_episodes > report.honest_sent
    assert report.honest_sent >= 6 and report.honest_stored == report.honest_sent
    assert report.frames == 250 and report.error_replies > 0
    # the run reached past decoding: chunk validation and the store's rules answered too
    codes = {k for k in report.replies if k.startswith("error:")}
    assert {"error:invalid", "error:malformed"} <= codes, codes
    assert codes & {"error:bad_shape", "error:bad_length", "error:bad_dtype"}, codes
    assert "error:contradicts" in codes, codes
