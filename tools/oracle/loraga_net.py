"""The small models of the @lora/loraga fixtures (written again in packages/loraga/src/loraga-net.test-util.ts)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D


class LoraGaNet(nn.Module):
    """ids [B, T] -> Embedding(20, 12) -> Linear(12, 16) -> tanh -> Conv1D(24 out, 16 in) -> tanh
    -> Conv1d(24, 24, 1) over T -> Linear(24, 20): every layer kind LoRA-GA meets (Linear, transformers'
    Conv1D with its [in, out] weight, and the Embedding and convolution it leaves to the default init)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.q_proj = nn.Linear(12, 16)
        self.c_fc = Conv1D(24, 16)
        self.conv = nn.Conv1d(24, 24, 1)
        self.head = nn.Linear(24, 20)

    def forward(self, ids):
        h = torch.tanh(self.q_proj(self.embed(ids)))
        h = torch.tanh(self.c_fc(h))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.head(h)


class TwiceNet(nn.Module):
    """One Linear applied twice per forward: PEFT counts two backward passes of it per batch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def lm_loss(logits, labels):
    """Mean cross-entropy over every position (what the TS tests' crossEntropy computes)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
