"""Natural-language instructions for Meta-World tasks.

Several paraphrases per task, so that language is not just a task id: the critic and actor
see varied sentences, and held-out paraphrases test that they read them. Tasks without a
hand-written entry get template sentences made from their name.
"""

from __future__ import annotations

import random

HEADLINE_TASKS = ("reach-v3", "button-press-v3", "drawer-open-v3", "push-v3")
"""The four tasks of the headline (about 30% -> 90% success within 200 episodes): what the
main job, the actor's pretraining and export, the learner's publishing and the learning
benchmark run by default."""

INSTRUCTIONS: dict[str, list[str]] = {
    "reach-v3": ["reach the target position", "move the gripper to the goal",
                 "bring the robot hand to the marked spot", "go to the target"],
    "push-v3": ["push the puck to the goal", "slide the puck over to the target",
                "push the small cylinder to the marked spot", "nudge the puck onto the goal"],
    "pick-place-v3": ["pick up the puck and place it at the goal",
                      "grasp the puck and put it on the target",
                      "lift the puck and move it to the marked spot",
                      "pick the object up and set it down at the goal"],
    "drawer-open-v3": ["open the drawer", "pull the drawer open",
                       "slide the drawer out", "pull the handle to open the drawer"],
    "drawer-close-v3": ["close the drawer", "push the drawer shut",
                        "slide the drawer closed", "push the drawer back in"],
    "button-press-v3": ["press the button", "push the button in",
                        "press the button on the front of the box", "hit the button"],
    "button-press-topdown-v3": ["press the button from above", "push the button down",
                                "press down on the top button", "push the button from the top"],
    "door-open-v3": ["open the door", "swing the door open", "pull the door open by its handle",
                     "open the cabinet door"],
    "door-close-v3": ["close the door", "swing the door shut", "push the door closed",
                      "shut the cabinet door"],
    "window-open-v3": ["open the window", "slide the window open",
                       "push the window to open it", "slide the window pane aside"],
    "window-close-v3": ["close the window", "slide the window shut",
                        "push the window closed", "slide the window pane back"],
    "faucet-open-v3": ["turn the faucet on", "open the faucet", "rotate the faucet handle open",
                       "turn on the tap"],
    "faucet-close-v3": ["turn the faucet off", "close the faucet",
                        "rotate the faucet handle closed", "turn off the tap"],
    "plate-slide-v3": ["slide the plate into the goal", "push the plate into the net",
                       "slide the plate to the target", "shove the plate into the goal"],
    "coffee-button-v3": ["press the coffee machine button", "push the button on the coffee machine",
                         "start the coffee machine", "hit the coffee maker's button"],
    "handle-press-v3": ["press the handle down", "push the handle down",
                        "press down on the handle", "push the lever down"],
    "lever-pull-v3": ["pull the lever up", "lift the lever", "raise the lever",
                      "pull the lever upwards"],
    "dial-turn-v3": ["turn the dial", "rotate the dial", "spin the dial around",
                     "twist the dial"],
    "sweep-into-v3": ["sweep the puck into the hole", "push the puck into the hole",
                      "sweep the cube into the opening", "slide the puck into the hole"],
    "basketball-v3": ["dunk the ball into the basket", "put the ball in the hoop",
                      "pick up the ball and drop it in the basket", "score a basket"],
}


def known(task: str) -> bool:
    return task in INSTRUCTIONS


def instructions(task: str) -> list[str]:
    """All paraphrases for a task (templated from the name when none are written)."""
    if task in INSTRUCTIONS:
        return list(INSTRUCTIONS[task])
    words = task.removesuffix("-v3").replace("-", " ")
    return [f"{words}", f"please {words}", f"complete the task: {words}",
            f"the robot should {words}"]


def instruction(task: str, rng: random.Random | None = None, index: int | None = None) -> str:
    """One paraphrase: a given index, a random one, or the first."""
    options = instructions(task)
    if index is not None:
        return options[index % len(options)]
    return rng.choice(options) if rng is not None else options[0]
