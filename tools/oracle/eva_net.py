"""The small models of the @lora/eva fixtures (written again in packages/eva/src/eva-nets.test-util.ts)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class EvaBlock(nn.Module):
    """A Llama-shaped block without attention: q/k/v read the same normed input, gate/up the same."""

    def __init__(self, h, i):
        super().__init__()
        self.norm1 = nn.LayerNorm(h)
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.norm2 = nn.LayerNorm(h)
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        a = self.norm1(x)
        x = x + self.o_proj(torch.tanh(self.q_proj(a)) * torch.sigmoid(self.k_proj(a)) + self.v_proj(a))
        b = self.norm2(x)
        return x + self.down_proj(F.silu(self.gate_proj(b)) * self.up_proj(b))


class EvaNet(nn.Module):
    """ids [B, T] -> Embedding(40, 32) -> 2 EvaBlocks -> Linear head (40). The mask and labels are not used by the model."""

    def __init__(self, vocab=40, h=32, i=48, n_layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, h)
        self.layers = nn.ModuleList([EvaBlock(h, i) for _ in range(n_layers)])
        self.head = nn.Linear(h, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class ThreeNet(nn.Module):
    """spec §7.5: a sees columns 0-7, b and c both see columns 8-15 (equal inputs)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 4, bias=False)
        self.b = nn.Linear(8, 4, bias=False)
        self.c = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        # contiguous copies: PEFT's HashHook cannot hash a strided view (tensor.view(-1) fails on it)
        right = x[:, 8:]
        return self.a(x[:, :8].contiguous()) + self.b(right.contiguous()) + self.c(right.contiguous())
