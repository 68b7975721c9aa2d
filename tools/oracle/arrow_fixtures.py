"""PEFT 0.21 fixtures for @lora/arrow (packages/arrow/src/*.test.ts): Arrow routing and GenKnowSub with
create_arrow_model on ArrowNet (arrow_net.py, written again in packages/arrow/src/arrow-net.test-util.ts).

Five task experts and two general adapters, saved by PEFT (r=4 on lin0, proj (a Conv1D: fan_in_fan_out)
and mix; different lora_alpha, one with rsLoRA; three with a dominant direction, one without any), and
adapters that create_arrow_model refuses (another rank, other targets, an Embedding target). For each
routing case: the output on fixed ids, each layer's prototypes, and the output PEFT's own routing gives
with exact prototypes put in their place (the top right singular vector of B·A from numpy's float64 SVD).

Writes packages/arrow/__fixtures__/: net-base.safetensors, <adapter>/ directories, expected.safetensors,
errors.json (PEFT's messages)."""
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import ArrowConfig, create_arrow_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from arrow_net import ArrowNet  # noqa: E402
from oracle_common import save_adapter  # noqa: E402

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "arrow", "__fixtures__")
os.makedirs(OUT, exist_ok=True)
TARGETS = ["lin0", "proj", "mix"]
LAYERS = ["lin0", "proj", "mix"]

torch.manual_seed(170)
base_sd = {k: v.clone().contiguous() for k, v in ArrowNet().state_dict().items()}
save_file(base_sd, os.path.join(OUT, "net-base.safetensors"))


def fresh():
    m = ArrowNet()
    m.load_state_dict(base_sd)
    return m.eval()


def make_adapter(name, seed, alpha, r=4, targets=TARGETS, dominant=0, structured=True, scale=0.1, **kw):
    """A PEFT adapter with set factors: randn·scale, row `dominant` of A and column `dominant` of B ×4 when structured."""
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **kw)
    pm = get_peft_model(fresh(), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) * scale)
                b.copy_(torch.randn(b.shape, generator=g) * scale)
                if structured:
                    a[dominant] *= 4
                    b[:, dominant] *= 4
            if hasattr(mod, "lora_embedding_A") and "default" in mod.lora_embedding_A:
                mod.lora_embedding_B["default"].data.copy_(torch.randn(mod.lora_embedding_B["default"].shape, generator=g))
    save_adapter(pm, os.path.join(OUT, name))
    return os.path.join(OUT, name)


tasks = [
    make_adapter("task-a", 1, 8),
    make_adapter("task-b", 2, 16),
    make_adapter("task-c", 3, 8, dominant=1),
    make_adapter("task-d", 4, 4, structured=False),
    make_adapter("task-e", 5, 12, use_rslora=True),
]
general = [
    make_adapter("general-a", 11, 8, structured=False, scale=0.05),
    make_adapter("general-b", 12, 8, structured=False, scale=0.05),
]
rank8 = make_adapter("rank-8", 21, 8, r=8)
lin0_only = make_adapter("lin0-only", 22, 8, targets=["lin0"])
embed = make_adapter("embed-target", 23, 8, targets=["embed", "lin0"])
dora = make_adapter("dora", 24, 8, use_dora=True)

g = torch.Generator().manual_seed(171)
ids = torch.randint(0, 20, (2, 5), generator=g)
expected = {"ids": ids.to(torch.int32)}
with torch.no_grad():
    expected["base.out"] = fresh()(ids)


def router_layers(model):
    return {name.split(".")[-1]: mod for name, mod in model.named_modules() if hasattr(mod, "lora_arrow") and "arrow_router" in mod.lora_arrow}


def capture_inputs(model):
    """Each router layer's input on the next forward, by layer name."""
    seen, handles = {}, []
    for name, mod in router_layers(model).items():
        handles.append(mod.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].detach().clone())))
    return seen, handles


def exact_protos(mod):
    """The top right singular vector of B·A of each task expert of a router layer, float64 (sign: largest entry positive)."""
    arrow = mod.lora_arrow["arrow_router"]
    rows = []
    for n in arrow.task_adapter_names:
        a = mod.lora_A[n].weight.detach().double().numpy()
        b = mod.lora_B[n].weight.detach().double().numpy()
        _, _, vt = np.linalg.svd(b @ a)
        v = vt[0]
        rows.append(v * np.sign(v[np.argmax(np.abs(v))]))
    return torch.tensor(np.stack(rows))


def routing_margin(model, inputs, top_k):
    """The smallest gap, over tokens and layers, between the k-th and the (k+1)-th similarity relative to the k-th."""
    worst = float("inf")
    for name, mod in router_layers(model).items():
        p = mod.lora_arrow["arrow_router"].prototypes
        sim = (inputs[name].reshape(-1, p.shape[1]) @ p.T).abs()
        srt = sim.sort(dim=1, descending=True).values
        if srt.shape[1] > top_k:
            worst = min(worst, ((srt[:, top_k - 1] - srt[:, top_k]) / srt[:, top_k - 1]).min().item())
    return worst


def run_case(key, cfg, task_paths, general_paths=None):
    model = create_arrow_model(fresh(), task_paths, cfg, general_adapter_paths=general_paths).eval()
    seen, handles = capture_inputs(model)
    with torch.no_grad():
        out = model(ids)
        again = model(ids)
    for h in handles:
        h.remove()
    assert torch.equal(out, again), "a second forward must give the same output"
    margin = routing_margin(model, seen, cfg.top_k)
    assert margin > 1e-3, f"{key}: routing too close to a tie ({margin})"
    expected[f"{key}.out"] = out
    for name, mod in router_layers(model).items():
        arrow = mod.lora_arrow["arrow_router"]
        expected[f"{key}.protos.{name}"] = arrow.prototypes.detach().clone()
        expected[f"{key}.exact.{name}"] = exact_protos(mod).float()
        expected[f"{key}.input.{name}"] = seen[name]
    # PEFT's routing with the exact prototypes in place of the power iteration's
    with torch.no_grad():
        for name, mod in router_layers(model).items():
            mod.lora_arrow["arrow_router"].prototypes.copy_(expected[f"{key}.exact.{name}"])
        expected[f"{key}.exact.out"] = model(ids)
    print(f"{key}: margin {margin:.4f}, max|out - base| {(out - expected['base.out']).abs().max():.4f}")
    return model


run_case("top2", ArrowConfig(top_k=2, rng_seed=42), tasks)
run_case("top3-t05", ArrowConfig(top_k=3, router_temperature=0.5, rng_seed=42), tasks)
gks_model = run_case("gks", ArrowConfig(top_k=2, use_gks=True, rng_seed=42), tasks, general)
for name, mod in router_layers(gks_model).items():
    for n in ("task_0", "task_4"):
        expected[f"gks.{n}.{name}.lora_A"] = mod.lora_A[n].weight.detach().clone()
        expected[f"gks.{n}.{name}.lora_B"] = mod.lora_B[n].weight.detach().clone()
run_case("top1-all", ArrowConfig(top_k=1, rng_seed=42), tasks)

# PEFT's test: an expert loaded after a forward gets GenKnowSub and a prototype, as if loaded up front
later = create_arrow_model(fresh(), tasks[:4], ArrowConfig(top_k=2, use_gks=True, rng_seed=42), general_adapter_paths=general)
with torch.no_grad():
    later(ids)
later.load_adapter(tasks[4], adapter_name="new_added_ts_expert")
later.eval()
with torch.no_grad():
    assert torch.allclose(later(ids), expected["gks.out"], atol=1e-6), "PEFT: loading later == loading up front"

errors = {}


def message(fn):
    """PEFT's exception (type and message), or None where PEFT raises nothing."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return {"type": type(e).__name__, "message": str(e)}
    return None


errors["rank"] = message(lambda: create_arrow_model(fresh(), [tasks[0], rank8], ArrowConfig(top_k=1)))
errors["targets"] = message(lambda: create_arrow_model(fresh(), [tasks[0], lin0_only], ArrowConfig(top_k=1)))
# PEFT looks for LoRA weights in lora_A only, so an Embedding target (lora_embedding_A) passes its
# Linear-only check, and the router there runs as a plain LoRA with B = 0: recorded as None
errors["embedding"] = message(lambda: create_arrow_model(fresh(), [embed], ArrowConfig(top_k=1)))
assert errors["embedding"] is None
errors["empty"] = message(lambda: create_arrow_model(fresh(), [], ArrowConfig(top_k=1)))
errors["no_general"] = message(lambda: create_arrow_model(fresh(), tasks[:2], ArrowConfig(top_k=1, use_gks=True)))
errors["top_k"] = message(lambda: ArrowConfig(top_k=0))
errors["temperature"] = message(lambda: ArrowConfig(router_temperature=0))
errors["merge"] = message(lambda: create_arrow_model(fresh(), tasks[:2], ArrowConfig(top_k=1)).merge_and_unload())
big_k = create_arrow_model(fresh(), tasks[:2], ArrowConfig(top_k=3))
errors["top_k_above_experts"] = message(lambda: big_k(ids))

save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
with open(os.path.join(OUT, "errors.json"), "w") as f:
    json.dump(errors, f, indent=2)
    f.write("\n")
print(json.dumps(errors, indent=2))
