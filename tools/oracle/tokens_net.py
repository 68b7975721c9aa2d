"""The small model of the @lora/core trainable-token fixtures (written again in packages/core/src/token-nets.test-util.ts)."""
import torch
import torch.nn as nn


class ModelConfig(dict):
    """What PEFT reads from a transformers model's config: here only tie_word_embeddings."""

    def to_dict(self):
        return dict(self)


class TokNet(nn.Module):
    """An input embedding, a hidden Linear and an output layer over the vocabulary, optionally tied to the
    embedding as transformers ties lm_head (get_input_embeddings, _tied_weights_keys, tie_word_embeddings)."""

    def __init__(self, tied=False):
        super().__init__()
        self.embed_tokens = nn.Embedding(20, 8)
        self.lin = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 20, bias=False)
        if tied:
            self.lm_head.weight = self.embed_tokens.weight
            self._tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}
        self.config = ModelConfig(tie_word_embeddings=tied, model_type="custom")

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.lin(self.embed_tokens(ids))))
