"""Tiny random Llama-family checkpoints made by transformers, with inputs, logits, loss and greedy
generations, for @lora/models' parity tests; and a tiny BPE tokenizer with reference encodings.
Writes packages/models/__fixtures__/<name>/ (config.json, model.safetensors or shards, expected.safetensors, expected.json)."""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "models", "__fixtures__")
os.makedirs(ROOT, exist_ok=True)
common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128, rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
cases = {
    "llama-gqa": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=500000.0)),
    "llama3-rope-headdim": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, rope_theta=500000.0,
                                                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "llama-attention-bias-sharded": (LlamaConfig, LlamaForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True, tie_word_embeddings=False)),
    "qwen2-bias": (Qwen2Config, Qwen2ForCausalLM, dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1000000.0)),
}
summary = {"transformers": transformers.__version__, "torch": torch.__version__, "cases": {}}
for i, (name, (Config, Model, extra)) in enumerate(cases.items()):
    cfg = Config(**{**common, **extra})
    torch.manual_seed(100 + i)
    model = Model(cfg).eval()
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, max_shard_size="40KB" if "sharded" in name else "50GB")
    g = torch.Generator().manual_seed(i)
    ids = torch.randint(3, cfg.vocab_size, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding on the second row
    labels = ids.clone()
    labels[0, :2] = -100
    labels[1, -3:] = -100
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, labels=labels)
        gen = model.generate(ids[:1, :5], max_new_tokens=10, do_sample=False)
    expected = {"input_ids": ids.numpy().astype(np.int32), "attention_mask": mask.numpy().astype(np.int32), "labels": labels.numpy().astype(np.int32),
                "logits": res.logits.float().numpy(), "loss": res.loss.reshape(1).float().numpy(), "generated": gen.numpy().astype(np.int32)}
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()}, os.path.join(out, "expected.safetensors"))
    summary["cases"][name] = {"generated": gen[0].tolist(), "loss": float(res.loss)}
    print(name, "files:", sorted(os.listdir(out)), "loss", float(res.loss))

# A tiny byte-level BPE tokenizer, trained here, with reference encodings from the Rust library.
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
corpus = ["Low-rank adapters fine-tune large language models cheaply.", "LoRA trains two small matrices per layer.", "The quick brown fox jumps over the lazy dog!", "Ünïcödé and émojis 🙂 are bytes too."] * 20
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tdir = os.path.join(ROOT, "tokenizer")
os.makedirs(tdir, exist_ok=True)
tok.save(os.path.join(tdir, "tokenizer.json"))
with open(os.path.join(tdir, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"}, f)
texts = ["LoRA trains low-rank adapters.", "The lazy fox 🙂 jumps!", "  spaces  and\nnewlines", "Ünïcödé"]
summary["tokenizer"] = [{"text": t, "ids": tok.encode(t).ids, "decoded": tok.decode(tok.encode(t).ids)} for t in texts]
with open(os.path.join(ROOT, "expected.json"), "w") as f:
    json.dump(summary, f, indent=1)
