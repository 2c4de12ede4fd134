"""Scorer ``l0-gates``: learned stochastic head gates (Voita et al. 2019), budgeted like CoFi.

Every head gets a learnable log-alpha; during training its gate is sampled from
the stretched hard-concrete distribution (Louizos et al. 2018, limits (-0.1, 1.1))
and applied through the harness's own head gates (no second masking path). The
objective is task loss + a penalty on the expected L0 norm, sum_h P(gate_h != 0):

- ``lambda_mode=target`` (default): a Lagrangian controller (CoFi) drives the
  expected number of open heads to the budget of the requested sparsity;
- ``lambda_mode=fixed``: task loss + ``l0_lambda`` * E[L0] (Voita's sweep).

The scores are the final log-alphas: the ``heads`` pruner keeps the top heads
by log-alpha, which fills the budget exactly, and removes the rest physically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from harness import Options, Scorer, ScoreRequest, hookimpl, option

if TYPE_CHECKING:
    import torch
    from torch import nn

LIMIT_L, LIMIT_R = -0.1, 1.1
POSITIVE = 1e-12  # inclusive lower bound of rates and the temperature, which must be > 0


@dataclass(frozen=True)
class L0Options(Options):
    """Options of ``l0-gates``; shares lie in [0, 1]."""

    steps: int = option(300, low=1, help="gate training steps")
    lr: float = option(0.2, low=POSITIVE, help="Adam learning rate of the gates")
    temperature: float = option(2 / 3, low=POSITIVE, help="hard-concrete temperature (Louizos / CoFi; Voita used 1/3)")
    lambda_mode: Literal["target", "fixed"] = option("target", help="drive the expected open heads to the budget "
                                                     "(Lagrangian, CoFi), or a fixed L0 penalty (Voita)")
    l0_lambda: float = option(0.01, low=0.0, help="weight of the L0 penalty (lambda_mode=fixed)")
    lagrangian_lr: float = option(0.5, low=POSITIVE, help="learning rate of the Lagrange multipliers")
    target_warmup: float = option(0.5, low=0.0, high=1.0, help="share of the steps over which the budget tightens "
                                  "linearly (CoFi)")
    init_log_alpha: float = option(1.0, help="initial log-alpha of every gate")
    train_encoder: bool = option(False, help="train the model's weights jointly with the gates")
    encoder_lr: float = option(2e-5, low=POSITIVE, help="learning rate of the model's weights (train_encoder)")


OPTIONS = L0Options()


def open_probability(log_alpha: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(gate != 0) in closed form: sigmoid(log_alpha - temperature * log(-l / r))."""
    import torch

    return torch.sigmoid(log_alpha - temperature * math.log(-LIMIT_L / LIMIT_R))


def sample_gates(log_alpha: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A differentiable hard-concrete sample in [0, 1] with exact zeros and ones.

    The uniform noise is drawn on the CPU (``generator`` is a CPU generator) and
    moved to ``log_alpha``'s device: the same draws on every device.
    """
    import torch

    u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)


@dataclass(frozen=True)
class GateResult:
    """Final log-alphas and the state of training at its last step."""

    log_alpha: torch.Tensor
    expected_open: float
    target_open: float | None
    converged_fraction: float  # heads with P(open) < 0.05 or > 0.95
    steps: int


def _penalty(
    expected: torch.Tensor, target: float | None, total: int, lambdas: torch.Tensor, options: L0Options
) -> torch.Tensor:
    if target is None:
        return options.l0_lambda * expected
    gap = (expected - target) / total  # CoFi: relative to the model's size
    return lambdas[0] * gap + lambdas[1] * gap * gap


def _target_at(step: int, steps: int, target: float | None, total: int, options: L0Options) -> float | None:
    """The budget at ``step``: from all heads down to ``target`` over the warm-up, then fixed."""
    if target is None:
        return None
    warmup = options.target_warmup * steps
    fraction = min(1.0, step / warmup) if warmup > 0 else 1.0
    return total - (total - target) * fraction


def _budget(request: ScoreRequest, options: L0Options, total: int) -> float | None:
    """The number of heads to keep (``target`` mode), or ``None`` for a fixed lambda."""
    if request.train_batches is None:
        raise ValueError("l0-gates needs training batches (ScoreRequest.train_batches)")
    if options.lambda_mode == "fixed":
        return None
    if request.sparsity is None:
        raise ValueError("l0-gates with lambda_mode=target needs a sparsity")
    return float(total - round(request.sparsity * total))


def _optimizer(model: nn.Module, log_alpha: torch.Tensor, options: L0Options) -> torch.optim.Optimizer:
    """Adam over the gates, plus the model's weights when trained jointly (dropout on)."""
    import torch

    groups = [{"params": [log_alpha], "lr": options.lr}]
    if options.train_encoder:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": options.encoder_lr})
        model.train()
    else:  # frozen: only the gates learn, deterministically
        model.requires_grad_(False)
        model.eval()
    return torch.optim.Adam(groups)


def train_gates(request: ScoreRequest) -> GateResult:
    """Learn the gates on the task's training split; the model's weights stay frozen by default."""
    import torch

    from harness import modeling, progress, surgery
    from harness.calibration import model_device

    options = L0Options.of(request.options)  # a (partial) dict from tests is checked and completed alike
    model, steps, temperature = request.model, options.steps, options.temperature
    heads = surgery.head_geometry(model).heads_per_layer
    total = sum(heads)
    target = _budget(request, options, total)
    device = model_device(model)
    generator = torch.Generator().manual_seed(request.seed)  # CPU draws, moved: the same gates on every device
    noise = 0.01 * torch.randn((len(heads), max(heads)), generator=generator)
    log_alpha = (options.init_log_alpha + noise).to(device).requires_grad_(True)  # float32, on the model's device
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    optimizer = _optimizer(model, log_alpha, options)
    controller = torch.optim.Adam([lambdas], lr=options.lagrangian_lr, maximize=True)
    step = 0
    try:
        with surgery.HeadGates(model) as gates, progress.phase("L0 gate training", total=steps) as advance:
            for step, batch in enumerate(request.train_batches(steps), start=1):
                gates.gate = sample_gates(log_alpha, temperature, generator)
                task_loss = modeling.per_example_loss(model, batch).mean()
                expected = open_probability(log_alpha, temperature).sum()
                budget = _target_at(step, steps, target, total, options)
                loss = task_loss + _penalty(expected, budget, total, lambdas, options)
                optimizer.zero_grad(set_to_none=True)
                controller.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if target is not None:
                    controller.step()
                _log(request, step, task_loss, expected, log_alpha, temperature, lambdas)
                advance()
    finally:
        model.eval()
        for parameter, wanted in flags:
            parameter.requires_grad_(wanted)
    return _result(log_alpha.detach().cpu(), temperature, target, step)


def _log(request: ScoreRequest, step: int, task_loss, expected, log_alpha, temperature: float, lambdas) -> None:
    request.log("l0/task_loss", float(task_loss.detach()), step)
    request.log("l0/expected_l0", float(expected.detach()), step)
    request.log("l0/open_gates", float((open_probability(log_alpha, temperature) > 0.5).sum()), step)
    request.log("l0/lambda1", float(lambdas[0].detach()), step)
    request.log("l0/lambda2", float(lambdas[1].detach()), step)


def _result(log_alpha: torch.Tensor, temperature: float, target: float | None, steps: int) -> GateResult:
    probability = open_probability(log_alpha, temperature)
    converged = float(((probability < 0.05) | (probability > 0.95)).float().mean())
    return GateResult(log_alpha, float(probability.sum()), target, converged, steps)


def score(request: ScoreRequest) -> torch.Tensor:
    result = train_gates(request)
    request.log("l0/converged_fraction", result.converged_fraction, result.steps)
    return result.log_alpha


@hookimpl
def harness_scorers() -> list[Scorer]:
    return [
        Scorer(
            name="l0-gates",
            granularity="head",
            score=score,
            description="hard-concrete head gates trained to the head budget (Voita et al. 2019; CoFi)",
            options=OPTIONS,
            per_sparsity=True,
            updates_model=True,  # with train_encoder=true the jointly trained weights are what gets pruned
        )
    ]
