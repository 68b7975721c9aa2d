"""The models, adapters and combinations of the combine fixtures (combine_fixtures.py,
check_peft_loads_combined.py), and the two changes those scripts make to PEFT 0.21 (see each)."""
import contextlib
import os
import shutil
import tempfile
from unittest import mock

import torch
import torch.nn as nn
from peft.tuners.lora import layer as lora_layer
from peft.tuners.lora import model as lora_model
from transformers.pytorch_utils import Conv1D


def allow_conv1d_svd():
    """PEFT 0.21 flattens the delta to 2-D before the SVD only for Conv2d, so the SVD types fail on Conv1d
    (huggingface/peft#3769, open). Let Conv1d take the Conv2d branch (flatten(start_dim=1), U and Vh reshaped
    into lora_B's and lora_A's shapes), which is the fix proposed upstream."""
    lora_model.Conv2d = (lora_layer.Conv2d, lora_layer.Conv1d)


_svd = torch.linalg.svd


def svd_flipped(a, full_matrices=True, driver=None):
    """torch.linalg.svd with svd_flip's signs: the largest-magnitude entry of each column of U positive."""
    U, S, Vh = _svd(a, full_matrices=full_matrices, driver=driver)
    k = min(U.shape[1], Vh.shape[0], S.shape[0])
    signs = torch.sign(U[U[:, :k].abs().argmax(0), torch.arange(k)])
    signs[signs == 0] = 1
    U, Vh = U.clone(), Vh.clone()
    U[:, :k] *= signs
    Vh[:k] *= signs[:, None]
    return U, S, Vh


def fixed_svd_signs(kwargs):
    """svd_clamp's quantile depends on the singular vectors' signs, which LAPACK leaves arbitrary: for a
    combination with svd_clamp, a context in which torch.linalg.svd fixes them as svd_flip (and @lora) does."""
    return mock.patch.object(torch.linalg, "svd", svd_flipped) if "svd_clamp" in kwargs else contextlib.nullcontext()


class CombineNet(nn.Module):
    """Embedding -> Linear on token ids; Conv2d 3x3 -> Conv2d 1x1 -> Conv1d on an image (written again in
    packages/core/src/files/combine-adapters.test.ts)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.lin = nn.Linear(6, 6)
        self.conv = nn.Conv2d(2, 4, (3, 3), padding=1)
        self.pw = nn.Conv2d(4, 4, 1)
        self.conv1d = nn.Conv1d(4, 5, 3, padding=1)

    def forward(self, ids, img):
        t = self.lin(self.embed(ids)).mean(1)  # [B, 6]
        c = self.pw(torch.relu(self.conv(img)))  # [B, 4, H, W]
        c = self.conv1d(c.flatten(2)).mean(2)  # [B, 5]
        return torch.cat([t, c], 1)


class FifoNet(nn.Module):
    """A GPT-2 style Conv1D (weight [in, out]), the fan_in_fan_out case."""

    def __init__(self):
        super().__init__()
        self.c_attn = Conv1D(7, 5)

    def forward(self, x):
        return self.c_attn(x)


ALL = ["embed", "lin", "conv", "pw", "conv1d"]
ADAPTERS = {
    "a": dict(r=4, lora_alpha=8, target_modules=ALL, rank_pattern={"conv1d": 2}, init_lora_weights=False),
    "b": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=ALL, rank_pattern={"conv1d": 2}, alpha_pattern={"conv": 3}, init_lora_weights=False),
    "c": dict(r=2, lora_alpha=4, target_modules=["lin", "conv", "conv1d"], rank_pattern={"lin": 3}, init_lora_weights=False),
}
AB = (["a", "b"], [0.7, -0.4])
ABC = (["a", "b", "c"], [0.7, -0.4, 1.2])
# label: (adapters, weights, add_weighted_adapter's keyword arguments); mirrored in the TS tests
COMBOS = {
    "linear": (*AB, dict(combination_type="linear")),
    "cat": (*AB, dict(combination_type="cat")),
    "svd": (*AB, dict(combination_type="svd")),
    "svd_clamp": (*AB, dict(combination_type="svd", svd_rank=3, svd_clamp=0.9)),
    "ties": (*AB, dict(combination_type="ties", density=0.5)),
    "ties_frequency": (*AB, dict(combination_type="ties", density=0.5, majority_sign_method="frequency")),
    "magnitude_prune": (*AB, dict(combination_type="magnitude_prune", density=0.6)),
    "ties_svd": (*AB, dict(combination_type="ties_svd", density=0.5, svd_rank=3)),
    "magnitude_prune_svd": (*AB, dict(combination_type="magnitude_prune_svd", density=0.6)),
    "cat3": (*ABC, dict(combination_type="cat")),
    "svd3": (*ABC, dict(combination_type="svd")),
    "ties_svd3": (*ABC, dict(combination_type="ties_svd", density=0.7, majority_sign_method="frequency")),
    "magnitude_prune_svd3": (*ABC, dict(combination_type="magnitude_prune_svd", density=0.5, svd_rank=2)),
    "solo": (["a"], [1.5], dict(combination_type="svd")),  # one adapter: PEFT switches to linear
}


def save_adapter(pm, adapter, directory):
    """save_pretrained of one adapter into `directory` itself (PEFT puts a non-default one in a sub-folder), no model card."""
    with tempfile.TemporaryDirectory() as tmp:
        pm.save_pretrained(tmp, selected_adapters=[adapter])
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(os.path.join(tmp, adapter), directory, ignore=shutil.ignore_patterns("*.md"))
