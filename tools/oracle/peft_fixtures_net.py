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


class ConvNet(nn.Module):
    """A Conv2d then a Conv1d, for LoRA on convolutions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, (3, 3), stride=2, padding=1)
        self.conv1d = nn.Conv1d(6, 5, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.conv1d(h.flatten(2))
