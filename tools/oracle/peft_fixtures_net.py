"""The small model of the @lora/core fixtures (written again in packages/core/src/peft-parity.test.ts)."""
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, h):
        return h + self.out(torch.relu(self.mlp(h))) + 0.5 * self.q_proj(h) + self.v_proj(h)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class EmbNet(nn.Module):
    """An embedding followed by a linear layer, for LoRA on Embedding targets."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.lin = nn.Linear(8, 4)

    def forward(self, ids):
        return self.lin(self.embed(ids))
