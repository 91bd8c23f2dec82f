"""Training-step cost of Jacobian regularization: plain step vs JR steps, the paper's loop vs robench.

One SGD step (forward, backward, optimizer step) of LeNet' on MNIST-shaped input, per batch size:

- plain: cross-entropy only, the baseline of every ratio;
- JR n_proj=1 as the paper's Algorithm 1 writes it (autograd.grad with create_graph, written out
  here), and through robench (`logits_and_frobenius_sq`, methods "autograd" and "vmap");
- exact JR as C autograd.grad passes (the reference, which is also robench's "autograd") and
  through robench's "vmap"; the method robench's "auto" picks on the device is marked;
- exact JR by forward-over-reverse (torch.func.jvp of the parameter gradient in place of double
  backward), measured here only, at the smallest batch size (it is the slowest variant by far, and
  at batch 512 alone would take minutes on a CPU): robench does not ship it.

Every variant is first checked against the reference on a small float64 batch (same penalty
gradients), then all are timed side by side in one process, interleaved round by round so machine
noise hits them alike; a figure is the median over rounds after one warm-up round. Run:

    .venv/bin/python benchmarks/bench_jr.py [--device cpu] [--repeats 2] [--batch-sizes 64,512] [--write]

`--compile` adds torch.compile'd steps (compile time is spent in the warm-up round, not timed).
`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch.func import functional_call, grad, jvp, vjp, vmap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_label, sync, write_section  # noqa: E402
from robench.devices import configure_tf32, resolve_device  # noqa: E402
from robench.jacobian import _auto_method, logits_and_frobenius_sq  # noqa: E402
from robench.models import build_model, xavier_init_  # noqa: E402

LAM = 0.01  # the paper's lambda_JR for LeNet' on MNIST
TARGETS = {"n_proj=1": {64: 1.8, 512: 2.5}, "exact": 4.0}  # issue 5, on an H100


def algorithm1_penalty(model, x, n_proj, gen):
    """The paper's Algorithm 1 as plain torch: R = (1/2) mean_i C/n_proj sum_k ||v_k^T J_i||^2."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    batch, classes = logits.shape
    total = 0.0
    for _ in range(n_proj):
        v = torch.randn(batch, classes, device=x.device, dtype=x.dtype, generator=gen)
        v = v / v.norm(dim=1, keepdim=True)
        (jv,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=True)
        total = total + classes * jv.pow(2).sum() / (n_proj * batch)
    return logits, 0.5 * total


def exact_reference_penalty(model, x, _gen):
    """Exact R with C autograd.grad passes, one per one-hot vector (the paper's exact mode)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    eye = torch.eye(logits.shape[1], device=x.device, dtype=x.dtype)
    total = 0.0
    for e in eye:
        (row,) = torch.autograd.grad(logits, x, grad_outputs=e.expand_as(logits), create_graph=True)
        total = total + row.pow(2).sum() / len(x)
    return logits, 0.5 * total


def robench_penalty(n_proj, method):
    def penalty(model, x, gen):
        logits, sq = logits_and_frobenius_sq(model, x, n_proj=n_proj, generator=gen, method=method)
        return logits, 0.5 * sq.mean()

    return penalty


def forward_over_reverse_grads(model, x):
    """Parameter gradient of the exact R without double backward. With g_c = J^T e_c (a vjp in x),
    dR/dtheta = (1/B) sum_c (dg_c/dtheta)^T g_c, and (dg_c/dtheta)^T g_c is the derivative of the
    parameter gradient of e_c . f in the input direction g_c: a forward-mode jvp of a reverse pass."""
    params = {k: p.detach() for k, p in model.named_parameters()}

    def logits_of(p, inputs):
        return functional_call(model, p, (inputs,))

    with torch.no_grad():
        logits, pullback = vjp(lambda inputs: logits_of(params, inputs), x)
        eye = torch.eye(logits.shape[1], device=x.device, dtype=x.dtype).unsqueeze(1).expand(-1, len(x), -1)
        (rows,) = vmap(pullback)(eye)

        def mixed(v, g):
            return jvp(lambda inputs: grad(lambda p: (logits_of(p, inputs) * v).sum())(params), (x,), (g,))[1]

        per_class = vmap(mixed)(eye, rows)
    return {k: t.sum(0) / len(x) for k, t in per_class.items()}


def make_step(model, opt, penalty, gen):
    """One SGD step on cross-entropy + LAM * R (R from `penalty`, or no R when it is None)."""

    def step(x, y):
        if penalty is None:
            loss = F.cross_entropy(model(x), y)
        else:
            logits, reg = penalty(model, x, gen)
            loss = F.cross_entropy(logits, y) + LAM * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_forward_over_reverse_step(model, opt):
    """Cross-entropy by ordinary backward, plus LAM times the forward-over-reverse JR gradient."""

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        jr = forward_over_reverse_grads(model, x)
        for name, p in model.named_parameters():
            p.grad.add_(jr[name], alpha=LAM)
        opt.step()

    return step


def penalties(model, device) -> dict[str, tuple]:
    """label -> (penalty, kind). Per mode: the plain-torch reference and robench's methods, the one
    robench's "auto" resolves to on this device marked. Exact mode has no separate row for robench's
    "autograd": it is the reference's loop (frobenius_sq), and each exact step costs seconds on a CPU."""
    x = torch.zeros(1, device=device)
    auto = {kind: _auto_method(model, x, n_proj) for n_proj, kind in [(1, "n_proj=1"), (None, "exact")]}

    def mark(kind, method):
        return ", auto" if auto[kind] == method else ""

    return {
        "JR n_proj=1, Algorithm 1 (plain autograd)": (lambda m, x, g: algorithm1_penalty(m, x, 1, g), "n_proj=1"),
        f"JR n_proj=1, robench autograd{mark('n_proj=1', 'autograd')}": (robench_penalty(1, "autograd"), "n_proj=1"),
        f"JR n_proj=1, robench vmap{mark('n_proj=1', 'vmap')}": (robench_penalty(1, "vmap"), "n_proj=1"),
        f"JR exact, C autograd.grad passes (reference = robench autograd{mark('exact', 'autograd')})":
            (exact_reference_penalty, "exact"),
        f"JR exact, robench vmap{mark('exact', 'vmap')}": (robench_penalty(None, "vmap"), "exact"),
    }


FOR_LABEL = "JR exact, forward-over-reverse (not shipped)"


def check_variants(model, specs) -> float:
    """Largest relative difference between each variant's penalty gradient and the reference's
    (exact, or n_proj=1 with the same generator seed) in float64 on a small batch: timings of wrong
    code would mean nothing."""
    model = copy.deepcopy(model).double().cpu()
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())

    def grads(penalty):
        _, reg = penalty(model, x, torch.Generator().manual_seed(1))
        return torch.autograd.grad(reg, params, allow_unused=True)

    references = {"n_proj=1": grads(lambda m, x, g: algorithm1_penalty(m, x, 1, g)),
                  "exact": grads(exact_reference_penalty)}  # fmt: skip
    candidates = [(grads(penalty), kind) for penalty, kind in specs.values()]
    fwd = forward_over_reverse_grads(model, x)
    candidates.append(([fwd[n] for n, _ in model.named_parameters()], "exact"))
    worst = 0.0
    for got, kind in candidates:
        for g, r in zip(got, references[kind]):
            if r is None:  # the output bias does not enter J
                continue
            worst = max(worst, ((g - r).abs().max() / r.abs().max().clamp_min(1e-30)).item())
    if worst > 1e-6:
        raise SystemExit(f"variants disagree with the reference: relative difference {worst:.2e}")
    return worst


def build_steps(model, device, specs, *, compile_steps: bool, forward_over_reverse: bool) -> dict[str, tuple]:
    """label -> (step function, target kind); every step trains its own copy of the model."""
    specs = {"plain step": (None, "plain"), **specs}
    if forward_over_reverse:
        specs[FOR_LABEL] = ("fwd", "exact")
    steps = {}
    for label, (penalty, kind) in specs.items():
        net = copy.deepcopy(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator(device=device).manual_seed(0)
        step = make_forward_over_reverse_step(net, opt) if penalty == "fwd" else make_step(net, opt, penalty, gen)
        steps[label] = (step, kind)
        if compile_steps:
            steps[f"{label}, torch.compile"] = (torch.compile(step), kind)
    return steps


def time_steps(steps, x, y, device, repeats: int) -> dict[str, float | str]:
    """Median seconds per step after one warm-up round, rounds interleaved; a step that fails
    (e.g. torch.compile and double backward) is reported with its reason instead."""
    times: dict[str, list[float] | str] = {label: [] for label in steps}
    for round_ in range(repeats + 1):
        for label, (step, _) in steps.items():
            if isinstance(times[label], str):
                continue
            sync(device)
            start = time.perf_counter()
            try:
                step(x, y)
            except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
                times[label] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                continue
            sync(device)
            if round_ > 0:
                times[label].append(time.perf_counter() - start)
    return {label: t if isinstance(t, str) else statistics.median(t) for label, t in times.items()}


def target_for(kind: str, batch: int) -> str:
    target = TARGETS.get(kind)
    if isinstance(target, dict):
        target = target.get(batch)
    return f"<= {target}x" if target else ""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, help="timed rounds after one warm-up round (default: 20 on CUDA, "
                        "2 on a CPU, where the exact steps at batch 512 take seconds each)")
    parser.add_argument("--batch-sizes", default="64,512", help="comma-separated")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--no-tf32", action="store_true", help="full fp32 matmuls on CUDA")
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 2)
    configure_tf32(not args.no_tf32)
    torch.manual_seed(0)
    model = xavier_init_(build_model("lenet", "mnist")).train()
    specs = penalties(model, device)
    worst = check_variants(model, specs)
    model = model.to(device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows, notes = [], []
    for batch in batch_sizes:
        steps = build_steps(model, device, specs, compile_steps=args.compile,
                            forward_over_reverse=batch == min(batch_sizes))  # fmt: skip
        gen = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        results = time_steps(steps, x, y, device, repeats)
        for label, result in results.items():
            target = target_for(steps[label][1], batch)
            if isinstance(result, str):
                rows.append((batch, label, "skipped", "", target))
                notes.append(f"{label} (batch {batch}): {result}")
            else:
                ratio = f"{result / results['plain step']:.2f}x"
                rows.append((batch, label, f"{result * 1e3:,.1f}", ratio, target))
    header = (
        f"LeNet' (lenet, 1x28x28, 10 classes), SGD step, median of {repeats} interleaved rounds after a warm-up, "
        f"device: {device_label(device)}, torch {torch.__version__}"
        + (f", TF32 {'off' if args.no_tf32 else 'on'}" if device.type == "cuda" else "")
        + f"; every variant's penalty gradient agrees with the reference to {worst:.0e} (float64 check)"
    )
    print_table(header, rows, notes)
    if args.write:
        write_section("bench_jr", markdown(header, rows, notes))


def print_table(header: str, rows, notes) -> None:
    table = Table(title=header, title_justify="left")
    for name, justify in [("batch", "right"), ("step", "left"), ("ms", "right"), ("vs plain", "right"),
                          ("target (H100)", "right")]:  # fmt: skip
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"skipped: {note}", markup=False)


def markdown(header: str, rows, notes) -> str:
    lines = [header, "", "| batch | step | ms | vs plain | target (H100) |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {b} | {label} | {ms} | {ratio} | {target} |" for b, label, ms, ratio, target in rows]
    lines += ["", *[f"- skipped: {note}" for note in notes]] if notes else []
    return "\n".join(lines)


if __name__ == "__main__":
    main()
