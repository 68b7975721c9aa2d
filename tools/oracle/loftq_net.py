"""The small model of the @lora/loftq fixtures (written again in packages/loftq/src/loftq-net.test-util.ts)."""
import torch
import torch.nn as nn


class LoftqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16)
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        return self.head(x + self.down(torch.relu(self.up(x))))
