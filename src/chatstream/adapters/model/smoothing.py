"""Moving activation outliers into the weights before int8 quantization (SmoothQuant, Xiao
et al. 2023), for Llama-shaped models.

A few activation channels are much larger than the rest in every token; quantized with them,
the others keep few levels. Each such channel is divided by a factor that multiplies the
matching weight column: folded into the RMSNorm before the attention and MLP projections, and
into ``up_proj`` before ``down_proj`` (whose input is ``act(gate) * up``), so the float model
computes the same function and nothing is added at run time. The factors come from the
activations of a short built-in calibration text (``data/calibration.txt``: chat, code,
lists, numbers, several languages), read once at load time.

By hand because the libraries that ship SmoothQuant for PyTorch (torchao's prototype, Intel
Neural Compressor) fold it into their own quantization flows and kernels (torchao's runs
slower than float32 on a CPU without ``torch.compile``); this is its one arithmetic step,
fitted to the int8 products of :mod:`.quantization`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch
from torch import nn

__all__ = ["CALIBRATION_TOKENS", "SMOOTHING_ALPHA", "calibration_text", "smooth_model"]

#: SmoothQuant's migration strength: how much of an activation channel's range moves into
#: the weights (0: none, 1: all). 0.5 gave the lowest perplexity on SmolLM2 (0.3-0.8 tried).
SMOOTHING_ALPHA = 0.5

#: Calibration reads at most this many tokens of the calibration text.
CALIBRATION_TOKENS = 512


def calibration_text() -> str:
    """The built-in calibration text (chat, code, lists, numbers, several languages)."""
    return (
        resources.files("chatstream.adapters.model")
        .joinpath("data/calibration.txt")
        .read_text(encoding="utf-8")
    )


def smooth_model(model: Any, tokenizer: Any, calibration: str | None = None) -> int:
    """Smooth ``model`` in place, calibrated on ``calibration`` (the built-in text by
    default); the number of decoder layers smoothed (0: not a Llama-shaped model)."""
    if not _llama_layers(model):
        return 0
    config = getattr(model, "config", None)
    limit = min(
        int(getattr(config, "max_position_embeddings", 0) or CALIBRATION_TOKENS),
        CALIBRATION_TOKENS,
    )
    text = calibration or calibration_text()
    ids = list(tokenizer(text, truncation=True, max_length=limit)["input_ids"])
    return _smooth(model, ids[:limit])


def _llama_layers(model: Any) -> Sequence[Any]:
    """The decoder layers of a Llama-style model (RMSNorm before attention and MLP, q/k/v,
    gate/up/down projections), or none."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return []
    for layer in layers:
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not all(
            isinstance(getattr(owner, name, None), nn.Linear)
            for owner, names in (
                (attention, ("q_proj", "k_proj", "v_proj")),
                (mlp, ("gate_proj", "up_proj", "down_proj")),
            )
            for name in names
        ):
            return []
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weight = getattr(getattr(layer, norm, None), "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
                return []
    return list(layers)


@torch.inference_mode()
def _activation_ranges(model: Any, ids: list[int], modules: list[nn.Module]) -> list[torch.Tensor]:
    """The largest magnitude of each input channel of ``modules`` over the calibration text."""
    ranges: list[torch.Tensor | None] = [None] * len(modules)

    def recorder(index: int) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
            seen = ranges[index]
            ranges[index] = x if seen is None else torch.maximum(seen, x)

        return hook

    handles = [m.register_forward_pre_hook(recorder(i)) for i, m in enumerate(modules)]
    try:
        model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [r if r is not None else torch.ones(1) for r in ranges]


def _smoothing(activation: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    weight = torch.cat([w.abs().float() for w in weights]).amax(dim=0).clamp_min(1e-5)
    factor = activation.clamp_min(1e-5).pow(SMOOTHING_ALPHA) / weight.pow(1 - SMOOTHING_ALPHA)
    return factor.clamp_min(1e-5)


@torch.inference_mode()
def _smooth(model: Any, ids: list[int]) -> int:
    """Move activation outliers into the weights (see the module's docstring); the number
    of decoder layers smoothed."""
    layers = _llama_layers(model)
    if not layers or not ids:
        return 0
    probes: list[nn.Module] = []
    for layer in layers:
        probes += [layer.self_attn.q_proj, layer.mlp.gate_proj, layer.mlp.down_proj]
    ranges = iter(_activation_ranges(model, ids, probes))
    for layer in layers:
        attention, mlp = layer.self_attn, layer.mlp
        for norm, linears in (
            (layer.input_layernorm, [attention.q_proj, attention.k_proj, attention.v_proj]),
            (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
        ):
            factor = _smoothing(next(ranges), [linear.weight for linear in linears])
            norm.weight.div_(factor.to(norm.weight.dtype))
            for linear in linears:
                linear.weight.mul_(factor.to(linear.weight.dtype))
        # down_proj's input is act(gate) * up: dividing up's output channels divides it.
        factor = _smoothing(next(ranges), [mlp.down_proj.weight])
        mlp.up_proj.weight.div_(factor[:, None].to(mlp.up_proj.weight.dtype))
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(factor.to(mlp.up_proj.bias.dtype))
        mlp.down_proj.weight.mul_(factor.to(mlp.down_proj.weight.dtype))
    return len(layers)
