"""The task sentences and Meta-World's ML45 split."""

from collections import Counter

from vlac.shared import tasks


def test_the_ml45_split_is_metaworlds():
    from metaworld.env_dict import ML45_V3

    assert list(tasks.ML45_TRAIN) == list(ML45_V3["train"])
    assert list(tasks.ML45_TEST) == list(ML45_V3["test"])
    assert not set(tasks.ML45_TRAIN) & set(tasks.ML45_TEST)


def test_every_ml45_task_has_its_own_hand_written_sentences():
    """Templated sentences would make the test tasks' language a task id; a sentence shared by
    two tasks would make a 'mismatched sentence' negative match."""
    for t in tasks.ML45_TRAIN + tasks.ML45_TEST:
        assert tasks.known(t), t
        assert len(set(tasks.instructions(t))) == 4, t
    counts = Counter(s for v in tasks.INSTRUCTIONS.values() for s in v)
    assert [s for s, n in counts.items() if n > 1] == []


def test_unknown_tasks_get_templated_sentences():
    assert not tasks.known("fly-v3")
    assert tasks.instructions("fly-v3")[0] == "fly"
    assert tasks.instruction("door-lock-v3", index=5) == tasks.instructions("door-lock-v3")[1]
