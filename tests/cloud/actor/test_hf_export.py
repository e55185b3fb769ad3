"""A transformers actor exported to ONNX (``cloud.actor.hf_export``) and run by the robot's
``OnnxPolicy``, on the tiny random InternVL: the robot's prompt equals the processor's, the
fp32 graph's tokens, log-probs and values equal ``TransformersActor.act`` (greedy and with the
same Gumbel noise), and the INT8-weight graph is smaller and mostly agrees."""

import numpy as np
import pytest
import torch

from tests.cloud.models.test_hf_critic import NO_TILES
from vlac.cloud.actor.hf_export import export_hf_actor
from vlac.cloud.models.hf_actor import TransformersActor
from vlac.cloud.models.tiny import tiny_internvl_actor
from vlac.edge.robots.robot import Observation
from vlac.edge.runtime import OnnxPolicy
from vlac.shared.hf_prompt import HFPrompt, PromptTooLong

pytestmark = pytest.mark.filterwarnings("ignore")
torch.set_num_threads(1)

TASKS = ["press the button", "open the drawer on the left"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_export")
    actor = TransformersActor(tiny_internvl_actor(root / "ready"), images_kwargs=NO_TILES,
                              version=3)
    samples = [(*obs(i), TASKS[i % 2]) for i in range(4)]
    paths = export_hf_actor(actor, root / "export", samples, version=3)
    return actor, paths


def obs(seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            rng.uniform(-1, 1, 4).astype(np.float32))


def test_the_robots_prompt_is_the_processors(exported):
    actor, paths = exported
    policy = OnnxPolicy(paths["fp32"])
    assert policy.version == 3 and policy.meta["kind"] == "transformers"
    prompt: HFPrompt = policy.prompt
    image, proprio = obs(20)
    task = "slide the plate back into its slot"  # never seen by the export
    enc = actor.build_inputs(image[None], proprio[None], [task])
    ids, mask = prompt.token_ids(task, proprio)
    n = int(mask.sum())
    assert ids.shape == mask.shape == (1, prompt.length) and not mask[0, :-n].any()
    assert ids[0, -n:].tolist() == enc["input_ids"][0].tolist()
    np.testing.assert_allclose(prompt.pixels(image), enc["pixel_values"].numpy(), atol=1e-5)
    # a tokenizer.json saved while padding was on (the processor leaves it so) pads nothing
    from tokenizers import Tokenizer

    padded = Tokenizer.from_str(prompt.spec["tokenizer"])
    padded.enable_padding(length=300)
    again = HFPrompt(dict(prompt.spec, tokenizer=padded.to_str())).token_ids(task, proprio)
    assert [x.tolist() for x in again] == [ids.tolist(), mask.tolist()]
    with pytest.raises(PromptTooLong, match="re-export with a longer"):
        prompt.token_ids(" ".join(["press the button"] * 40), proprio)
    with pytest.raises(ValueError, match="proprio must be 4 finite numbers"):
        policy.run(image, np.array([0.0, np.nan, 0, 0]), task)


def test_fp32_graph_acts_as_the_transformers_actor(exported):
    actor, paths = exported
    policy = OnnxPolicy(paths["fp32"])
    values = []
    for i in range(10, 16):
        image, proprio = obs(i)
        task = TASKS[i % 2]
        _, tokens, logp, value = actor.act(image, proprio, task, greedy=True)
        got, logps, v = policy.run(image, proprio, task, greedy=True)
        assert got.tolist() == tokens.tolist()
        assert abs(float(logps.sum()) - logp) < 1e-3 and abs(v - value) < 1e-3
        values.append(value)
        actor.rng, policy.rng = np.random.default_rng(i), np.random.default_rng(i)
        _, tokens, logp, _ = actor.act(image, proprio, task)  # the same Gumbel noise
        step = policy.act(Observation(images={"corner": image}, proprio=proprio, task=task))
        assert step.tokens.tolist() == tokens.tolist() and abs(step.logprob - logp) < 1e-3
    assert np.ptp(values) > 1e-2  # the observations matter (so the comparison means something)


def test_int8_weights_are_smaller_and_mostly_agree(exported):
    """Sampled with the same noise (the greedy token of this random model hardly depends on
    its input, so agreement on it would say little)."""
    _, paths = exported
    fp32, int8 = OnnxPolicy(paths["fp32"]), OnnxPolicy(paths["int8"])
    assert paths["int8"].stat().st_size < 0.5 * paths["fp32"].stat().st_size
    agree, gaps = [], []
    for i in range(30, 54):
        image, proprio = obs(i)
        fp32.rng, int8.rng = np.random.default_rng(i), np.random.default_rng(i)
        a, la, _ = fp32.run(image, proprio, TASKS[i % 2])
        b, lb, _ = int8.run(image, proprio, TASKS[i % 2])
        agree.append(np.mean(a == b))
        gaps.append(float(np.abs(la - lb).max()))
    assert np.mean(agree) >= 0.75 and np.median(gaps) < 0.5, (agree, gaps)


def test_cli_exports_a_checkpoint_folder(exported, tmp_path):
    from tests.cloud.test_learner import make_steps
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.infra.cli import main as cli

    actor, _ = exported
    store = EpisodeStore(tmp_path / "store", fsync=False)
    store.write_episode("operator", "demo-0", TASKS[0], make_steps(5), True, source="demo",
                        task_id="button-v3")
    assert cli(["actor", "export", "--actor", str(actor.path), "--store-root",
                str(tmp_path / "store"), "--tasks", "button-v3", "--out", str(tmp_path / "x"),
                "--version", "7", "--prompt-length", "160"]) == 0
    policy = OnnxPolicy(tmp_path / "x" / "actor_int8.onnx")
    assert policy.version == 7 and policy.prompt.length == 160
    assert policy.meta["tasks"] == [TASKS[0]] and policy.meta["precision"] == "int8"
