"""The small VLAC: a transformer over frozen image and text features that emits tokens.

Critic prompt (the paper's pairwise progress + done):

    [CRITIC] [text] [ref_1 .. ref_K]? [A_0 .. A_4] [B_0 .. B_4] [Q] [p]
                                                                  |    |
                                                   progress token <-   -> done token

Image tokens (a global token and a 2x2 grid pooled from EfficientNet's 4x4 feature map) carry
a learned position and a segment embedding (A = earlier observation, B = later one). ``ref``
tokens are optional in-context frames from one demonstration of the task (one pooled token
per frame, plus an embedding of where in the demonstration it was taken): the one-shot
reference. Decoding is autoregressive over two output tokens, with a
causal mask on the output segment: the hidden state at ``Q`` predicts the progress token; the
embedding of that token ``p`` predicts the done token.

Progress tokens: the delta in [-1, 1] is quantised to ``PROGRESS_BINS`` = 201 tokens (0.01
apart; token k means -1 + 2k/200). Training targets are soft (a Gaussian over neighbouring
bins, so near misses cost little); the decoded delta is the expectation of the token
distribution (smooth, used as the reward) and the emitted token is its argmax. Done tokens
are {not done, done}; ``done_prob`` is the probability of "done".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlac.cloud.models.encoders import GRID, IMAGE_DIM, TEXT_DIM

PROGRESS_BINS = 201


def delta_to_token(delta: torch.Tensor) -> torch.Tensor:
    return torch.round((delta.clamp(-1, 1) + 1) / 2 * (PROGRESS_BINS - 1)).long()


def token_to_delta(token: torch.Tensor) -> torch.Tensor:
    return token.float() / (PROGRESS_BINS - 1) * 2 - 1


@dataclass
class VLACConfig:
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    ff: int = 384
    dropout: float = 0.1
    proprio_dim: int = 4
    action_dim: int = 4
    action_bins: int = 256
    image_grid: int = 2
    """Image tokens per side inside the model (the cached 4x4 grid is pooled to this), plus
    one global token per image: 5 tokens per image by default. Fewer tokens is what makes
    training on a 2-core CPU practical."""
    feature_dropout: float = 0.0
    """Dropout on the frozen image features the critic reads (observations and reference),
    in training only: an augmentation of features that cannot themselves be fine-tuned."""


class Block(nn.Module):
    """Pre-norm transformer block. Written out (rather than nn.TransformerEncoderLayer) so
    that torch.export / ONNX export and INT8 quantization see plain MatMul/Softmax ops."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = att.masked_fill(blocked, float("-inf")).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))


@dataclass
class CriticOutput:
    delta: torch.Tensor
    """(B,) expected progress delta in [-1, 1]."""
    done_prob: torch.Tensor
    """(B,) probability that the task is done at the later observation."""
    progress_token: torch.Tensor
    """(B,) argmax progress token."""
    progress_logits: torch.Tensor
    done_logits: torch.Tensor


class SmallVLAC(nn.Module):
    def __init__(self, cfg: VLACConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or VLACConfig()
        self.cfg = cfg
        d = cfg.d_model
        self.img_in = nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, d))
        self.text_in = nn.Linear(TEXT_DIM, d)
        self.ref_in = nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, d))
        self.ref_pos = nn.Linear(1, d)
        self.n_img = cfg.image_grid ** 2 + 1
        self.grid_pos = nn.Parameter(torch.randn(self.n_img, d) * 0.02)
        self.feature_drop = nn.Dropout(cfg.feature_dropout)
        # segments: 0 prompt, 1 text, 2 obs A (the actor's only observation), 3 obs B,
        # 4 reference, 5 outputs, 6 proprioception
        self.segment = nn.Embedding(7, d)
        self.prompt = nn.Embedding(2, d)  # 0 critic, 1 actor
        # actor: proprio in, one token per action dimension out, and a value head
        self.proprio_in = nn.Linear(cfg.proprio_dim, d)
        self.action_dim_emb = nn.Embedding(cfg.action_dim, d)
        self.action_emb = nn.Embedding(cfg.action_dim * cfg.action_bins, d)
        self.action_head = nn.Linear(d, cfg.action_bins)
        self.value_head = nn.Linear(d, 1)
        self.query = nn.Parameter(torch.randn(d) * 0.02)
        self.progress_emb = nn.Embedding(PROGRESS_BINS, d)
        self.trunk = nn.ModuleList(Block(d, cfg.heads, cfg.ff, cfg.dropout)
                                   for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.progress_head = nn.Linear(d, PROGRESS_BINS)
        self.done_head = nn.Linear(d, 2)
        bins = token_to_delta(torch.arange(PROGRESS_BINS))
        self.register_buffer("bin_values", bins, persistent=False)

    # ------------------------------------------------------------------ prefix
    def _prefix(self, text: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor,
                ref: torch.Tensor | None, ref_pos: torch.Tensor | None,
                ref_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b = text.shape[0]
        seg = self.segment.weight
        parts = [self.prompt.weight[0].expand(b, 1, -1) + seg[0],
                 self.text_in(text).unsqueeze(1) + seg[1],
                 self.img_in(self.feature_drop(self.image_tokens(feat_a))) + self.grid_pos
                 + seg[2],
                 self.img_in(self.feature_drop(self.image_tokens(feat_b))) + self.grid_pos
                 + seg[3]]
        dev = text.device
        pad = [torch.zeros(b, 2, dtype=torch.bool, device=dev),
               torch.zeros(b, 2 * self.n_img, dtype=torch.bool, device=dev)]
        if ref is not None:  # in-context frames go between the sentence and the images
            r = (self.ref_in(self.feature_drop(ref.float()))
                 + self.ref_pos(ref_pos.unsqueeze(-1).float()) + seg[4])
            parts.insert(2, r)
            pad.insert(1, ~ref_mask.bool() if ref_mask is not None
                       else torch.zeros(r.shape[:2], dtype=torch.bool, device=dev))
        return torch.cat(parts, 1), torch.cat(pad, 1)

    def image_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 16, 1280) cached grid -> (B, 1 + g*g, 1280): a global token and a g x g grid."""
        x = feats.float()
        b = x.shape[0]
        grid = x.transpose(1, 2).reshape(b, IMAGE_DIM, GRID, GRID)
        pooled = F.adaptive_avg_pool2d(grid, self.cfg.image_grid).flatten(2).transpose(1, 2)
        return torch.cat([x.mean(1, keepdim=True), pooled], 1)

    def _run(self, prefix: torch.Tensor, pad: torch.Tensor,
             progress_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = prefix.shape
        seg = self.segment.weight[5]
        out = torch.stack([self.query.expand(b, -1) + seg,
                           self.progress_emb(progress_token) + seg], 1)
        x = torch.cat([prefix, out], 1)
        total = n + 2
        mask = torch.zeros(total, total, dtype=torch.bool, device=x.device)
        mask[:n, n:] = True  # the prompt never sees the outputs
        mask[n, n + 1] = True  # the query does not see the progress token it predicts
        pad = torch.cat([pad, torch.zeros(b, 2, dtype=torch.bool, device=x.device)], 1)
        h = self.norm(self.encode(x, mask, pad))
        return self.progress_head(h[:, n]), self.done_head(h[:, n + 1])

    def encode(self, x: torch.Tensor, mask: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """The trunk. ``mask`` (L, L) and ``pad`` (B, L) are True where attention is blocked."""
        blocked = mask[None, None] | pad[:, None, None, :]
        for block in self.trunk:
            x = block(x, blocked)
        return x

    # ------------------------------------------------------------------ API
    def forward(self, text: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor,
                progress_token: torch.Tensor, ref: torch.Tensor | None = None,
                ref_pos: torch.Tensor | None = None,
                ref_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits: (progress (B, 201), done (B, 2))."""
        prefix, pad = self._prefix(text, feat_a, feat_b, ref, ref_pos, ref_mask)
        return self._run(prefix, pad, progress_token)

    @torch.no_grad()
    def critique(self, text: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor,
                 ref: torch.Tensor | None = None, ref_pos: torch.Tensor | None = None,
                 ref_mask: torch.Tensor | None = None) -> CriticOutput:
        """Decode: the progress token first, then the done token given it."""
        prefix, pad = self._prefix(text, feat_a, feat_b, ref, ref_pos, ref_mask)
        placeholder = torch.zeros(text.shape[0], dtype=torch.long, device=text.device)
        p_logits, _ = self._run(prefix, pad, placeholder)
        token = p_logits.argmax(-1)
        _, d_logits = self._run(prefix, pad, token)
        probs = p_logits.softmax(-1)
        return CriticOutput(delta=probs @ self.bin_values, done_prob=d_logits.softmax(-1)[:, 1],
                            progress_token=token, progress_logits=p_logits,
                            done_logits=d_logits)


    # ------------------------------------------------------------------ actor
    def _actor_prefix(self, text: torch.Tensor, feat: torch.Tensor,
                      proprio: torch.Tensor) -> torch.Tensor:
        b = text.shape[0]
        seg = self.segment.weight
        return torch.cat([self.prompt.weight[1].expand(b, 1, -1) + seg[0],
                          self.text_in(text).unsqueeze(1) + seg[1],
                          self.img_in(self.image_tokens(feat)) + self.grid_pos + seg[2],
                          self.proprio_in(proprio.float()).unsqueeze(1) + seg[6]], 1)

    def actor_forward(self, text: torch.Tensor, feat: torch.Tensor, proprio: torch.Tensor,
                      tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced action logits (B, A, bins) and value (B,).

        Actor prompt: [ACTOR] [text] [image tokens] [proprio] [Q+dim0] [a0+dim1] .. [a_A-2]:
        the output at position k predicts the token of action dimension k from the prefix and
        the tokens of dimensions < k (causal mask); the value reads the first output position,
        which sees only the prefix.
        """
        cfg = self.cfg
        prefix = self._actor_prefix(text, feat, proprio)
        b, n, _ = prefix.shape
        a = cfg.action_dim
        offsets = torch.arange(a - 1, device=tokens.device) * cfg.action_bins
        prev = self.action_emb(tokens[:, :-1].long() + offsets)
        outs = torch.cat([self.query.expand(b, 1, -1), prev], 1)
        outs = outs + self.action_dim_emb.weight + self.segment.weight[5]
        x = torch.cat([prefix, outs], 1)
        total = n + a
        idx = torch.arange(total, device=x.device)
        mask = (idx[None, :] >= n) & (idx[None, :] > idx[:, None])  # nothing sees later outputs
        pad = torch.zeros(b, total, dtype=torch.bool, device=x.device)
        h = self.norm(self.encode(x, mask, pad))
        return self.action_head(h[:, n:]), self.value_head(h[:, n]).squeeze(-1)

    def act(self, text: torch.Tensor, feat: torch.Tensor, proprio: torch.Tensor,
            gumbel: torch.Tensor, temperature: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoregressive decode, one token per action dimension.

        ``gumbel`` (B, A, bins) is Gumbel noise (zeros: greedy); tokens are
        argmax(logits / temperature + gumbel), i.e. samples from softmax(logits / T). Returns
        tokens (B, A) int64, their log-probabilities under softmax(logits / T) (B, A), and the
        value (B,). The loop is unrolled, so it exports to ONNX as a fixed graph.
        """
        a = self.cfg.action_dim
        tokens = torch.zeros(text.shape[0], a, dtype=torch.long, device=text.device)
        logps = []
        value = None
        for k in range(a):
            logits, value = self.actor_forward(text, feat, proprio, tokens)
            logp = torch.log_softmax(logits[:, k] / temperature[:, None], -1)
            tok = torch.argmax(logp + gumbel[:, k], -1)
            tokens = tokens.clone()
            tokens[:, k] = tok
            logps.append(torch.gather(logp, 1, tok[:, None])[:, 0])
        return tokens, torch.stack(logps, 1), value

    def action_logprobs(self, text: torch.Tensor, feat: torch.Tensor, proprio: torch.Tensor,
                        tokens: torch.Tensor, temperature: float = 1.0, sigma: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probability of given tokens (B, A) under softmax(logits / temperature) (summed
        over dimensions; with ``sigma``, of a bump around each token: ``token_logprobs``), the
        per-token entropy (B,) and the value (B,): what PPO recomputes with the learner's
        weights (at the temperature the robots sampled with)."""
        logits, value = self.actor_forward(text, feat, proprio, tokens)
        logp_all = torch.log_softmax(logits / temperature, -1)
        logp = token_logprobs(logp_all, tokens, sigma).sum(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
        return logp, entropy, value


def token_logprobs(logp_all: torch.Tensor, tokens: torch.Tensor, sigma: float = 0.0
                   ) -> torch.Tensor:
    """(B, A, bins) log-probabilities and (B, A) tokens -> (B, A): the log-probability of each
    token, or with ``sigma`` > 0 the mean log-probability of the bins around it weighted by
    a Gaussian of that std in bins (BC's soft target, ``soft_token_targets``). Bins are
    ordinal, so crediting the neighbourhood raises a bump around a rewarded action instead of
    a spike on its single bin: the argmax then follows where rewarded samples cluster
    instead of jumping to whichever bin was credited last."""
    idx = tokens.long().to(logp_all.device)
    if sigma <= 0:
        return torch.gather(logp_all, -1, idx[..., None])[..., 0]
    target = soft_token_targets(idx, logp_all.shape[-1], sigma).to(logp_all.dtype)
    return (target * logp_all).sum(-1)


def soft_token_targets(tokens: torch.Tensor, bins: int, sigma: float = 1.0) -> torch.Tensor:
    """(..,) integer tokens -> (.., bins) Gaussian soft labels (ordinal bins)."""
    k = torch.arange(bins, device=tokens.device).float()
    w = torch.exp(-0.5 * ((k - tokens[..., None].float()) / sigma) ** 2)
    return w / w.sum(-1, keepdim=True)


def bc_loss(model, batch: dict[str, torch.Tensor], sigma: float = 1.0
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour cloning on action tokens (soft targets over neighbouring bins)."""
    logits, _ = model.actor_forward(batch["text"], batch["feat"], batch["proprio"],
                                    batch["tokens"])
    bins = logits.shape[-1]
    target = soft_token_targets(batch["tokens"], bins, sigma)
    loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    with torch.no_grad():
        acc = (logits.argmax(-1) == batch["tokens"]).float().mean()
        near = ((logits.argmax(-1) - batch["tokens"]).abs() <= 2).float().mean()
    return loss, {"loss": loss.item(), "token_acc": acc.item(), "token_within_2": near.item()}


def soft_progress_targets(delta: torch.Tensor, sigma_bins: float = 1.5) -> torch.Tensor:
    """(B,) deltas -> (B, 201) Gaussian soft labels around the target bin."""
    centre = (delta.clamp(-1, 1) + 1) / 2 * (PROGRESS_BINS - 1)
    k = torch.arange(PROGRESS_BINS, device=delta.device).float()
    w = torch.exp(-0.5 * ((k[None] - centre[:, None]) / sigma_bins) ** 2)
    return w / w.sum(-1, keepdim=True)


def critic_loss(model, batch: dict[str, torch.Tensor], bin_values: torch.Tensor | None = None,
                done_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the progress token (soft targets, masked where progress is unknown)
    and on the done token (teacher forcing on the target progress token). ``model`` is the
    SmallVLAC or a DeepSpeed engine wrapping it (whose forward hooks must run)."""
    if bin_values is None:
        bin_values = model.bin_values
    target_tok = delta_to_token(batch["delta"])
    p_logits, d_logits = model(batch["text"], batch["feat_a"], batch["feat_b"], target_tok,
                               batch.get("ref"), batch.get("ref_pos"), batch.get("ref_mask"))
    return critic_loss_of_logits(p_logits, d_logits, batch, bin_values, done_weight)


def critic_loss_of_logits(p_logits: torch.Tensor, d_logits: torch.Tensor,
                          batch: dict[str, torch.Tensor], bin_values: torch.Tensor,
                          done_weight: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """``critic_loss`` from any critic's progress logits (B, 201) and done logits (B, 2),
    the done logits teacher-forced on the target progress token (the small critic's and a
    transformers critic's alike)."""
    logp = F.log_softmax(p_logits, -1)
    p_loss_each = -(soft_progress_targets(batch["delta"]) * logp).sum(-1)
    m = batch["progress_mask"].float()
    p_loss = (p_loss_each * m).sum() / m.sum().clamp(min=1)
    d_loss = F.cross_entropy(d_logits, batch["done"].long())
    loss = p_loss + done_weight * d_loss
    with torch.no_grad():
        pred = logp.exp() @ bin_values
        mae = ((pred - batch["delta"]).abs() * m).sum() / m.sum().clamp(min=1)
        done_acc = (d_logits.argmax(-1) == batch["done"].long()).float().mean()
    return loss, {"loss": loss.item(), "progress_loss": p_loss.item(),
                  "done_loss": d_loss.item(), "delta_mae": mae.item(),
                  "done_acc": done_acc.item()}


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
