"""MP4 files of LeRobot's video mode, written and read with PyAV (its wheels bundle FFmpeg).

Each camera has its own files (``videos/<key>/chunk-XXX/file-XXX.mp4``) holding several
episodes back to back, one frame every 1/fps seconds from the file's start, as LeRobot's
``_save_episode_video`` leaves them after concatenating; an episode's frames are those from
its ``from_timestamp``. Reading follows LeRobot's ``decode_video_frames``: the frame for
data timestamp ``t`` is the one shown at ``from_timestamp + t``, within ``TOLERANCE_S``.

PyAV is imported on first use, so image mode works without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vlac.cloud.store.lerobot.format import VIDEO_PATH, fail, next_file

# LeRobot's default codec first (AV1 through SVT-AV1); H.264 where a build lacks it.
CODECS = ("libsvtav1", "libx264")
PIX_FMT = "yuv420p"  # what every player and LeRobot's decoders take
GOP = 2  # LeRobot's default: a keyframe every 2 frames keeps random access cheap
CRF = 30  # LeRobot's default quality
TOLERANCE_S = 1e-4  # LeRobot's: how far a frame may be from the time asked for
_INSTALL = "pip install av (it is in the `cloud` extra)"


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise RuntimeError(f"LeRobot video mode needs PyAV: {_INSTALL}") from None
    # SVT-AV1 prints its banner and config to stderr unless told otherwise: errors only
    os.environ.setdefault("SVT_LOG", "1")
    return av


def pick_codec() -> str:
    """The first of CODECS this FFmpeg build can encode."""
    av = _av()
    for name in CODECS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"this PyAV build has none of the encoders {list(CODECS)}; reinstall "
                       f"it from PyPI ({_INSTALL}), whose wheels bundle both")


def check_frame_size(cam: str, shape: tuple[int, ...]) -> None:
    """yuv420p halves the chroma resolution, so both sides must be even."""
    if len(shape) != 3 or shape[2] != 3 or shape[0] % 2 or shape[1] % 2:
        raise ValueError(f"camera {cam} has frames of shape {shape}; video mode needs RGB "
                         "frames with an even height and width (yuv420p): export it in "
                         "image mode instead (--mode image)")


@dataclass
class CameraVideos:
    """One camera's MP4 files being written, as LeRobot writes them: each episode is encoded
    on its own (so its size is known and it starts on a keyframe), then its packets are
    appended to the current file without re-encoding, shifted to follow the episodes before;
    a new file is started when the episode would take the current one past ``limit`` bytes."""

    root: Path
    key: str  # the feature, e.g. observation.images.corner
    fps: int
    limit: float
    codec: str
    chunk: int = 0
    file: int = 0
    frames: int = 0  # in the current file
    nbytes: int = 0  # of the episodes in the current file
    paths: list[str] = field(default_factory=list)  # relative to root, in order
    _out: Any = None
    _stream: Any = None

    def write(self, frames: np.ndarray) -> dict[str, Any]:
        """Append one episode's (T, H, W, 3) uint8 frames; returns its episodes-table
        columns ``videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp}``."""
        tmp = self.root / f".{self.key}.episode.mp4"
        try:
            encode_episode(tmp, frames, self.fps, self.codec)
            size = tmp.stat().st_size
            if self._out is not None and self.frames and self.nbytes + size >= self.limit:
                self.close()
                self.chunk, self.file = next_file(self.chunk, self.file)
                self.frames = self.nbytes = 0
            start = self.frames
            self._append(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self.frames += len(frames)
        self.nbytes += size
        k = f"videos/{self.key}/"
        return {k + "chunk_index": self.chunk, k + "file_index": self.file,
                k + "from_timestamp": start / self.fps, k + "to_timestamp": self.frames / self.fps}

    def _append(self, episode: Path) -> None:
        """Remux the episode's packets onto the end of the current file (opened if none)."""
        av = _av()
        with av.open(str(episode)) as src:
            ist = src.streams.video[0]
            if self._out is None:
                rel = VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk,
                                        file_index=self.file)
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                self._out = av.open(str(self.root / rel), "w")
                self._stream = self._out.add_stream_from_template(ist, opaque=True)
                self._stream.time_base = ist.time_base  # so packets need no rescaling
                self.paths.append(rel)
            shift = round(Fraction(self.frames, self.fps) / ist.time_base)
            for packet in src.demux(ist):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.pts += shift
                packet.dts += shift
                packet.stream = self._stream
                self._out.mux(packet)

    def close(self) -> None:
        """Finish the current file."""
        if self._out is not None:
            self._out.close()
            self._out = self._stream = None


def encode_episode(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    """Encode frames into an MP4 of their own: frame i shows at i/fps, LeRobot's settings."""
    av = _av()
    options = {"g": str(GOP), "crf": str(CRF)}
    if codec == "libsvtav1":
        options["preset"] = "12"  # LeRobot's: the fastest
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = PIX_FMT
        stream.time_base = Fraction(1, fps)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode())  # the frames the encoder still holds


def video_info(path: Path) -> dict[str, Any]:
    """The info.json ``info`` entry of a video feature, read from one of its files as
    LeRobot's get_video_info reads it."""
    av = _av()
    with av.open(str(path)) as container:
        st = container.streams.video[0]
        return {"video.height": st.height, "video.width": st.width,
                "video.codec": st.codec.canonical_name, "video.pix_fmt": st.pix_fmt,
                "video.is_depth_map": False, "video.fps": int(st.base_rate),
                "video.channels": 3, "has_audio": len(container.streams.audio) > 0}


def read_frames(root: Path, rel: str, from_ts: float, timestamps: np.ndarray,
                where: str) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames shown at ``from_ts + timestamps`` in ``root/rel``.

    Raises LeRobotFormatError naming the file when it is missing, unreadable (a truncated
    download) or has no frame within TOLERANCE_S of a time asked for."""
    av = _av()
    path = root / rel
    if not path.is_file():
        raise fail(root, f"{where}: video file {rel} is missing",
                   "The download is incomplete: fetch the dataset again")
    try:
        with av.open(str(path)) as container:
            return _decode_span(container, from_ts + np.asarray(timestamps, np.float64))
    except av.error.FFmpegError as e:
        raise fail(root, f"{where}: video file {rel} cannot be decoded ({e})",
                   "It is damaged or incomplete (a truncated download?): fetch the dataset "
                   "again, or re-encode it from its source") from None
    except _Missing as e:
        raise fail(root, f"{where}: video file {rel} has {e}", "The video is shorter than "
                   "its episode or the timestamps are not frame_index/fps: fetch the "
                   "dataset again, or re-encode it from its source") from None


class _Missing(Exception):
    """No frame for a time asked for (a message, reworded by read_frames)."""


def _decode_span(container: Any, query: np.ndarray) -> np.ndarray:
    """Decode from the keyframe before ``query[0]`` until every (ascending) query time has
    its frame; each frame is matched to the query times within TOLERANCE_S of it."""
    if len(query) == 0:
        raise _Missing("no frames asked for")
    st = container.streams.video[0]
    if query[0] > TOLERANCE_S:
        container.seek(max(0, int((query[0] - TOLERANCE_S) / st.time_base)), stream=st,
                       backward=True, any_frame=False)
    out: list[np.ndarray | None] = [None] * len(query)
    j = 0
    for frame in container.decode(st):
        t = float(frame.pts * frame.time_base)
        if query[j] < t - TOLERANCE_S:
            break  # the frame for query[j] was skipped: the timing does not fit
        if abs(t - query[j]) < TOLERANCE_S:
            pixels = frame.to_ndarray(format="rgb24")
            while j < len(query) and abs(t - query[j]) < TOLERANCE_S:
                out[j] = pixels
                j += 1
            if j == len(query):
                return np.stack(out)
    raise _Missing(f"no frame within {TOLERANCE_S} s of {query[j]:.6f} s (frame {j} of "
                   f"{len(query)} asked for)")
