"""The policy runtime on the robot: the exported actor under ONNX Runtime.

Execution providers are chosen at run time in the order TensorRT > CUDA > CPU among those this
onnxruntime build offers (``onnxruntime-gpu`` on a Jetson or a CUDA box lists the first two;
the plain ``onnxruntime`` wheel only has CPU), and the choice is logged. The CPU path is the
one the tests prove. ``act`` samples with a temperature (or greedily) and returns the tokens,
the continuous action they decode to, the behaviour log-probability and the policy version.

Two kinds of export run here: the small actor's (``vlac actor export``: the sentence is looked
up among the exported ones' embeddings) and a transformers actor's (``cloud.actor.hf_export``,
metadata ``kind: transformers``: the robot tokenizes the prompt and preprocesses the frame
itself with ``shared.hf_prompt.HFPrompt``, so any sentence within the exported prompt length
works).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vlac.edge.policy import Policy, PolicyStep
from vlac.edge.robots.robot import Observation
from vlac.shared.tokenizer import ActionTokenizer

log = logging.getLogger(__name__)

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str], wanted: tuple[str, ...] = PREFERRED) -> list[str]:
    """The wanted providers this build has, in preference order (CPU always last)."""
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class PolicyLoadError(RuntimeError):
    """The artifact cannot be used: the message says why and what to do."""


class OnnxPolicy(Policy):
    def __init__(self, path: str | Path, *, temperature: float = 1.0, greedy: bool = False,
                 seed: int = 0, threads: int = 1,
                 providers: tuple[str, ...] = PREFERRED) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.exists():
            raise PolicyLoadError(f"no policy file at {path}; export one with "
                                  "`vlac actor export`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        chosen = choose_providers(ort.get_available_providers(), providers)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=chosen)
        except Exception as e:  # onnxruntime raises its own exception types
            raise PolicyLoadError(f"{path} is not a loadable ONNX model: {e}") from None
        self.providers = self.session.get_providers()
        log.info("policy %s runs on %s", path.name, self.providers[0])
        meta = self.session.get_modelmeta().custom_metadata_map.get("vlac")
        if meta is None:
            raise PolicyLoadError(f"{path} has no vlac metadata; export it with "
                                  "`vlac actor export`")
        self.meta = json.loads(meta)
        if self.meta.get("format") != "vlac-actor-onnx":
            raise PolicyLoadError(f"{path} is not a vlac actor export")
        names = [i.name for i in self.session.get_inputs()]
        if names != self.meta["inputs"]:
            raise PolicyLoadError(f"{path} inputs {names} do not match its metadata")
        tok = self.meta["action_tokenizer"]
        self.tokenizer = ActionTokenizer(tok["low"], tok["high"], tok["bins"])
        self.version = int(self.meta["policy_version"])
        self.camera = self.meta["observation"]["camera"]
        self.image_shape = tuple(self.meta["observation"]["image_shape"])
        self.prompt = None
        if self.meta.get("kind") == "transformers":
            from vlac.shared.hf_prompt import HFPrompt

            self.prompt, self.text = HFPrompt(self.meta["prompt"]), {}
        else:
            self.text = {s: np.asarray(v, np.float32) for s, v in
                         self.meta["text_embeddings"].items()}
        self.temperature = temperature
        self.greedy = greedy
        self.rng = np.random.default_rng(seed)
        self._a, self._bins = self.meta["action_dim"], self.meta["action_bins"]

    def run(self, image: np.ndarray, proprio: np.ndarray, task: str, greedy: bool | None = None
            ) -> tuple[np.ndarray, np.ndarray, float]:
        """Raw call: (tokens (A,), log-probs (A,), value)."""
        if self.prompt is None and task not in self.text:
            known = sorted(self.text)[:8]
            raise ValueError(f"task sentence {task!r} was not exported with this policy; "
                             f"known sentences include {known}. Re-export with its task")
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 {list(self.image_shape)}, got "
                             f"{image.dtype} {list(image.shape)}")
        greedy = self.greedy if greedy is None else greedy
        gumbel = np.zeros((1, self._a, self._bins), np.float32) if greedy else \
            self.rng.gumbel(size=(1, self._a, self._bins)).astype(np.float32)
        feeds = {"gumbel": gumbel, "temperature": np.array([self.temperature], np.float32)}
        if self.prompt is not None:  # a transformers actor: its own prompt and pixels
            proprio = np.asarray(proprio, np.float64)
            want = self.meta["observation"]["proprio_dim"]
            if proprio.shape != (want,) or not np.isfinite(proprio).all():
                raise ValueError(f"proprio must be {want} finite numbers, got {proprio}")
            feeds.update(self.prompt.feeds(image, proprio, task))
        else:
            feeds.update(image=image[None], proprio=np.asarray(proprio, np.float32)[None],
                         text=self.text[task][None])
        tokens, logps, value = self.session.run(None, feeds)
        return tokens[0].astype(np.int32), logps[0], float(value[0])

    def act(self, obs: Observation) -> PolicyStep:
        tokens, logps, _ = self.run(obs.images[self.camera], obs.proprio, obs.task)
        return PolicyStep(self.tokenizer.decode(tokens), tokens, float(logps.sum()),
                          self.version)
