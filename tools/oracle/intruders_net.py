"""The small models of the @lora/intruders fixtures (written again in packages/intruders/src/intruder-nets.test-util.ts)."""
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

H = 24


class IntruderNet(nn.Module):
    """An Embedding (30×24), square / tall / wide Linears, and a 112×128 Linear whose leading singular
    values are separated (it takes the Krylov path in @lora/intruders); `big` is not on the forward path."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, H)
        self.q_proj = nn.Linear(H, H, bias=False)
        self.up_proj = nn.Linear(H, 40, bias=False)
        self.down_proj = nn.Linear(40, H, bias=False)
        self.big = nn.Linear(128, 112, bias=False)
        self.head = nn.Linear(H, 5)

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.q_proj(h)
        h = h + self.down_proj(torch.relu(self.up_proj(h)))
        return self.head(h)


class IntruderGpt(nn.Module):
    """transformers' Conv1D layers (weight [in, out], fan_in_fan_out): one 24→36, one square 24→24."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(36, H)
        self.c_proj = Conv1D(H, 36)
        self.c_sq = Conv1D(H, H)

    def forward(self, x):
        return self.c_sq(self.c_proj(torch.relu(self.c_fc(x))))
