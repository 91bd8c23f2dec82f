"""One SGD step of every member of a side-by-side group at once, on its own batch.

Each member's loss is that of `robench train` alone (`train._train_step`): cross-entropy, mixed
with the FGSM examples' cross-entropy at its own clean share, plus its own JR weight times the
random-projection estimate of (1/2) mean ||J||_F^2, and its own weight decay in torch.optim.SGD's
update. A member without a defense gets a zero weight on that term; the randomness (dropout masks,
JR projections) comes from each member's own generators, in the order a single run draws it.
`side_by_side_trainer.GroupTrainer` holds the state this step reads (see `GroupStep`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import to_unit_float
from .side_by_side_groups import program


class GroupStep:
    """The stacked step, as methods of `GroupTrainer` (benchmarks time `_step` alone).

    Reads what GroupTrainer sets up: jobs, config, device, stack (StackedNet), bufs (momentum),
    data, shapes (dropout layers), scale (JR units), has_jr, has_adv, and gens (each member's
    (JR, dropout) generators of the epoch); `_coefficients` sets the per-member numbers.
    """

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
