"""The critic service's messages (typed msgpack), shared by the learner's client in the cloud
and the robots' progress client on the edge (return-and-explore / stall triggers)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vlac.shared.wire import Array


class RewardRequest(msgspec.Struct, forbid_unknown_fields=True, tag="reward_request"):
    request_id: int
    task: Annotated[str, msgspec.Meta(max_length=1000)]
    frames: Array
    stride: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    reference: Array | None = None
    schema_version: int = 1
    from_first: bool = False
    """Score (o_0, o_t+1) instead of (o_t, o_t+stride): progress made since the start."""


class RewardReply(msgspec.Struct, forbid_unknown_fields=True, tag="reward_reply"):
    request_id: int
    delta: Array
    done_prob: Array


class RewardError(msgspec.Struct, forbid_unknown_fields=True, tag="reward_error"):
    request_id: int
    message: str


ENCODER = msgspec.msgpack.Encoder()
REQUEST_DECODER = msgspec.msgpack.Decoder(RewardRequest)
REPLY_DECODER = msgspec.msgpack.Decoder(RewardReply | RewardError)
