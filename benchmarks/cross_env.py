"""Do head importance and head surgery give the same numbers on every torch × transformers env?

Builds a tiny BERT whose weights come from a seeded generator (not from the
library's initialiser, which changes between releases), scores its heads with
``head-gradient`` and compares masked with physically removed outputs. Write
the numbers in one env and check them in another (tolerance 1e-5):

    python benchmarks/cross_env.py --write /tmp/ref.json              # e.g. torch 2.13 + transformers 5
    .tox/tf457/bin/python benchmarks/cross_env.py --check /tmp/ref.json
    .tox/torch-other/bin/python benchmarks/cross_env.py --check /tmp/ref.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers
from harness_plugins import head_gradient

from harness import ScoreRequest, modeling, surgery


def tiny_bert() -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("bert", vocab_size=120, hidden_size=32, num_attention_heads=4, num_hidden_layers=3,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    config._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(config).eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(99)
    out = []
    for _ in range(3):
        ids = torch.randint(5, 120, (4, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])})
    return out


def numbers() -> dict[str, list]:
    model, data = tiny_bert(), batches()
    scores = head_gradient.score(ScoreRequest(model, data, 0, dict(head_gradient.OPTIONS)))
    keep = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.inference_mode(), surgery.mask_heads(model, keep):
        masked = modeling.logits(model, data[0])
    with torch.inference_mode():
        removed = modeling.logits(surgery.remove_heads(model, keep), data[0])
    return {"scores": scores.tolist(), "masked": masked.tolist(), "removed": removed.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path)
    group.add_argument("--check", type=Path)
    args = parser.parse_args()
    here = numbers()
    env = f"torch {torch.__version__}, transformers {transformers.__version__}"
    gap = (torch.tensor(here["masked"]) - torch.tensor(here["removed"])).abs().max().item()
    print(f"{env}: masked vs removed max |diff| {gap:.2e}")
    if args.write:
        args.write.write_text(json.dumps({"env": env, **here}))
        print(f"wrote {args.write}")
        return
    reference = json.loads(args.check.read_text())
    for key in ("scores", "masked", "removed"):
        diff = (torch.tensor(here[key]) - torch.tensor(reference[key])).abs().max().item()
        print(f"  {key:8s} vs {reference['env']}: max |diff| {diff:.2e} {'ok' if diff <= 1e-5 else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
