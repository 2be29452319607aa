"""The quality gate of quantized weights: what int8 (or bf16) changes against float32.

    python -m benchmarks.quality                          # the embedded SmolLM2, int8 and bf16
    python -m benchmarks.quality --model PATH --modes int8

Two measures, both on files we wrote and ship in ``benchmarks/quality/``:

- **Perplexity** of the model on ``text.md`` (an essay of about 1,700 tokens), in one forward,
  against float32's. The gate: the embedded default is served with int8 weights only if its
  perplexity rises by less than 2 %.
- **Greedy agreement** on the 40 chat prompts of ``prompts.json`` (through the model's chat
  template), 64 new tokens each (EOS ignored): how many replies are token-identical to
  float32's, how many tokens they share before the first difference (mean), and the share of
  positions where the quantized model, fed float32's reply, predicts float32's next token
  (teacher-forced top-1 agreement: every position counts, not only those before a first
  difference).

Prints a Markdown table and writes it (and the raw figures as JSON) to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from chatstream.adapters.model.quantization import quantize_model

HERE = Path(__file__).resolve().parent / "quality"
TEXT = HERE / "text.md"
PROMPTS = HERE / "prompts.json"
NEW_TOKENS = 64


def load(model_path: str | None) -> tuple[Any, Any]:
    if model_path is None:
        from chatstream.embedded import load_embedded_model

        return load_embedded_model()
    from chatstream.adapters.model.loading import load_model

    return load_model(model_path)


@torch.inference_mode()
def perplexity(model: Any, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids).logits[0, :-1].float()
    return math.exp(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))


@torch.inference_mode()
def greedy(model: Any, prompts: list[torch.Tensor], eos: int) -> list[torch.Tensor]:
    replies = []
    for prompt in prompts:
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=eos,
        )
        replies.append(out[0, prompt.shape[1] :])
    return replies


@torch.inference_mode()
def teacher_forced(model: Any, prompts: list[torch.Tensor], replies: list[torch.Tensor]) -> float:
    agree = total = 0
    for prompt, reply in zip(prompts, replies, strict=True):
        ids = torch.cat([prompt[0], reply])[None]
        logits = model(input_ids=ids).logits[0, prompt.shape[1] - 1 : -1]
        agree += int((logits.argmax(-1) == reply).sum())
        total += len(reply)
    return agree / total


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    differ = (a != b).nonzero()
    return int(differ[0, 0]) if len(differ) else len(a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--modes", default="int8,bf16", help="comma list of quantize modes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="folder for quality.md and quality.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    ids = torch.tensor([tokenizer(TEXT.read_text(encoding="utf-8"))["input_ids"]])
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        for text in json.loads(PROMPTS.read_text(encoding="utf-8"))
    ]
    eos = int(tokenizer.eos_token_id)
    started = time.monotonic()
    baseline = perplexity(model, ids)
    reference = greedy(model, prompts, eos)
    print(f"float32: perplexity {baseline:.3f} ({time.monotonic() - started:.0f} s)", flush=True)
    rows: list[dict[str, Any]] = [{"mode": "float32", "perplexity": baseline}]
    for mode in args.modes.split(","):
        quantized = copy.deepcopy(model)
        report = quantize_model(quantized, mode, tokenizer=tokenizer)
        replies = greedy(quantized, prompts, eos)
        row = {
            "mode": mode,
            "report": str(report),
            "perplexity": perplexity(quantized, ids),
            "identical_replies": sum(map(torch.equal, replies, reference)),
            "mean_common_prefix": sum(map(common_prefix, replies, reference)) / len(replies),
            "teacher_forced_agreement": teacher_forced(quantized, prompts, reference),
        }
        row["perplexity_change"] = row["perplexity"] / baseline - 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    cpu = torch.cpu.get_capabilities()
    flags = ("avx2", "avx512_f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    lines = [
        f"Model: {args.model or 'SmolLM2-135M-Instruct (embedded)'}; CPU: "
        f"{cpu.get('cpu_name', platform.processor())} "
        f"({', '.join(f for f in flags if cpu.get(f)) or 'no AVX2'}); torch {torch.__version__}; "
        f"{len(prompts)} prompts, {NEW_TOKENS} new tokens; text of {ids.shape[1]} tokens.",
        "",
        "| weights | perplexity | change | identical replies | mean common prefix | "
        "teacher-forced agreement |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["mode"] == "float32":
            lines.append(f"| float32 | {row['perplexity']:.3f} | – | – | – | – |")
            continue
        lines.append(
            f"| {row['mode']} | {row['perplexity']:.3f} | {100 * row['perplexity_change']:+.2f} % "
            f"| {row['identical_replies']} / {len(prompts)} "
            f"| {row['mean_common_prefix']:.1f} / {NEW_TOKENS} "
            f"| {100 * row['teacher_forced_agreement']:.2f} % |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.md").write_text(table + "\n", encoding="utf-8")
        (out / "quality.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
