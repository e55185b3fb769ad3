"""The networks and what trains them.

``encoders``: frozen pretrained image (EfficientNet-Lite0, fp32 or INT8) and text (MiniLM)
encoders with a feature cache; ``vlac``: the small VLAC transformer; ``hf_critic`` /
``hf_actor``: the same interfaces on a transformers vision-language checkpoint; ``engine``:
the DeepSpeed engine wrapper (CPU gloo here, CUDA/NCCL where there is one).
"""
