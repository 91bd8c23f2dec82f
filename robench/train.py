"""Training with the paper's defenses: Jacobian regularization, L2, dropout, FGSM adversarial training.

The data live on the training device as one uint8 tensor; each epoch draws batches from a
permutation seeded by (seed, epoch), and the Jacobian projections and dropout masks are seeded the
same way, so a resumed run repeats the batches an uninterrupted run would have seen.

Under torchrun, G processes train one model with DistributedDataParallel: each takes a contiguous
G-th of every global batch, so a step computes the same batch-mean gradient as one process would;
rank 0 alone evaluates after each epoch and writes the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, distributed, rundir
from .rundir import LOG_COLUMNS, RUNTIME_OPTIONS  # noqa: F401 - part of this module's public names
from .data import load_dataset, to_unit_float
from .defenses import eval_mode, input_gradient_sq, pgd_examples, trades_examples, trades_loss
from .devices import configure_tf32
from .errors import RobenchError
from .metrics import clean_accuracy, mean_jacobian_norm
from .jacobian import logits_and_frobenius_sq, unit_scale
from .models import build_model, set_dropout_generator, xavier_init_
from .progress import make_progress
from .settings import ADV_TRAIN_METHODS, JR_UNITS, SCHEDULES, TrainConfig  # noqa: F401 - public here too
from .untrusted import for_console

def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The paper's quench: lr, then lr/10 from 1/3 of training, then lr/100 from 2/3; times the
    linear warm-up factor over the first `warmup_epochs`.

    Why a warm-up: lr 0.1 with momentum 0.9 from Xavier init is a large first step; over 250 epochs a
    bad start is forgotten, but in a 2-epoch run a seed whose first steps overshoot (ReLUs die, the
    loss plateaus) never recovers before the quench freezes it (measured: seed 1 of a 2-epoch LeNet'
    on 5,000 images ended at 80% test accuracy, seed 0 at 96%).
    """
    lr = config.lr
    if config.schedule != "constant":
        lr *= 0.1 ** sum(step >= total_steps * k / 3 for k in (1, 2))
    warmup_steps = config.warmup_epochs * total_steps / config.epochs
    if warmup_steps > 0 and step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def fgsm_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM examples for adversarial training, made with the model in eval mode (no dropout noise in
    the attack's gradient, as PGD-AT and TRADES; its mode is restored) and without touching the
    parameters' .grad. Before recipe 2 they were made in train mode, unlike the documented recipe."""
    x = x.detach().requires_grad_(True)
    with eval_mode(model):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train a model and write its run directory; returns the final meta dict.

    Under torchrun (`torchrun --nproc-per-node G -m robench train ...`) the G processes train one
    model with DistributedDataParallel: --batch-size stays the global batch, and rank 0 alone
    writes the run directory.

    Args:
        config: the run's settings.
        out_dir: the run directory. An existing run is refused unless `resume` (continue after
            its last finished epoch) or `force` (start over).
        resume: continue an existing run; starts fresh if `out_dir` holds no run yet.
        force: delete an existing run's files and start over.
        show_progress: draw a rich progress bar (rank 0 only).
    """
    from contextlib import nullcontext

    from .locking import exclusive

    config.validate()
    if resume and force:
        raise RobenchError("--resume and --force exclude each other")
    with distributed.session(config.device) as world:
        # One writer per run directory: a second process refuses rather than training over the first.
        with exclusive(out_dir) if world.is_main else nullcontext():
            return _train(config, Path(out_dir), world, resume=resume, force=force, show_progress=show_progress)


def _train(config: TrainConfig, out_dir: Path, world: distributed.World, *, resume: bool, force: bool,
           show_progress: bool) -> dict[str, Any]:  # fmt: skip
    """The training run on one rank: rank 0 checks and writes the run directory, every rank trains.

    Rank 0 reads a resumed checkpoint and hands it to the others, so all ranks start from the same
    weights even without a shared file system; per-epoch evaluation also runs on rank 0 (the others
    wait for its result, which also tells them if saving failed).
    """
    start_epoch, state, replacing = world.on_main(
        lambda: rundir.prepare_run_dir(config, out_dir, resume=resume, force=force)
    )
    if start_epoch >= config.epochs:  # a finished run resumed: nothing to load or train
        return state["meta"]
    torch.manual_seed(config.seed)
    model = xavier_init_(build_model(config.model, config.dataset, dropout=config.dropout))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.l2
    )
    if state is not None:
        checkpoint.load_state(model, state["weights"], source=str(out_dir))
        if state["optimizer"] is not None:
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
                raise RobenchError(f"optimizer state in {out_dir} does not fit the model "
                                   f"({str(exc).splitlines()[0][:120]}); use --force to start over") from None
    model.to(world.device)
    _move_optimizer_state(optimizer, world.device)
    data = world.agree(lambda: _load_data(config, world.device))
    meta = state["meta"] if state is not None else rundir.new_meta(config, model)
    meta["world_size"] = world.size
    meta["test_examples"] = len(data["test_y"])
    meta["norm_examples"] = min(config.norm_samples, len(data["test_y"]))
    configure_tf32(config.tf32)
    net = world.wrap(model)
    if config.compile:  # compiled on the first step; the eager `model` still evaluates and is saved
        net = torch.compile(net)
    with make_progress(disable=not (show_progress and world.is_main)) as progress:
        task = progress.add_task(
            for_console(f"train {config.model} [{config.defense}]"), total=config.epochs, completed=start_epoch,
            status="",
        )  # fmt: skip
        for epoch in range(start_epoch, config.epochs):
            try:
                sums, lr, started = _run_epoch(config, net, optimizer, data, epoch, world, progress, task)
            except Diverged as exc:
                raise RobenchError(diverged_message(config, exc, _kept(out_dir, epoch, replacing and epoch == start_epoch))) from None
            # An old run replaced by --force is removed only now, when its successor has an epoch to save.
            clear_old = replacing and epoch == start_epoch
            meta, row = world.on_main(
                lambda: _finish_epoch(out_dir, config, model, optimizer, data, meta, epoch, sums, lr, started,
                                      clear_old=clear_old)
            )  # fmt: skip
            progress.update(task, advance=1, status=_status(row))
    return meta


class Diverged(Exception):
    """Training met a non-finite loss (or weights): where, so the message can say so."""

    def __init__(self, epoch: int, step: int, steps: int, what: str):
        super().__init__(what)
        self.epoch, self.step, self.steps, self.what = epoch, step, steps, what


def _kept(out_dir: Path, epoch: int, replacing: bool) -> str:
    """What the run directory holds when epoch `epoch` (0-based) fails, for the message."""
    if replacing:
        return f"the run already in {out_dir} is as it was"
    if epoch > 0:
        return f"{out_dir} keeps epoch {epoch}, the last finite one"
    return f"nothing was saved to {out_dir}"


def diverged_message(config: TrainConfig, exc: Diverged, kept: str) -> str:
    """One line: where training diverged, the likely cause, and what the run directory still holds."""
    if config.lr > 1:
        cause = f"--lr {config.lr:g} is far too large (the paper's recipe: 0.1)"
    elif config.jr > 10:
        cause = f"--jr {config.jr:g} is far too large (the paper's: 0.01)"
    elif config.warmup_epochs == 0:
        cause = "too large a first step; try a smaller --lr or --warmup-epochs 1"
    else:
        cause = "too large a learning rate for this model; try a smaller --lr"
    return (f"training diverged: {exc.what} at epoch {exc.epoch + 1}, step {exc.step + 1} of {exc.steps}; "
            f"likely cause: {cause}; {kept}")


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for param_state in optimizer.state.values():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                param_state[key] = value.to(device)


def _load_data(config: TrainConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Whole datasets as uint8 tensors on the training device (4x smaller than float)."""
    train_x, train_y = load_dataset(config.dataset, "train", root=config.data_root, subset=config.train_subset)
    test_x, test_y = load_dataset(config.dataset, "test", root=config.data_root, subset=config.test_subset)
    return {
        "train_x": train_x.to(device), "train_y": train_y.to(device),
        "test_x": test_x.to(device), "test_y": test_y.to(device),
    }  # fmt: skip


def _run_epoch(config, net, optimizer, data, epoch, world, progress, task):
    """One pass over the training set; returns (totals over ranks, last lr, start time).

    Every rank walks the same permutation, seeded by (seed, epoch), and trains on its contiguous
    chunk of each global batch (tensor_split), so each step covers exactly a single process's batch;
    a batch with fewer examples than ranks is skipped by all ranks alike. Dropout masks and JR
    projections come from two generators seeded per (seed, epoch, rank) (`epoch_generators`); rank 0
    draws what a single process draws, and what robench.side_by_side draws for this run.
    Losses are summed on the device: no host sync per step, except for the progress bar's status.
    """

    device = data["train_x"].device
    started = time.perf_counter()
    n_train = len(data["train_x"])
    steps_per_epoch = -(-n_train // config.batch_size)
    order = epoch_order(config.seed, epoch, n_train)
    proj_gen, drop_gen = epoch_generators(config.seed, epoch, device, rank=world.rank)
    set_dropout_generator(getattr(net, "module", net), drop_gen)
    # torch.func's batched path would bypass DDP's gradient hooks: under torchrun, plain autograd.
    jr_method = "auto" if world.size == 1 else "autograd"
    jr_scale = jacobian_input_scale(config, getattr(net, "module", net))
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum of CE, sum of JR term, correct
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    count = 0
    for i, batch in enumerate(order.to(device).split(config.batch_size)):
        lr = learning_rate(config, epoch * steps_per_epoch + i, steps_per_epoch * config.epochs)
        if len(batch) < world.size:
            continue
        idx = batch.tensor_split(world.size)[world.rank]
        # DDP averages gradients over ranks; weighting by the chunk's share makes that the batch mean.
        weight = len(idx) * world.size / len(batch)
        ce, jr_term, loss = _train_step(config, net, optimizer, (jr_method, jr_scale), proj_gen, data, idx, lr,
                                        weight, sums)  # fmt: skip
        # Recorded on the device (no host sync per step), looked at every CHECK_EVERY steps.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
        count += len(idx)
        if (i + 1) % CHECK_EVERY == 0:
            _stop_if_diverged(first_bad, world, epoch, steps_per_epoch)
        if i % 20 == 0 and not progress.disable:
            progress.update(task, status=f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} ce {ce.item():.3f}"
                            + (f" jr {jr_term.item():.3f}" if jr_term is not None else ""))  # fmt: skip
    _stop_if_diverged(first_bad, world, epoch, steps_per_epoch)
    totals = world.sum(torch.cat([sums.cpu(), torch.tensor([float(count)], dtype=torch.float64)]))
    return totals.tolist(), lr, started


CHECK_EVERY = 25  # steps between looks at the divergence flag (one host sync each)
DROPOUT_STREAM = 1 << 52  # offset of the dropout generator's seed from the projections' (both < 2^63)


def epoch_order(seed: int, epoch: int, n_train: int) -> torch.Tensor:
    """The epoch's permutation of the training set (CPU generator seeded by (seed, epoch))."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def epoch_generators(seed: int, epoch: int, device: torch.device, *, rank: int = 0):
    """(projections, dropout) generators of one run's epoch on `device`: the JR directions and the
    PGD/TRADES starts come from the first, the dropout masks from the second (recipe 2; recipe 1
    drew masks from the global RNG, which a side-by-side step cannot reproduce per model)."""
    rank_seed = seed * 100_003 + epoch + rank * 1_000_000_007
    projections = torch.Generator(device=device).manual_seed(rank_seed)
    dropout = torch.Generator(device=device).manual_seed(rank_seed + DROPOUT_STREAM)
    return projections, dropout


def _stop_if_diverged(first_bad: torch.Tensor, world: distributed.World, epoch: int, steps: int) -> None:
    """Raise Diverged on every rank alike when any rank has seen a non-finite loss (a collective, so
    no rank stops while another waits for it in the next step's gradient all-reduce)."""
    mine = torch.zeros(world.size, dtype=torch.float64)
    mine[world.rank] = float(first_bad.item()) + 1  # 0: no bad step on this rank
    seen = [int(v) - 1 for v in world.sum(mine).tolist() if v > 0]
    if seen:
        raise Diverged(epoch, min(seen), steps, "the loss became non-finite (inf or NaN)")


def jacobian_input_scale(config: TrainConfig, model: nn.Module) -> torch.Tensor | None:
    """What the JR and IGR penalties multiply d / d pixel by: the model's input std for normalized
    units (the paper's), nothing for pixel units."""
    return unit_scale(model, config.jr_units) if config.jr > 0 or config.igr > 0 else None


def _adversarial_batch(config: TrainConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor | None:  # fmt: skip
    """The batch's training-time adversarial examples (FGSM, PGD or TRADES's), or None."""
    if config.adv_train == "fgsm":
        return fgsm_examples(model, x, y, config.adv_eps)
    if config.adv_train == "pgd":
        return pgd_examples(model, x, y, config.adv_eps, config.adv_steps, generator=generator)
    if config.adv_train == "trades":
        return trades_examples(model, x, config.adv_eps, config.adv_steps, generator=generator)
    return None


def _train_step(config, net, optimizer, jr, proj_gen, data, idx, lr, weight, sums):
    """One SGD step on the examples `idx`; adds their CE, JR term and correct count to `sums`.
    `jr` is (method, input scale) of the Jacobian penalty."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = to_unit_float(data["train_x"][idx]), data["train_y"][idx]
    # Training-time attacks run on the bare module: no gradient sync is wanted for them.
    x_adv = _adversarial_batch(config, getattr(net, "module", net), x, y, proj_gen)
    jr_term = igr_term = None
    if config.jr > 0:  # logits and the Jacobian of that very forward (same dropout mask)
        n_proj = None if config.exact else config.nproj
        logits, sq_norms = logits_and_frobenius_sq(net, x, n_proj=n_proj, generator=proj_gen, method=jr[0],
                                                   input_scale=jr[1])
        jr_term = 0.5 * sq_norms.mean()
    if config.igr > 0:  # double backpropagation, from its own forward when JR took the first
        igr_logits, grad_sq = input_gradient_sq(net, x, y, input_scale=jr[1])
        igr_term = grad_sq.mean()
        logits = igr_logits if jr_term is None else logits
    if jr_term is None and igr_term is None:
        logits = net(x)
    ce = F.cross_entropy(logits, y)
    if config.adv_train == "trades":
        loss = trades_loss(logits, net(x_adv), y, config.trades_beta)
    elif x_adv is not None:
        mix = config.adv_mix if config.adv_mix is not None else (0.5 if config.adv_train == "fgsm" else 0.0)
        loss = mix * ce + (1 - mix) * F.cross_entropy(net(x_adv), y) if mix > 0 else F.cross_entropy(net(x_adv), y)
    else:
        loss = ce
    if jr_term is not None:
        loss = loss + config.jr * jr_term
    if igr_term is not None:
        loss = loss + config.igr * igr_term
    if weight != 1.0:
        loss = loss * weight
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        sums[0] += ce.double() * len(idx)
        if jr_term is not None:
            sums[1] += jr_term.double() * len(idx)
        sums[2] += (logits.argmax(1) == y).sum()
    return ce, jr_term, loss


def _finish_epoch(out_dir, config, model, optimizer, data, meta, epoch, sums, lr, started, *, clear_old=False):
    """Rank 0 after an epoch: check the weights are finite, evaluate, write the checkpoint (first
    removing the run --force replaces, when `clear_old`); returns (meta, log row)."""
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        steps = -(-len(data["train_x"]) // config.batch_size)
        found = Diverged(epoch, steps - 1, steps, f"the weights became non-finite ({bad[0]})")
        raise RobenchError(diverged_message(config, found, _kept(out_dir, epoch, clear_old)))
    row = _epoch_row(config, model, data, epoch, sums, lr, started)
    if clear_old:
        rundir.clear_run(out_dir)
    rundir.save_epoch(out_dir, config, model, optimizer, meta, row)
    return meta, row


def _epoch_row(config, model, data, epoch, sums, lr, started) -> dict[str, Any]:
    """Evaluate after an epoch: test accuracy and the exact mean test ||J||_F in both units
    (`test_jacobian_norm` is the pixel-units one, kept under its old name; `jr_term` is in `jr_units`)."""
    ce_sum, jr_sum, correct, count = sums
    model.eval()
    norm_x = data["test_x"][: config.norm_samples]
    norms = {units: mean_jacobian_norm(model, norm_x, units=units) if len(norm_x) else float("nan")
             for units in ("pixel", "normalized")}  # fmt: skip
    return {
        "epoch": epoch + 1,
        "supervised_loss": ce_sum / count,
        "jr_term": jr_sum / count if config.jr > 0 else float("nan"),
        "train_accuracy": correct / count,
        "test_accuracy": clean_accuracy(model, data["test_x"], data["test_y"]),
        "test_jacobian_norm": norms["pixel"],
        "lr": lr,
        "seconds": time.perf_counter() - started,
        "jr_units": config.jr_units,
        "test_jacobian_norm_pixel": norms["pixel"],
        "test_jacobian_norm_normalized": norms["normalized"],
    }


def _status(row: dict[str, Any]) -> str:
    return (f"test acc {row['test_accuracy']:.4f}  ||J||_F {row['test_jacobian_norm_normalized']:.2f} normalized"
            f" / {row['test_jacobian_norm_pixel']:.2f} pixel")
