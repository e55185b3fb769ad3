"""The actor: action tokens from observations.

``model``: the small VLAC under its actor prompt as a policy; ``pretrain``: behaviour cloning
on demonstrations (`vlac actor pretrain`); ``export``: one ONNX file, fp32 and INT8, for the
robots (`vlac actor export`).
"""
