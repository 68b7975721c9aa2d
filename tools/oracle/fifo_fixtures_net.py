"""The GPT-2-like model of the fan_in_fan_out fixtures (written again in packages/core/src/layers/fan-in-fan-out.test.ts):
transformers' Conv1D layers (weight [in, out]), LayerNorms, one causal attention head, and an nn.Linear head."""
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

D = 8


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = Conv1D(3 * D, D)
        self.c_proj = Conv1D(D, D)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(D, dim=-1)
        t = x.shape[-2]
        scores = q @ k.transpose(-1, -2) / D**0.5
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        return self.c_proj(torch.softmax(scores, dim=-1) @ v)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(4 * D, D)
        self.c_proj = Conv1D(D, 4 * D)

    def forward(self, x):
        return self.c_proj(nn.functional.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = Attention()
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = Mlp()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GptNet(nn.Module):
    """Two GPT-2 blocks, a final LayerNorm and an nn.Linear head."""

    def __init__(self):
        super().__init__()
        self.h = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, 4)

    def forward(self, x):
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x))
