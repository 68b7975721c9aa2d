"""The small models of the @lora/core fixtures (written again in packages/core/src/fixture-nets.test-util.ts)."""
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


class ConvDoraNet(nn.Module):
    """ids [B, 6, 6] -> Embedding -> strided, padded Conv2d -> grouped Conv2d -> Conv1d -> [B, 5, 9]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.conv = nn.Conv2d(6, 8, (3, 3), stride=2, padding=1)
        self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv1d = nn.Conv1d(8, 5, 3, padding=1)

    def forward(self, ids):
        h = self.embed(ids).permute(0, 3, 1, 2)
        h = torch.relu(self.conv(h))
        h = torch.relu(self.gconv(h))
        return self.conv1d(h.flatten(2))
