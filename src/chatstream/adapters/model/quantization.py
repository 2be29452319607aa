"""Int8 weights for serving on a CPU: ``ChatStream(quantize="int8")``, ``--quantize int8``.

Every ``nn.Linear`` of the model (the output head included, untied from the embeddings)
becomes an :class:`Int8Linear`: weights stored as int8 with one scale per output channel,
activations quantized to 8 bits on the fly, and the product computed by the x86 int8 matrix
kernels that PyTorch ships (``torch.ops.quantized.linear_dynamic``: fbgemm, using VNNI
where the CPU has it). On a 2-core AMD EPYC with one thread this makes SmolLM2-135M's decode
step 2.5x faster at batch 1 and 3.0x at batch 8 (see ``docs/quantization.md``).

Why by hand rather than a library's one-call quantizer:

- ``torch.ao.quantization.quantize_dynamic`` (deprecated) quantizes a layer's activations
  with one scale for the whole input: one token's outlier (a model's first token carries
  values a hundred times the others') spoils every other row of the batch, and with it
  perplexity (+165 % on our text). Here each row gets its own scale: the row is divided by
  its largest magnitude before the int8 product and multiplied back after, which is exact
  algebra for a linear map and turns the kernel's per-tensor scale into a per-token one.
  A row's result also no longer depends on which other requests share its batch.
- torchao's ``Int8DynamicActivationInt8WeightConfig`` does per-token scales, but without
  ``torch.compile`` its CPU path is slower than float32 (95 ms a step against 56 at batch 1).
- The remaining error comes from a few activation channels much larger than the rest; they
  are moved into the weights before quantizing (:mod:`.smoothing`, SmoothQuant), at no cost
  at run time.
- Layers that read the same input (q, k and v; gate and up) are one stacked int8 product
  (:class:`Int8Product`): one kernel call and one quantization of the input instead of three.

The int8 kernels used are x86's (fbgemm; ARM's qnnpack has not been tried); on a GPU, use
bfloat16 instead. CPUs without AVX512-VNNI quantize activations to 7 bits, which
their kernels need to avoid overflowing 16-bit sums, at some cost in quality.

``quantize="bf16"`` casts the weights to bfloat16: only CPUs that multiply bfloat16 natively
(AMX, as on Intel Sapphire Rapids and later) gain speed; elsewhere it only halves memory.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, get_args

import torch
from torch import nn

from chatstream.core.config import Quantize, choose_quantize

from .smoothing import smooth_model

__all__ = [
    "QUANTIZE_MODES",
    "Int8Linear",
    "Int8Product",
    "QuantizationReport",
    "auto_quantize",
    "quantize_model",
]

#: What ``quantize=`` accepts (``None`` and "none": the weights as loaded).
QUANTIZE_MODES = (*get_args(Quantize), "none")

#: Projections that read the same input in Llama-style models: one int8 product each.
_SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantizationReport:
    """What :func:`quantize_model` did."""

    mode: str
    #: Linear layers replaced by :class:`Int8Linear`.
    int8_layers: int = 0
    #: Decoder layers whose inputs were smoothed (0: not a Llama-style model).
    smoothed_layers: int = 0
    #: int8: 8 on CPUs with AVX512-VNNI, 7 without (their kernels need it); None otherwise.
    activation_bits: int | None = None


@contextmanager
def _quantized_tensors_allowed() -> Iterator[None]:
    # PyTorch deprecates its quantized tensor types (pytorch/pytorch#184982) without a
    # replacement that runs int8 products on a CPU at this speed yet; the packed weights
    # are still built from them. The warning is silenced here only, where it is known.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*quantized tensor creation functions.*", category=UserWarning
        )
        yield


def _has_vnni() -> bool:
    # fbgemm's kernels with 32-bit sums (no 16-bit saturation, so 8-bit activations are
    # safe) are its AVX512-VNNI ones; AVX-VNNI alone (256-bit) is not relied upon.
    return bool(torch.cpu.get_capabilities().get("avx512_vnni"))


def _pack(weight: torch.Tensor) -> Any:
    """int8 weights with one scale per output channel, packed for the x86 kernels."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with _quantized_tensors_allowed():
        qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None)


class _Round(threading.local):
    """A stacked product's output for the input its members are taking it for, per thread."""

    source: torch.Tensor | None = None
    output: torch.Tensor | None = None
    untaken = 0


class Int8Product:
    """The int8 product of one input with the weights of one or more layers that read it,
    stacked: q, k and v (or gate and up) are one matrix product instead of three, and their
    input is scaled and quantized once.

    The first member called with an input computes every member's output; the others take
    theirs from it while the input is the same tensor object, until each member has taken
    its own (then nothing stale can be served for a later input). That state is per thread:
    model copies that share one model object run their forwards in threads of their own.
    """

    def __init__(self, linears: list[nn.Linear], *, reduce_range: bool) -> None:
        self.reduce_range = reduce_range
        self._packed = _pack(torch.cat([linear.weight for linear in linears]))
        biases = [linear.bias for linear in linears]
        self._bias: torch.Tensor | None = None
        if any(bias is not None for bias in biases):
            self._bias = torch.cat(
                [
                    torch.zeros(linear.out_features) if bias is None else bias.detach().float()
                    for linear, bias in zip(linears, biases, strict=True)
                ]
            )
        bounds = [0]
        for linear in linears:
            bounds.append(bounds[-1] + linear.out_features)
        #: Each member's columns of the stacked output.
        self.columns = [slice(a, b) for a, b in itertools.pairwise(bounds)]
        self._round = _Round()

    def output(self, x: torch.Tensor, member: int) -> torch.Tensor:
        if len(self.columns) == 1:
            return self._compute(x)
        state = self._round
        if x is not state.source or not state.untaken:
            state.output = self._compute(x)
            state.source = x
            state.untaken = len(self.columns)
        state.untaken -= 1
        assert state.output is not None
        out = state.output[..., self.columns[member]]
        if not state.untaken:
            state.source = state.output = None
        return out

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        # One scale per row: divided by its largest magnitude, every row spans [-1, 1], so
        # the kernel's one range for the whole input fits each row (exact algebra for a
        # linear map: the row's scale multiplies the result back).
        # (abs + amax: a vectorized reduction; linalg.vector_norm(ord=inf) takes 4x longer.)
        scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min_(1e-12)
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(
            x.float() / scale, self._packed, self.reduce_range
        )
        out.mul_(scale)
        if self._bias is not None:
            out.add_(self._bias)
        return out.to(x.dtype)


class Int8Linear(nn.Module):
    """A linear map with int8 weights (one scale per output channel) and int8 activations
    (one scale per row), computed by PyTorch's x86 int8 kernels; one member of an
    :class:`Int8Product` (alone in it, or stacked with the layers that read the same input).
    """

    def __init__(
        self,
        linear: nn.Linear,
        *,
        reduce_range: bool = False,
        product: Int8Product | None = None,
        member: int = 0,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.product = product or Int8Product([linear], reduce_range=reduce_range)
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.output(x, self.member)

    def extra_repr(self) -> str:
        bits = 7 if self.product.reduce_range else 8
        stacked = len(self.product.columns)
        return f"in_features={self.in_features}, out_features={self.out_features}, a{bits}w8" + (
            f", stacked with {stacked - 1} more" if stacked > 1 else ""
        )


def auto_quantize(*, device: str | None, embedded: bool) -> Quantize | None:
    """What ``--quantize auto`` means: int8 for the embedded model on a CPU with AVX512-VNNI and
    int8 kernels, where it passed the quality gate (perplexity +1.7 %, see
    ``docs/quantization.md``); the weights as loaded otherwise (other models have not been
    gated; CPUs without AVX512-VNNI quantize activations to 7 bits: +6.7 %)."""
    int8_kernels = "fbgemm" in torch.backends.quantized.supported_engines and _has_vnni()
    return choose_quantize(device=device, embedded=embedded, int8_kernels=int8_kernels)


#: What a model was quantized to (an attribute on the model), so that a ChatStream started
#: twice, or two copies sharing one model, quantize it once.
_DONE_ATTRIBUTE = "_chatstream_quantized"
_lock = threading.Lock()


def quantize_model(
    model: Any, mode: str | None, *, tokenizer: Any = None, calibration: str | None = None
) -> QuantizationReport:
    """Quantize ``model`` in place (see the module's docstring); a model already quantized
    to ``mode`` is left as it is.

    Args:
        mode: "int8", "bf16", or None / "none" (nothing changes).
        tokenizer: the model's tokenizer, for the calibration text (int8 only; without it,
            activations are not smoothed).
        calibration: text to calibrate on instead of the built-in one.

    Raises:
        ValueError: an unknown mode, int8 off the CPU or without int8 kernels, or a model
            already quantized to another mode.
    """
    if mode in (None, "none"):
        return QuantizationReport(mode="none")
    with _lock:
        done: QuantizationReport | None = getattr(model, _DONE_ATTRIBUTE, None)
        if done is not None:
            if done.mode != mode:
                raise ValueError(f"the model is already quantized to {done.mode}, not {mode}")
            return done
        report = _quantize(model, mode, tokenizer=tokenizer, calibration=calibration)
        setattr(model, _DONE_ATTRIBUTE, report)
        return report


def _quantize(
    model: Any, mode: str, *, tokenizer: Any, calibration: str | None
) -> QuantizationReport:
    if mode == "bf16":
        model.to(torch.bfloat16)
        return QuantizationReport(mode="bf16")
    if mode != "int8":
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    device = _device_of(model)
    if device.type != "cpu":
        raise ValueError(f"int8 weights run on a CPU only, not on {device.type}: use bf16")
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("int8 weights need PyTorch's x86 int8 kernels (fbgemm), absent here")
    model.to(torch.float32)
    _untie_output_head(model)
    smoothed = 0 if tokenizer is None else smooth_model(model, tokenizer, calibration)
    reduce_range = not _has_vnni()
    replaced = 0
    for parent in list(model.modules()):
        children = {
            name: child for name, child in parent.named_children() if isinstance(child, nn.Linear)
        }
        for group in (*_SHARED_INPUTS, *([name] for name in children)):
            members = [name for name in group if name in children]
            if not members or (len(members) < len(group) and len(group) > 1):
                continue  # an incomplete group: its layers are replaced one by one
            linears = [children.pop(name) for name in members]
            product = Int8Product(linears, reduce_range=reduce_range)
            for index, (name, linear) in enumerate(zip(members, linears, strict=True)):
                setattr(parent, name, Int8Linear(linear, product=product, member=index))
                replaced += 1
    return QuantizationReport(
        mode="int8",
        int8_layers=replaced,
        smoothed_layers=smoothed,
        activation_bits=7 if reduce_range else 8,
    )


def _device_of(model: Any) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device


def _untie_output_head(model: Any) -> None:
    """Give the output head weights of its own, so that quantizing (and smoothing) it leaves
    the input embeddings as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if head is None or embeddings is None or head.weight is not embeddings.weight:
        return
    head.weight = nn.Parameter(embeddings.weight.detach().clone(), requires_grad=False)
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
