"""The critic: task sentence + two observations -> progress delta and done probability.

``model``: the critic interface and the small VLAC critic; ``data``: training pairs with the
paper's negatives; ``train`` / ``evaluate``: `vlac critic train | eval`; ``service``: `vlac
critic serve`, whole-episode rewards over ZeroMQ.
"""
