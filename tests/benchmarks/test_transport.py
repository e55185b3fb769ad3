"""benchmarks/transport.py runs end to end on a tiny budget and says what its key line names:
the durable path, measured, over the disk's limit for the bytes it wrote."""

import re

import numpy as np
import transport


def test_a_tiny_run_reports_the_durable_path_against_the_disk(tmp_path, capsys):
    ratio = transport.main(["--steps", "64", "--robots", "1", "--repeats", "1",
                            "--frames", "synthetic", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    line = out.strip().splitlines()[-1]
    m = re.fullmatch(r"ratio_vs_disk=([\d.]+) steps_per_s_1=(\d+) wire_bytes_per_step=(\d+)",
                     line)
    assert m, line
    assert float(m[1]) == round(ratio, 2) and ratio > 0
    # the default codec's chunks are smaller on the wire than raw 128x128x3 frames
    assert int(m[3]) < 128 * 128 * 3
    assert "disk, fsync per file" in out and "none" in out
    assert (transport.OUT / "transport.png").exists()


def test_the_disk_measure_writes_every_byte_and_leaves_nothing(tmp_path):
    bw = transport.disk_sync_write(tmp_path, [(4096, 8), (10_000, 3)])
    assert bw > 0
    assert list(tmp_path.iterdir()) == []


def test_real_frames_are_laid_consecutively_per_robot(tmp_path):
    frames = np.arange(50, dtype=np.uint8)[:, None, None, None] * np.ones((1, 128, 128, 3),
                                                                          np.uint8)
    path = tmp_path / "f.npy"
    np.save(path, frames)
    parts = transport._make_steps(1, 32, 16, str(path))
    first = [int(p.images["corner"][i, 0, 0, 0]) for p in parts for i in range(16)]
    assert first == [(97 + i) % 50 for i in range(32)]
