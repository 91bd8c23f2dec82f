"""One side-by-side group's training loop: set-up, epochs, deadline, divergence, checkpoints.

`GroupTrainer` builds the members' models (each from its own seed, or its saved weights) into one
`StackedNet` and runs the epochs with the stacked step of `side_by_side_step`. After each epoch it
evaluates every member (`stacked_eval`) into a log row; every `save_every` seconds and after the
last epoch it writes each member's ordinary run directory (`rundir.save_epoch`) with those rows. A
member that diverges, or that a deadline sheds, leaves the group with its result set; the others go on.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from . import checkpoint, rundir
from .data import to_unit_float
from .errors import RobenchError
from .side_by_side_groups import Job, program
from .side_by_side_step import GroupStep


class GroupTrainer(GroupStep):
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
