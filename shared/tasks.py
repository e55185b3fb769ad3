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
    # the rest of Meta-World's ML45 (its train and test tasks), from the benchmark's own
    # task descriptions
    "assembly-v3": ["put the ring onto the peg", "pick up the nut and place it on the peg",
                    "slide the ring down over the peg", "assemble the nut onto the peg"],
    "button-press-topdown-wall-v3": ["press the button from above behind the wall",
                                     "push the button down past the wall",
                                     "reach over the wall and press the top button",
                                     "press down on the button beyond the wall"],
    "button-press-wall-v3": ["press the button behind the wall",
                             "reach around the wall and push the button",
                             "push the button past the wall",
                             "get around the wall and hit the button"],
    "coffee-pull-v3": ["pull the mug from the coffee machine", "take the cup out of the machine",
                       "pull the coffee mug towards you", "draw the mug out to the target"],
    "coffee-push-v3": ["push the mug under the coffee machine",
                       "slide the cup into the coffee machine",
                       "push the coffee mug to the machine", "move the mug under the spout"],
    "disassemble-v3": ["take the ring off the peg", "pick the nut off the peg",
                       "lift the ring up and off the peg", "disassemble the nut from the peg"],
    "hammer-v3": ["hammer the nail into the wall", "pick up the hammer and hit the nail",
                  "drive the nail in with the hammer", "use the hammer on the nail"],
    "handle-press-side-v3": ["press the handle down from the side",
                             "push the side handle down", "press down on the handle sideways",
                             "push the lever down from the side"],
    "handle-pull-side-v3": ["pull the handle up from the side", "lift the side handle",
                            "pull the handle upwards sideways", "raise the handle from the side"],
    "handle-pull-v3": ["pull the handle up", "lift the handle", "pull up on the handle",
                       "raise the handle"],
    "pick-place-wall-v3": ["pick up the puck and place it at the goal behind the wall",
                           "lift the puck over the wall and set it on the target",
                           "grasp the puck and put it beyond the wall",
                           "carry the puck past the wall to the goal"],
    "pick-out-of-hole-v3": ["pick the puck out of the hole", "lift the puck out of the hole",
                            "take the object out of the hole and raise it",
                            "grab the puck from the hole"],
    "push-back-v3": ["pull the puck back to the goal", "slide the puck back towards the robot",
                     "bring the puck back to the target",
                     "draw the puck back to the marked spot"],
    "plate-slide-side-v3": ["slide the plate sideways into the goal",
                            "push the plate into the net from the side",
                            "slide the plate sideways to the target",
                            "shove the plate sideways into the goal"],
    "plate-slide-back-v3": ["slide the plate back out of the goal",
                            "pull the plate out of the net", "draw the plate back to the target",
                            "get the plate out of the goal"],
    "plate-slide-back-side-v3": ["slide the plate back out of the goal sideways",
                                 "pull the plate out of the net from the side",
                                 "draw the plate back sideways", "get the plate out sideways"],
    "peg-insert-side-v3": ["insert the peg into the hole from the side",
                           "push the peg sideways into the hole",
                           "put the peg into the side hole", "slide the peg into the hole"],
    "peg-unplug-side-v3": ["unplug the peg from the side", "pull the peg out sideways",
                           "take the peg out of the side hole", "remove the peg from the hole"],
    "soccer-v3": ["kick the ball into the goal", "push the soccer ball into the net",
                  "score a goal with the ball", "get the ball into the goal"],
    "stick-push-v3": ["grab the stick and push the box with it",
                      "use the stick to push the box to the goal",
                      "pick up the stick and shove the box", "push the box using the stick"],
    "stick-pull-v3": ["grab the stick and pull the box with it",
                      "use the stick to pull the box to the goal",
                      "pick up the stick and drag the box", "pull the box using the stick"],
    "push-wall-v3": ["push the puck to the goal around the wall",
                     "slide the puck past the wall to the target",
                     "push the puck around the wall", "get the puck past the wall to the goal"],
    "reach-wall-v3": ["reach the target behind the wall",
                      "move the gripper over the wall to the goal", "reach past the wall",
                      "go to the target beyond the wall"],
    "shelf-place-v3": ["put the puck on the shelf", "pick up the puck and place it on the shelf",
                       "set the object on the shelf", "lift the puck onto the shelf"],
    "sweep-v3": ["sweep the puck off the table", "push the puck off the edge",
                 "sweep the cube off the table", "slide the puck off the side"],
    "bin-picking-v3": ["move the puck from one bin to the other",
                       "pick the puck out of the bin and drop it in the other bin",
                       "transfer the object between the bins", "put the puck in the other bin"],
    "box-close-v3": ["close the box with its lid", "put the lid on the box",
                     "pick up the lid and cover the box", "place the cover on the box"],
    "hand-insert-v3": ["put the gripper into the hole", "insert the hand into the hole",
                       "move the gripper down into the hole", "reach into the hole"],
    "door-lock-v3": ["lock the door", "turn the lock on the door", "rotate the door lock shut",
                     "lock the door by turning the knob"],
    "door-unlock-v3": ["unlock the door", "turn the lock to unlock the door",
                       "rotate the door lock open", "unlock the door by turning the knob"],
}

ML45_TRAIN = (
    "assembly-v3", "basketball-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
    "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-open-v3",
    "drawer-close-v3", "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3",
    "handle-press-side-v3", "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3",
    "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3", "push-back-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3",
    "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3",
    "stick-push-v3", "stick-pull-v3", "push-wall-v3", "push-v3", "reach-wall-v3", "reach-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3")
"""Meta-World ML45's 45 training tasks (``metaworld.env_dict.ML45_V3["train"]``)."""
ML45_TEST = ("bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3",
             "door-unlock-v3")
"""ML45's 5 test tasks: nothing is trained or tuned on them."""


GENERIC_SENTENCES = ("do the task shown", "do what the demonstration shows",
                     "complete the task in the example", "do the same as the reference")
"""Sentences that name no task: with one of them the reference demonstration is the only
statement of what counts as progress (the critic's one-shot, in-context case)."""


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
