"""The cloud side: one subpackage per concept.

- ``store``: the episode store (Parquet on disk, exactly-once chunks, staging and its rules,
  ``vlac store``, LeRobotDataset interop). No torch.
- ``ingest``: the rollout stream's cloud end (ZeroMQ ROUTER + CURVE) into the store. No torch.
- ``fleet``: fleet state (versions, assignments, pins, canaries, heartbeats) and the publisher
  that signs, uploads and announces weights. No torch.
- ``models``: the networks: frozen encoders, the small VLAC, the transformers adapters, and
  the DeepSpeed engine wrapper that trains them.
- ``critic``: the critic model, its training pairs, training, evaluation and reward service.
- ``actor``: the actor policy, imitation pretraining and the ONNX export for robots.
- ``learner``: the RL learner process and its algorithms.
"""
