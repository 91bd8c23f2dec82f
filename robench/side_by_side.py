"""Train a group of models side by side on one device: `robench train-many`, and `reproduce mnist`.

A small model on a big GPU is bound by kernel launches: LeNet' at batch 100 keeps an H200 mostly
idle, so the paper's 40 runs (8 recipes x 5 seeds x 150,000 steps) trained one after another take
hours. Runs of one architecture and batch schedule instead train as one `StackedNet` (grouped
convolutions, batched matmuls; see robench/stacked.py for why not torch.func.vmap): one step of the
group costs about the launches of one model's step.

Each member is still its own run, drawing exactly what `robench train` draws for it alone:
- its Xavier initialization from torch.manual_seed(seed), its batch order from (seed, epoch);
- its JR projections and dropout masks from its own (seed, epoch) generators (`train.epoch_generators`,
  training recipe 2), drawn in the order a single run draws them; a member without JR or dropout
  draws nothing, so its streams are those of its single run;
- its own weight decay, dropout rate, JR weight and FGSM epsilon, as per-member numbers: a member
  without a defense gets a zero weight on that term, which adds exactly nothing to its gradient;
- FGSM examples made in eval mode, as `train.fgsm_examples`;
- its own SGD momentum buffer, with torch.optim.SGD's update.
So the weights equal those of the same run trained alone, up to float rounding (grouped vs plain
convolution kernels): tests/test_side_by_side.py states the tolerance. Each member writes its own
ordinary run directory (log.csv, meta.json, weights, optimizer state), resumable by either command.

Not side by side (trained one after another by `train.train`): PGD-AT, TRADES, IGR, exact JR,
torch.compile, and models with BatchNorm (resnet18). A member that diverges stops with the usual
one-line message and leaves the group; the others go on.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import checkpoint, rundir
from .data import to_unit_float
from .errors import RobenchError
from .settings import TrainConfig

# Settings every member of a group must share (the rest, the defenses and the seed, may differ).
SHARED = ("model", "dataset", "epochs", "batch_size", "lr", "momentum", "schedule", "warmup_epochs",
          "train_subset", "test_subset", "norm_samples", "device", "data_root", "jr_units", "nproj", "tf32")  # fmt: skip


def why_alone(config: TrainConfig) -> str | None:
    """None when the run can train side by side; else why it trains alone (for the log)."""
    if config.adv_train in ("pgd", "trades"):
        return f"{config.adv_train} adversarial training"
    if config.igr > 0:
        return "input-gradient regularization"
    if config.exact:
        return "exact JR"
    if config.compile:
        return "--compile"
    from .models import build_model
    from .stacked import stackable

    return stackable(build_model(config.model, config.dataset, dropout=config.dropout))


def program(config: TrainConfig) -> tuple[bool, bool]:
    """(JR, FGSM training): the terms a group's step computes for every member."""
    return config.jr > 0, config.adv_train == "fgsm"


@dataclass
class Job:
    """One run: its settings, directory and (once prepared) state."""

    config: TrainConfig
    out_dir: Path
    start: int = 0
    state: dict | None = None
    replacing: bool = False
    result: Any = None  # meta dict when done, RobenchError when it failed, "shed" when dropped
    pending: list = field(default_factory=list)


def plan_groups(jobs: list[Job], *, split_programs: bool = True, group_size: int | None = None) -> list[list[Job]]:
    """Groups in first-seen order: same SHARED settings and start epoch (and, with split_programs,
    the same program, so a plain model does not pay for a JR member's double backward)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (tuple(getattr(job.config, k) for k in SHARED), job.start, program(job.config) if split_programs else ())
        groups.setdefault(key, []).append(job)
    planned = []
    for members in groups.values():
        size = group_size or len(members)
        planned += [members[i : i + size] for i in range(0, len(members), size)]
    return planned


def train_many(
    runs: list[tuple[TrainConfig, str | Path]],
    *,
    show_progress: bool = True,
    split_programs: bool = True,
    group_size: int | None = None,
    save_every: float = 0.0,
    deadline: float | None = None,
    on_group_done: Callable[[list[Job], float], None] | None = None,
    stack: bool | None = None,
) -> list[Job]:
    """Train every run, side by side where possible; returns the jobs with their results.

    Finished runs are skipped; unfinished ones resume (runs are always resumed, as `reproduce`
    does). A run that fails (bad directory, divergence) has a RobenchError as its result; the
    others are trained regardless.

    Args:
        runs: (settings, run directory) pairs, in priority order.
        split_programs: group JR, FGSM-trained and plain runs apart (fastest); False puts every
            compatible run in one group (used by the equality test).
        group_size: at most this many members per group (None: no limit).
        save_every: seconds between checkpoints (0: every epoch). Log rows are kept for every epoch
            and written with the next checkpoint; an interrupted run resumes from its last one.
        deadline: time.monotonic() by which training must stop: when the projected finish of a
            group passes it, its last members are shed (saved where they are, resumable) so that
            the first ones finish; a group that cannot finish stops at an epoch boundary.
        on_group_done: called with (jobs, wall seconds) after each group.
        stack: train side by side (True), one after another (False), or side by side on CUDA only
            (None): on a CPU the stacked step is slower than one model at a time (grouped
            convolutions in oneDNN; docs/PERFORMANCE.md), so `reproduce --quick` there trains alone.
    """
    from .locking import exclusive
    from .train import train

    jobs = [Job(config.validate(), Path(out)) for config, out in runs]
    if stack is None:
        from .devices import resolve_device

        stack = resolve_device(jobs[0].config.device).type == "cuda" if jobs else False
    alone = [job for job in jobs if not stack or why_alone(job.config) is not None]
    for job in alone:  # train.train locks and prepares its own directory
        started = time.perf_counter()
        try:
            job.result = train(job.config, job.out_dir, resume=True, show_progress=show_progress)
        except RobenchError as exc:
            job.result = exc
        if on_group_done is not None:
            on_group_done([job], time.perf_counter() - started)
    with contextlib.ExitStack() as locks:
        todo = []
        for job in jobs:
            if job in alone:
                continue
            try:
                locks.enter_context(exclusive(job.out_dir))
                job.start, job.state, job.replacing = rundir.prepare_run_dir(job.config, job.out_dir, resume=True,
                                                                             force=False)  # fmt: skip
            except RobenchError as exc:
                job.result = exc
                continue
            if job.start >= job.config.epochs:
                job.result = job.state["meta"]
            else:
                todo.append(job)
        for group in plan_groups(todo, split_programs=split_programs, group_size=group_size):
            started = time.perf_counter()
            GroupTrainer(group, show_progress=show_progress, save_every=save_every, deadline=deadline).run()
            if on_group_done is not None:
                on_group_done(group, time.perf_counter() - started)
    return jobs


class GroupTrainer:
    """One group's training loop: stacked step, per-member evaluation and checkpoints."""

    def __init__(self, jobs: list[Job], *, show_progress: bool, save_every: float, deadline: float | None):
        from .devices import configure_tf32, resolve_device

        self.jobs, self.show_progress, self.save_every, self.deadline = jobs, show_progress, save_every, deadline
        self.config = jobs[0].config
        self.device = resolve_device(self.config.device)
        configure_tf32(self.config.tf32)
        self.has_jr = any(program(j.config)[0] for j in jobs)
        self.has_adv = any(program(j.config)[1] for j in jobs)

    # ---- set-up -------------------------------------------------------------------------------
    def _models(self):
        from .models import build_model, xavier_init_

        models = []
        for job in self.jobs:
            torch.manual_seed(job.config.seed)  # the initialization train.train draws
            model = xavier_init_(build_model(job.config.model, job.config.dataset, dropout=job.config.dropout))
            if job.state is not None:
                checkpoint.load_state(model, job.state["weights"], source=str(job.out_dir))
            models.append(model)
        return models

    def _momentum(self, models) -> list[torch.Tensor]:
        """Stacked momentum buffers from the members' saved optimizer states (zeros where none:
        torch's SGD starts its buffer at the first gradient, which a zero buffer gives exactly)."""
        bufs = [torch.zeros_like(p) for p in self.stack.params]
        for k, job in enumerate(self.jobs):
            saved = (job.state or {}).get("optimizer")
            if not saved:
                continue
            for i, (key, _) in enumerate(self.stack.keys):
                entry = saved["state"].get(i, {})
                buf = entry.get("momentum_buffer")
                if buf is not None:
                    self.stack.member_view(bufs[i], i, k).copy_(buf.to(bufs[i].device))
        return bufs

    def _coefficients(self) -> None:
        """Per-member numbers of the step: weight decay, JR weight, clean share, FGSM eps, dropout."""
        configs = [j.config for j in self.jobs]
        dev = self.device
        self.weight_decay = [self.stack.per_member([c.l2 for c in configs], i) for i in range(len(self.stack.params))]
        self.jr = torch.tensor([c.jr for c in configs], device=dev)
        self.mix = torch.tensor([(0.5 if c.adv_mix is None else c.adv_mix) if program(c)[1] else 1.0 for c in configs],
                                device=dev)  # fmt: skip
        self.adv_eps = torch.tensor([c.adv_eps if program(c)[1] else 0.0 for c in configs], device=dev)
        self.p = [c.dropout for c in configs]

    def _load(self):
        from .train import _load_data

        return _load_data(self.config, self.device)

    # ---- the loop -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Build the stack, momentum, coefficients, data and metas (benchmarks call this, then _step)."""
        from .jacobian import unit_scale
        from .models import build_model
        from .stacked import StackedNet, dropout_shapes

        models = self._models()
        self.models = models
        self.stack = StackedNet(models, self.device)
        self.bufs = self._momentum(models)
        self._coefficients()
        self.data = self._load()
        template = build_model(self.config.model, self.config.dataset, dropout=0.5)
        self.shapes = dropout_shapes(template, to_unit_float(self.data["train_x"][:1]).cpu())
        self.scale = unit_scale(template, self.config.jr_units) if self.has_jr else None
        if self.scale is not None:
            self.scale = self.scale.to(self.device)
        self.std = unit_scale(template, "normalized").to(self.device)
        self.metas = [j.state["meta"] if j.state is not None else rundir.new_meta(j.config, m)
                      for j, m in zip(self.jobs, models)]  # fmt: skip
        for meta in self.metas:
            meta.update(world_size=1, test_examples=len(self.data["test_y"]),
                        norm_examples=min(self.config.norm_samples, len(self.data["test_y"])),
                        device_name=_device_name(self.device))  # fmt: skip
        self.optimizers = [torch.optim.SGD(m.parameters(), lr=j.config.lr, momentum=j.config.momentum,
                                           weight_decay=j.config.l2) for j, m in zip(self.jobs, models)]  # fmt: skip
    def run(self) -> None:
        from .progress import make_progress
        from .untrusted import for_console

        self.prepare()
        start, epochs = self.jobs[0].start, self.config.epochs
        last_save = time.monotonic()
        label = f"train-many {self.config.model} x{len(self.jobs)} [{', '.join(sorted({j.config.defense for j in self.jobs}))}]"
        with make_progress(disable=not self.show_progress) as progress:
            task = progress.add_task(for_console(label), total=epochs, completed=start, status="")
            epoch_times = []
            for epoch in range(start, epochs):
                began = time.monotonic()
                sums, lr = self._epoch(epoch)
                if not self.jobs:  # every member diverged in this epoch: nothing left to evaluate or save
                    return
                rows = self._rows(epoch, sums, lr)
                for row in rows:  # each member's share of the group's epoch, evaluation included (as train's)
                    row["seconds"] = (time.monotonic() - began) / len(rows)
                for job, row in zip(self.jobs, rows):
                    job.pending.append(row)
                epoch_times.append(time.monotonic() - began)
                last = epoch == epochs - 1
                if last or self.save_every <= 0 or time.monotonic() - last_save >= self.save_every:
                    self._save_all(lr)
                    last_save = time.monotonic()
                progress.update(task, advance=1, status=f"{len(self.jobs)} models, mean test acc "
                                f"{sum(r['test_accuracy'] for r in rows) / max(1, len(rows)):.4f}")  # fmt: skip
                if not self.jobs:
                    return
                if not last and self._over_deadline(epoch_times, epochs - epoch - 1, lr):
                    return
        for job, meta in zip(self.jobs, self.metas):
            job.result = meta

    def _over_deadline(self, epoch_times: list[float], remaining: int, lr: float) -> bool:
        """Shed the last members when the group would overrun the deadline; True: stop now."""
        if self.deadline is None:
            return False
        per_epoch = sum(epoch_times[-3:]) / len(epoch_times[-3:])
        left = self.deadline - time.monotonic()
        if per_epoch * remaining <= left:
            return False
        if len(epoch_times) < 3 and left > per_epoch * 1.2:  # the first epochs carry warm-up: do not shed on them
            return False
        keep = max(1, math.floor(len(self.jobs) * left / (per_epoch * remaining)))
        if keep < len(self.jobs) and per_epoch * remaining * keep / len(self.jobs) <= left * 1.5:
            self._save_all(lr)
            for job in self.jobs[keep:]:
                job.result = "shed"
            self._keep(list(range(keep)))
            return False
        if left < per_epoch * 1.2:  # cannot even finish the next epoch: stop here, resumable
            self._save_all(lr)
            for job in self.jobs:
                job.result = "stopped"
            return True
        return False

    def _epoch(self, epoch: int):
        from .models import dropout_mask
        from .train import CHECK_EVERY, epoch_generators, epoch_order, learning_rate

        config, dev = self.config, self.device
        n_train = len(self.data["train_x"])
        steps = -(-n_train // config.batch_size)
        orders: dict[int, torch.Tensor] = {}
        for job in self.jobs:
            if job.config.seed not in orders:
                orders[job.config.seed] = epoch_order(job.config.seed, epoch, n_train)
        order = torch.stack([orders[j.config.seed] for j in self.jobs]).to(dev)
        self.gens = [epoch_generators(j.config.seed, epoch, dev) for j in self.jobs]
        sums = torch.zeros(len(self.jobs), 3, dtype=torch.float64, device=dev)
        first_bad = torch.full((len(self.jobs),), -1, dtype=torch.long, device=dev)
        lr = config.lr
        for i in range(steps):
            idx = order[:, i * config.batch_size : (i + 1) * config.batch_size]
            lr = learning_rate(config, epoch * steps + i, steps * config.epochs)
            loss = self._step(idx, lr, sums, dropout_mask)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), i, first_bad)
            if (i + 1) % CHECK_EVERY == 0 or i == steps - 1:
                bad = [k for k, v in enumerate(first_bad.tolist()) if v >= 0]
                if bad:
                    self._diverged(bad, first_bad.tolist(), epoch, steps)
                    keep = [k for k in range(len(first_bad)) if k not in bad]
                    sums, first_bad = sums[keep], first_bad[keep]
                    order = order[keep]
                    if not self.jobs:
                        break
        return sums, lr

    def _masks(self, batch: int, draw: list[bool], dropout_mask) -> dict[int, torch.Tensor] | None:
        """Scaled dropout masks (K, B, features) per dropout layer; members that do not draw get ones."""
        if not any(p > 0 for p in self.p):
            return None
        masks = {}
        for layer, shape in self.shapes.items():
            parts = [dropout_mask((batch, *shape), p, gens[1], self.device) if p > 0 and d
                     else torch.ones((batch, *shape), device=self.device)
                     for p, d, gens in zip(self.p, draw, self.gens)]  # fmt: skip
            masks[layer] = torch.stack(parts)
        return masks

    def _step(self, idx: torch.Tensor, lr: float, sums: torch.Tensor, dropout_mask) -> torch.Tensor:
        """One SGD step of every member on its own batch `idx` (K x B); returns the members' losses."""
        x = to_unit_float(self.data["train_x"][idx])
        y = self.data["train_y"][idx]
        k, batch = y.shape
        adv = [program(j.config)[1] for j in self.jobs]
        x_adv = self._fgsm(x, y) if self.has_adv else None
        masks = self._masks(batch, [True] * k, dropout_mask)
        if self.has_jr:
            x = x.detach().requires_grad_(True)
        logits = self.stack(x, masks)
        jr_term = None
        if self.has_jr:
            jr_term = self._jr_term(x, logits)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, batch).mean(1)
        loss = ce
        if x_adv is not None:
            adv_logits = self.stack(x_adv, self._masks(batch, adv, dropout_mask))
            adv_ce = F.cross_entropy(adv_logits.flatten(0, 1), y.flatten(), reduction="none").view(k, batch).mean(1)
            loss = self.mix * ce + (1 - self.mix) * adv_ce
        if jr_term is not None:
            loss = loss + self.jr * jr_term
        grads = torch.autograd.grad(loss.sum(), self.stack.params)
        self._sgd(grads, lr)
        with torch.no_grad():
            sums[:, 0] += ce.double() * batch
            if jr_term is not None:
                sums[:, 1] += jr_term.double() * batch
            sums[:, 2] += (logits.argmax(2) == y).sum(1)
        return loss

    def _fgsm(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every member's FGSM examples at its own eps (0 for members without FGSM training), in eval mode."""
        x = x.detach().requires_grad_(True)
        k, batch = y.shape
        logits = self.stack(x, None)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, batch).mean(1)
        (grad,) = torch.autograd.grad(ce.sum(), x)
        eps = self.adv_eps.view(-1, *([1] * (x.dim() - 1)))
        return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()

    def _jr_term(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(1/2) mean_i ||J(x_i)||_F^2 per member, from each JR member's own projections (members
        without JR get zero directions and a zero term), as `jacobian.frobenius_sq` computes it."""
        k, batch, classes = logits.shape
        n_proj = self.config.nproj
        directions = []
        for job, gens in zip(self.jobs, self.gens):
            if job.config.jr > 0:
                v = torch.randn(n_proj, batch, classes, device=self.device, dtype=logits.dtype, generator=gens[0])
                directions.append(v / v.norm(dim=2, keepdim=True))
            else:
                directions.append(torch.zeros(n_proj, batch, classes, device=self.device, dtype=logits.dtype))
        v = torch.stack(directions, dim=1)  # n_proj x K x B x C
        total = logits.new_zeros(k, batch)
        for j in range(n_proj):
            (grad,) = torch.autograd.grad(logits, x, grad_outputs=v[j], create_graph=True, retain_graph=True)
            if self.scale is not None:
                grad = grad * self.scale
            total = total + grad.pow(2).reshape(k, batch, -1).sum(dim=2)
        return 0.5 * ((classes / n_proj) * total).mean(dim=1)

    def _sgd(self, grads, lr: float) -> None:
        """torch.optim.SGD's update (momentum, no dampening), each member with its own weight decay."""
        momentum = self.config.momentum
        with torch.no_grad():
            d = [g + wd * p for g, wd, p in zip(grads, self.weight_decay, self.stack.params)]
            if momentum != 0:
                torch._foreach_mul_(self.bufs, momentum)
                torch._foreach_add_(self.bufs, d)
                d = self.bufs
            torch._foreach_add_(self.stack.params, d, alpha=-lr)

    # ---- divergence, shedding -----------------------------------------------------------------
    def _diverged(self, bad: list[int], first: list[int], epoch: int, steps: int) -> None:
        from .train import Diverged, _kept, diverged_message

        for k in bad:
            job = self.jobs[k]
            saved = epoch if not job.pending else epoch - len(job.pending)
            found = Diverged(epoch, first[k], steps, "the loss became non-finite (inf or NaN)")
            job.result = RobenchError(diverged_message(job.config, found, _kept(job.out_dir, saved, job.replacing)))
        self._keep([k for k in range(len(self.jobs)) if k not in bad])

    def _keep(self, members: list[int]) -> None:
        """Continue with these members only (the others' results are already set)."""
        self.bufs = [self.stack.members_of(b, i, members) for i, b in enumerate(self.bufs)]
        self.stack.select(members)
        for name in ("jobs", "models", "metas", "optimizers", "p", "gens"):
            values = getattr(self, name)
            setattr(self, name, [values[m] for m in members])
        self.jr, self.mix, self.adv_eps = self.jr[members], self.mix[members], self.adv_eps[members]
        configs = [j.config for j in self.jobs]
        self.weight_decay = [self.stack.per_member([c.l2 for c in configs], i) for i in range(len(self.stack.params))]

    # ---- evaluation and checkpoints -----------------------------------------------------------
    def _rows(self, epoch: int, sums: torch.Tensor, lr: float) -> list[dict[str, Any]]:
        """Each member's log row (train._epoch_row's columns; `seconds` is its share of the group's epoch)."""
        from .stacked_eval import accuracy_and_norms

        n_train = len(self.data["train_x"])
        norm_n = min(self.config.norm_samples, len(self.data["test_y"]))
        accuracy, pixel, normalized = accuracy_and_norms(self.stack, self.data, norm_n, self.std)
        totals = sums.cpu().tolist()
        rows = []
        for k, job in enumerate(self.jobs):
            ce_sum, jr_sum, correct = totals[k]
            rows.append({
                "epoch": epoch + 1, "supervised_loss": ce_sum / n_train,
                "jr_term": jr_sum / n_train if job.config.jr > 0 else float("nan"),
                "train_accuracy": correct / n_train, "test_accuracy": accuracy[k],
                "test_jacobian_norm": pixel[k], "lr": lr, "seconds": float("nan"),
                "jr_units": job.config.jr_units, "test_jacobian_norm_pixel": pixel[k],
                "test_jacobian_norm_normalized": normalized[k],
            })  # fmt: skip
        return rows

    def _save_all(self, lr: float) -> None:
        """Write every member's run directory (weights, optimizer, pending log rows, meta last)."""
        from .schemas import check_finite_weights

        for k, (job, model, optimizer, meta) in enumerate(zip(self.jobs, self.models, self.optimizers, self.metas)):
            if not job.pending:
                continue
            state = self.stack.member_state(k)
            try:
                check_finite_weights(state, str(job.out_dir))
            except RobenchError:
                from .train import Diverged, _kept, diverged_message

                steps = -(-len(self.data["train_x"]) // job.config.batch_size)
                found = Diverged(job.pending[-1]["epoch"] - 1, steps - 1, steps, "the weights became non-finite")
                saved = job.pending[0]["epoch"] - 1
                job.result = RobenchError(diverged_message(job.config, found, _kept(job.out_dir, saved, job.replacing)))
                job.pending = []
                continue
            model.load_state_dict({**model.state_dict(), **{n: t.cpu() for n, t in state.items()}})
            for group in optimizer.param_groups:
                group["lr"] = lr
            for i, param in enumerate(model.parameters()):
                optimizer.state[param]["momentum_buffer"] = self.stack.member_view(self.bufs[i], i, k).detach().cpu().clone()
            meta["side_by_side"] = {"group_size": self.stack.k, "device": _device_name(self.device)}
            if job.replacing:
                rundir.clear_run(job.out_dir)
                job.replacing = False
            rundir.save_epoch(job.out_dir, job.config, model, optimizer, meta, job.pending[-1], pending=job.pending[:-1])
            job.pending = []
        failed = [k for k, job in enumerate(self.jobs) if isinstance(job.result, RobenchError)]
        if failed:
            self._keep([k for k in range(len(self.jobs)) if k not in failed])


def _device_name(device: torch.device) -> str:
    """'NVIDIA H200' / 'cpu': what every figure of a run names."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
