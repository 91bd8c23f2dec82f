"""The settings of every command, as frozen dataclasses: TrainConfig, EvalConfig, CellsConfig.

They live apart from the code that runs them, and import no torch, pandas or foolbox, so the CLI can
build its options and defaults (and answer `robench --help`) at once. Each `validate()` imports what
it checks against (model registry, dataset table) when it runs, i.e. when a command starts.
`robench.train.TrainConfig`, `robench.evaluate.EvalConfig` and `robench.cells.CellsConfig` stay the
public names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import RobenchError

REPORT_FORMATS = ("md", "html")

ADV_TRAIN_METHODS = ("fgsm", "pgd", "trades")
# What a run's random streams and training-time attacks are, recorded as meta.json's "recipe" (absent: 1).
# 1: dropout masks from the global RNG, FGSM training examples made in train mode (dropout on).
# 2: dropout masks from a per-(seed, epoch) generator, so a run trained side by side with others
#    (robench.side_by_side) draws what it draws alone; FGSM examples made in eval mode, as documented.
TRAIN_RECIPE = 2
JR_UNITS = ("normalized", "pixel")
SCHEDULES = ("quench", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that defines a training run; stored in meta.json and shown by --help.

    Defaults follow PAPER.md's recipe (SGD, momentum 0.9, batch 100, lr 0.1 quenched by 10 at 1/3
    and 2/3 of training, Xavier init) except the number of epochs (the paper's 250 is for GPUs).
    `l2` is SGD weight decay: it adds l2 * w to the gradient, i.e. (l2 / 2) * ||w||^2 to the loss.
    `adv_train="fgsm"` trains on 0.5 * CE(clean) + 0.5 * CE(FGSM at adv_eps) (Goodfellow et al.).
    `adv_train="pgd"` is Madry et al.'s adversarial training: PGD-`adv_steps` from a uniform random
    start in the eps-ball, step 2.5 * adv_eps / adv_steps, projected onto the ball and the [0, 1] box;
    it trains on the adversarial batch alone (`adv_mix`, the clean share of the loss, defaults to 0;
    for FGSM to 0.5). `adv_train="trades"` is Zhang et al.'s TRADES: CE(f(x), y) + trades_beta *
    KL(f(x) || f(x_adv)), x_adv maximizing the KL by `adv_steps` steps of 2.5 * adv_eps / adv_steps
    from x + 0.001 * N(0, 1), as the authors' code does. Adversarial examples are made with the model
    in eval mode (no dropout noise in the attack's gradient) and without touching parameter gradients.
    `igr` is input-gradient regularization (double backpropagation): igr * mean_i ||d CE_i / d x_i||^2,
    in `jr_units` like JR.
    `jr_units` says which Jacobian `jr` penalizes: "normalized" (the paper's: d logits / d normalized
    input, so `jr=0.01` is the paper's lambda_JR) or "pixel" (d logits / d pixel in [0, 1]; on MNIST
    the same penalty as normalized units with jr / 0.3081^2). A run saved without it was pixel.
    `warmup_epochs` ramps the learning rate linearly from lr / steps to lr over that many epochs (0:
    none, the paper's recipe); short runs need it (see `learning_rate`).
    `compile` (torch.compile, for launch-bound small batches on a GPU) and `tf32` (TF32 on CUDA) change
    speed, not the recipe, so a run may be resumed with other values of them.
    """

    model: str = "lenet"
    dataset: str = "mnist"
    jr: float = 0.0
    jr_units: str = "normalized"
    nproj: int = 1
    exact: bool = False
    l2: float = 0.0
    dropout: float = 0.0
    adv_train: str | None = None
    adv_eps: float = 0.0
    adv_steps: int = 10
    adv_mix: float | None = None
    trades_beta: float = 6.0
    igr: float = 0.0
    epochs: int = 10
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    schedule: str = "quench"
    warmup_epochs: float = 0.0
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    norm_samples: int = 1000
    device: str = "auto"
    data_root: str | None = None
    compile: bool = False
    tf32: bool = True

    def validate(self) -> "TrainConfig":
        """Raise RobenchError on values no run could use; return self for chaining.

        Every number is checked for range and finiteness (`--lr inf` would train a model of NaNs),
        the model and dataset names against their registries, and the data root for being a folder,
        so a run (and a --force that would replace one) fails before it touches anything.
        """
        from .data import dataset_info
        from .limits import check_count, check_finite, check_seed
        from .models import MODELS

        check_finite("--jr", self.jr, low=0)
        check_finite("--l2", self.l2, low=0)
        check_finite("--dropout", self.dropout)
        check_finite("--lr", self.lr, low=0, low_open=True)
        check_finite("--momentum", self.momentum)
        check_finite("--adv-eps", self.adv_eps, low=0, high=1)
        check_finite("--warmup-epochs", self.warmup_epochs, low=0)
        check_finite("--igr", self.igr, low=0)
        check_finite("--trades-beta", self.trades_beta, low=0)
        check_count("--adv-steps", self.adv_steps, allow_none=False)
        if self.adv_mix is not None:
            check_finite("--adv-mix", self.adv_mix, low=0, high=1)
        check_seed("--seed", self.seed)
        check_count("--nproj", self.nproj, allow_none=False)
        check_count("--epochs", self.epochs, allow_none=False)
        check_count("--batch-size", self.batch_size, allow_none=False)
        check_count("--train-subset", self.train_subset)
        check_count("--test-subset", self.test_subset)
        check_count("--norm-samples", self.norm_samples, allow_none=False, minimum=0)
        checks = [
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}"),
            (self.jr_units in JR_UNITS, f"--jr-units must be one of {', '.join(JR_UNITS)}, got {self.jr_units!r}"),
            (self.warmup_epochs <= self.epochs, f"--warmup-epochs must be in [0, --epochs], got {self.warmup_epochs}"),
            (self.adv_train in (None, *ADV_TRAIN_METHODS), f"--adv-train must be one of {ADV_TRAIN_METHODS}"),
            (self.adv_train is None or self.adv_eps > 0, "--adv-train needs --adv-eps > 0"),
            (isinstance(self.model, str) and self.model in MODELS,
             f"unknown model {self.model!r}; choose from {', '.join(MODELS)}"),
            (not (self.compile and (self.jr > 0 or self.igr > 0)), "--compile cannot be combined with --jr or --igr: "
             "torch.compile does not support the double backward these penalties need (aot_autograd); drop --compile"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise RobenchError(message)
        dataset_info(self.dataset)
        if self.data_root and Path(self.data_root).exists() and not Path(self.data_root).is_dir():
            raise RobenchError(f"--data-root {self.data_root} is not a directory")
        return self

    @property
    def defense(self) -> str:
        """A readable summary of the defenses, e.g. 'jr=0.01+l2=0.0005', or 'none'."""
        parts = []
        if self.adv_train == "pgd":
            parts.append(f"pgd-at@{self.adv_eps:g}" + (f"(k={self.adv_steps})" if self.adv_steps != 10 else ""))
        elif self.adv_train == "trades":
            parts.append(f"trades({self.trades_beta:g})@{self.adv_eps:g}")
        elif self.adv_train:
            parts.append(f"adv={self.adv_train}@{self.adv_eps:g}")
        if self.igr > 0:
            parts.append(f"igr={self.igr:g}" + ("(pixel)" if self.jr_units == "pixel" else ""))
        if self.jr > 0:  # normalized units are the paper's lambda and need no mark
            parts.append(f"jr={self.jr:g}" + ("(pixel)" if self.jr_units == "pixel" else "")
                         + ("(exact)" if self.exact else ""))
        if self.l2 > 0:
            parts.append(f"l2={self.l2:g}")
        if self.dropout > 0:
            parts.append(f"dropout={self.dropout:g}")
        return "+".join(parts) or "none"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; defaults shown by `robench eval --help`.

    Args:
        attacks: comma-separated attack or suite names; "default" (noise, FGSM, PGD, CW and the
            AutoAttack suite) or "all" (every attack and suite).
        eps: epsilon grid overriding each attack's default grid for the dataset.
        n: evaluate the first n test images (None: the whole test set).
        batch_size: images per attack call for attacks that treat examples independently (FGSM,
            PGD, noise); it changes speed and memory only, never a number. Attacks that couple a
            call's examples (CW) always run on fixed chunks of CHUNK (100) images.
        device: auto, cpu, cuda or cuda:N.
        seed: seeds random starts and noise draws (with each example's index).
        data_root: dataset directory (CIFAR-10, or an ImageNet-style root holding val/).
        tf32: allow TF32 matmuls and convolutions on CUDA (robench's default; off for full fp32).
        jacobian_n: images of the exact ||J||_F rows (C backward passes per image): None, all n;
            0 skips them; k takes the first k (the rows then say n=k).
        eot: gradient samples averaged per attack step (Expectation over Transformation). None: 20 when
            the model's randomness check fires (AutoAttack's `rand`), else 1. On a randomized model every
            re-check is the majority of max(eot, 20) forward passes.
        surrogate: a run directory, or ARCH:WEIGHTS, whose gradients the gradient attacks follow (a
            transfer attack); adversarials are re-checked on the evaluated model.
    """

    attacks: str = "default"
    eps: tuple[float, ...] | None = None
    n: int | None = None
    batch_size: int = 500
    device: str = "auto"
    seed: int = 0
    data_root: str | None = None
    tf32: bool = True
    jacobian_n: int | None = None
    eot: int | None = None
    surrogate: str | None = None

    def validate(self) -> "EvalConfig":
        if self.n is not None and self.n < 1:
            raise RobenchError(f"--n must be >= 1, got {self.n}")
        if self.jacobian_n is not None and (isinstance(self.jacobian_n, bool) or self.jacobian_n < 0):
            raise RobenchError(f"--jacobian-n must be >= 0 (0 skips the ||J|| rows), got {self.jacobian_n}")
        if self.batch_size < 1:
            raise RobenchError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.eot is not None and (isinstance(self.eot, bool) or not 1 <= self.eot <= 1000):
            raise RobenchError(f"--eot must be between 1 and 1000 gradient samples, got {self.eot}")
        from .limits import check_seed

        check_seed("--seed", self.seed)
        if self.eps is not None and not all(0 <= e < float("inf") for e in self.eps):
            raise RobenchError(f"--eps needs finite epsilons >= 0, got {', '.join(map(str, self.eps))}")
        return self


PLANES = ("random", "adversarial")


@dataclass(frozen=True)
class CellsConfig:
    """Which cross-section to draw; defaults shown by `robench cells --help`.

    Args:
        index: test image index in the models' dataset.
        plane: "random" (two seeded Gaussian directions, orthonormalized) or "adversarial" (the
            first model's FGSM sign-gradient direction plus a random direction orthogonal to it).
        span: the grid covers [-span, span] along each direction, in L2 units of pixels in [0, 1].
            20 (about twice the L2 norm of an MNIST digit, the top of the noise grid): small MLPs
            on MNIST meet a boundary at roughly 10-20 along random directions and at 1-5 along
            FGSM's, so both planes show whole cells.
        resolution: points per side; odd, so the image itself is the centre grid point.
        seed: seeds the random direction(s).
    """

    index: int = 0
    plane: str = "random"
    span: float = 20.0
    resolution: int = 101
    seed: int = 0

    def validate(self) -> "CellsConfig":
        """Raise RobenchError on values no plot could use; return self for chaining."""
        from .limits import check_seed

        if self.index < 0:
            raise RobenchError(f"--index must be >= 0, got {self.index}")
        check_seed("--seed", self.seed)
        if self.plane not in PLANES:
            raise RobenchError(f"--plane must be one of {', '.join(PLANES)}, got {self.plane!r}")
        if not (math.isfinite(self.span) and self.span > 0):
            raise RobenchError(f"--span must be a positive number, got {self.span}")
        if self.resolution < 3 or self.resolution % 2 == 0 or self.resolution > 2001:
            raise RobenchError(
                f"--resolution must be odd, between 3 and 2001 (the image is the centre point), got {self.resolution}"
            )
        return self
