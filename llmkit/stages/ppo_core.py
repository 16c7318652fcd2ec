"""The arithmetic of PPO for language models, on plain tensors (no models, no I/O), so that
every formula can be tested against numbers worked out by hand.

Shapes: ``(batch, response_length)`` for per-token quantities; ``mask`` is 1 on the tokens of
a response (up to and including its stop token) and 0 on the padding after it.

Notation used below: ``logp`` the policy's log-probability of a sampled token (at the
sampling temperature), ``ref`` the reference model's, ``V`` the value model's estimate,
``A`` the advantage, ``R`` the return.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of the entries where mask is 1 (over all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); entries outside the mask
    come back as 0.  ``shift_mean=False`` rescales only, keeping the mean (used for rewards,
    whose sign carries meaning)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_per_token(logp: torch.Tensor, ref: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = logp - ref                      unbiased, can be negative on a single token
    k3 = exp(ref - logp) - 1 - (ref - logp)   unbiased and never negative (Schulman's k3)
    """
    log_ratio = logp - ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def token_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: ``-kl_coef * kl`` on every response token, plus the sequence score on
    its last token.  Returns (rewards, non_score_rewards), both 0 on padding."""
    m = mask.to(kl.dtype)
    non_score = -kl_coef * kl * m
    last = (m.sum(1).long() - 1).clamp(min=0)
    rewards = non_score.clone()
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, last] += scores.to(kl.dtype) * (m.sum(1) > 0).to(kl.dtype)
    return rewards, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the tokens:

        delta_t = r_t + gamma * V_{t+1} - V_t          (V_{t+1} = 0 after the last token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t

    The episode ends at the last masked token: values and advantages on padding are treated
    as 0 whatever the tensors hold there.  Returns (advantages, returns), 0 on padding."""
    m = mask.to(values.dtype)
    r, v = rewards * m, values * m
    n = r.shape[1]
    adv = torch.zeros_like(r)
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(n)):
        next_v = v[:, t + 1] if t + 1 < n else torch.zeros_like(next_adv)
        next_m = m[:, t + 1] if t + 1 < n else torch.zeros_like(next_adv)
        delta = r[:, t] + gamma * next_v * next_m - v[:, t]
        next_adv = delta + gamma * lam * next_m * next_adv
        adv[:, t] = next_adv
    adv = adv * m
    return adv, (adv + v) * m


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, cliprange: float):
    """Clipped surrogate objective, as a loss to minimise (token mean):

        ratio = exp(logp - old_logp)
        loss  = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))

    Returns (loss, clipfrac = share of tokens where the clipped term won, approxkl =
    0.5 * mean((logp - old_logp)^2))."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float):
    """Clipped value loss (token mean):

        v_clip = old_v + clip(v - old_v, -c, c)
        loss   = 0.5 * mean(max((v - R)^2, (v_clip - R)^2))

    Returns (loss, clipfrac = share of tokens where the clipped term won)."""
    v_clip = old_v + torch.clamp(v - old_v, -cliprange_value, cliprange_value)
    l1, l2 = (v - returns) ** 2, (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    return loss, masked_mean((l2 > l1).to(v.dtype), mask)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``tokens`` under ``softmax(logits / temperature)`` and the entropy
    of that distribution, per position.  ``logits``: (batch, n, vocab); ``tokens``: (batch, n)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = torch.gather(logp_all, -1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def truncate_after_stop(responses: torch.Tensor, stop_ids: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first stop token (kept).  Returns (responses with pad_id
    after the stop, mask of kept tokens, whether a stop token was found)."""
    if not stop_ids:
        return responses, torch.ones_like(responses), torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    n = responses.shape[1]
    pos = torch.arange(n, device=responses.device).expand_as(responses)
    first = torch.where(is_stop, pos, torch.full_like(pos, n)).min(1).values
    mask = (pos <= first.unsqueeze(1)).long()
    return responses.masked_fill(mask == 0, pad_id), mask, first < n


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the attended tokens only (left padding gets position 0)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class AdaptiveKLController:
    """The KL coefficient controller of Ziegler et al. (2019): after each batch of ``n``
    episodes with observed KL ``kl``,

        error   = clip(kl / target - 1, -0.2, 0.2)
        kl_coef = kl_coef * (1 + error * n / horizon)

    so the coefficient grows when the policy drifts further than ``target`` nats from the
    reference and shrinks when it stays closer, by at most 20% per ``horizon`` episodes."""

    def __init__(self, init: float, target: float, horizon: float):
        self.value, self.target, self.horizon = float(init), float(target), float(horizon)

    def update(self, kl: float, n: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value
