"""Preference (reward-model) objectives: the Bradley-Terry pairwise loss and pairwise accuracy.

A reward model r_phi scores a chosen and a rejected response to the same prompt; Bradley & Terry (1952) model
P(chosen > rejected) = sigmoid(r_chosen - r_rejected), and the reward model is fit by maximum likelihood on
human (or rule-labelled) comparisons (Ouyang et al. 2022, "InstructGPT", eq. 1). Shapes: one reward per pair, (B,).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       mode: str = "mean") -> Tensor:
    """Bradley-Terry loss -log sigmoid(r_c - r_r - m) (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1); (B,) each.

    `margin` m (scalar or (B,), default 0) asks the chosen reward to beat the rejected one by at least m before the
    loss flattens (Llama 2's margin loss, TRL RewardTrainer's `margin` column). `mode`: "mean" or "sum" over the
    B pairs (scalar), or "none" (per pair, (B,)). d loss / d r_c = -sigmoid(-(r_c - r_r - m)) = -d loss / d r_r.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"bradley_terry_loss: chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
                         f"{tuple(rejected_rewards.shape)} must have the same shape (one reward per pair)")
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    # logsigmoid, not log(sigmoid(.)): sigmoid underflows to 0 for diff < ~-100 (float32) and the log gives -inf.
    loss = -F.logsigmoid(diff)
    if mode == "mean":
        return loss.mean()
    if mode == "sum":
        return loss.sum()
    if mode == "none":
        return loss
    raise ValueError(f"bradley_terry_loss: mode must be one of {REDUCTIONS}, got {mode!r}")


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs the reward model orders right, r_c > r_r, a tie counting 1/2 (the chance level a model
    that cannot tell the two apart gets); (B,) each -> scalar."""
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"pairwise_accuracy: chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
                         f"{tuple(rejected_rewards.shape)} must have the same shape (one reward per pair)")
    right = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return right.mean()
