"""The small model of the @lora/arrow fixtures (written again in packages/arrow/src/arrow-net.test-util.ts).

ids [B, S] -> Embedding(20, 12) -> lin0 Linear(12, 16) -> relu -> proj Conv1D(16 -> 10, weight [16, 10],
GPT-2's layout: PEFT's fan_in_fan_out) -> h + mix Linear(10, 10) -> head Linear(10, 6)."""
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D


class ArrowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.lin0 = nn.Linear(12, 16)
        self.proj = Conv1D(10, 16)
        self.mix = nn.Linear(10, 10)
        self.head = nn.Linear(10, 6)

    def forward(self, ids):
        h = torch.relu(self.lin0(self.embed(ids)))
        h = self.proj(h)
        h = h + self.mix(h)
        return self.head(h)
