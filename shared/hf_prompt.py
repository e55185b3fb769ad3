"""A transformers actor's prompt, built on the robot without torch or transformers.

The exported graph of a transformers actor (``vlac.cloud.actor.hf_export``) takes what its
processor would have made: ``input_ids`` and ``attention_mask`` left-padded to a fixed length,
and ``pixel_values``. ``HFPrompt`` makes them from a spec the export writes into the model's
metadata and checks against the real processor at export time:

- the prompt text with two sentinels, one for the task sentence and one for the
  proprioception, the image placeholder already expanded as the processor expands it;
- the tokenizer (its ``tokenizer.json``), run by the ``tokenizers`` library (Rust);
- the image processing: a Pillow resize with the processor's filter, then rescale and
  normalise per channel, channels first.

``proprio_text`` is the one place the proprioception is printed, for the cloud's prompts and
the robot's alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TASK_SLOT = "\x00task\x00"
PROPRIO_SLOT = "\x00proprio\x00"


def proprio_text(proprio: Sequence[float] | np.ndarray) -> str:
    """Proprioception as prompt text: 3 decimals, ``[a, b, ...]``."""
    # round first and add 0.0 so that -0.0 and -0.0001 both print as 0.000
    values = [round(float(v), 3) + 0.0 for v in np.asarray(proprio, np.float64).reshape(-1)]
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


class PromptTooLong(ValueError):
    """The prompt has more tokens than the exported graph's fixed length."""


class HFPrompt:
    """The graph's prompt inputs from (camera frame, proprio, task sentence)."""

    def __init__(self, spec: dict) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self.template: str = spec["template"]
        self.length = int(spec["length"])
        self.pad_id = int(spec["pad_id"])
        self.tokenizer = Tokenizer.from_str(spec["tokenizer"])
        # a tokenizer.json keeps the padding/truncation its last user set; the graph's
        # padding is ours (on the left, to ``length``), and a long prompt must fail loudly
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        img = spec["image"]
        self.size = (int(img["width"]), int(img["height"]))
        self.resample = int(img["resample"])
        self.rescale = float(img["rescale"])
        self.mean = np.asarray(img["mean"], np.float32)[:, None, None]
        self.std = np.asarray(img["std"], np.float32)[:, None, None]

    def text(self, task: str, proprio: np.ndarray) -> str:
        return self.template.replace(TASK_SLOT, task).replace(PROPRIO_SLOT,
                                                              proprio_text(proprio))

    def token_ids(self, task: str, proprio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), each (1, length) int64, padded on the left."""
        ids = self.tokenizer.encode(self.text(task, proprio), add_special_tokens=False).ids
        if len(ids) > self.length:
            raise PromptTooLong(
                f"the prompt for {task!r} has {len(ids)} tokens; this policy was exported "
                f"for at most {self.length}. Shorten the sentence or re-export with a longer "
                "--prompt-length")
        pad = self.length - len(ids)
        input_ids = np.array([[self.pad_id] * pad + ids], np.int64)
        mask = np.array([[0] * pad + [1] * len(ids)], np.int64)
        return input_ids, mask

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 frame -> (1, 3, h, w) float32, as the processor makes it."""
        from PIL import Image

        frame = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
        x = np.asarray(frame.resize(self.size, resample=self.resample), np.float32)
        x = (x * self.rescale).transpose(2, 0, 1)
        return ((x - self.mean) / self.std)[None].astype(np.float32)

    def feeds(self, image: np.ndarray, proprio: np.ndarray, task: str) -> dict[str, np.ndarray]:
        input_ids, mask = self.token_ids(task, proprio)
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": self.pixels(image)}
