"""One JR training epoch on MNIST: the reference example's pipeline vs robench's `train`.

The reference path is the facebookresearch/jacobian_regularizer MNIST example written out: a
per-sample Dataset that makes a PIL image, `ToTensor`, `Normalize`, a shuffling DataLoader
(1 worker, pinned memory on CUDA, as the example sets them), and the paper's Algorithm 1 in plain
autograd. robench's path is `robench.train.train` itself (data held on the device as uint8,
batches drawn by index from a seeded permutation); its epoch time is the one its log.csv records.
Both train LeNet' with lambda_JR = 0.01, n_proj = 1, batch 64, on the same images; rounds alternate
the two so machine noise hits them alike, and the figure per path is the fastest round. Run:

    .venv/bin/python benchmarks/bench_epoch.py [--device cpu] [--train-subset 10000] [--rounds 2] [--write]

On a CPU, pass --train-subset to keep it short; the table also scales the time to 60,000 images.
`--write` puts the table into docs/PERFORMANCE.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import device_label, sync, write_section  # noqa: E402
from robench.data import DATASETS, load_dataset  # noqa: E402
from robench.devices import resolve_device  # noqa: E402
from robench.models import build_model, xavier_init_  # noqa: E402
from robench.train import TrainConfig, train  # noqa: E402

BATCH = 64
LAMBDA_JR = 0.01
FULL_EPOCH = 60_000


class PilMnist(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's __getitem__ over in-memory uint8 images: PIL image, then transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms

        self.images, self.labels = images[:, 0].numpy(), labels.tolist()
        info = DATASETS["mnist"]
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def reference_jr(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The paper's Algorithm 1 as the reference code writes it: (1/2) C ||v^T J||^2 / B."""
    batch, classes = logits.shape
    v = torch.randn(batch, classes, device=logits.device)
    v = v / v.norm(dim=1, keepdim=True)
    (jv,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=True)
    return 0.5 * classes * jv.pow(2).sum() / batch


def reference_epoch(images, labels, device) -> float:
    """One epoch of the reference example's loop; returns seconds."""
    loader = torch.utils.data.DataLoader(
        PilMnist(images, labels), batch_size=BATCH, shuffle=True, num_workers=1, pin_memory=device.type == "cuda"
    )
    model = xavier_init_(build_model("lenet", "mnist")).to(device)
    # The example normalizes in the transform; robench's model normalizes inside, so drop that layer
    # here to keep the arithmetic the same size in both paths.
    net = model.net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sync(device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        x.requires_grad_(True)
        logits = net(x)
        loss = F.cross_entropy(logits, y) + LAMBDA_JR * reference_jr(x, logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def robench_epoch(subset: int | None, device, workdir: Path, round_index: int) -> float:
    """One epoch of `robench train --jr 0.01 --batch-size 64`; returns the epoch time from its log."""
    config = TrainConfig(model="lenet", jr=LAMBDA_JR, nproj=1, epochs=1, batch_size=BATCH, train_subset=subset,
                         test_subset=100, norm_samples=0, device=str(device))  # fmt: skip
    run_dir = workdir / f"round{round_index}"
    train(config, run_dir, force=True, show_progress=False)
    return float(pd.read_csv(run_dir / "log.csv")["seconds"].iloc[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-subset", type=int, default=None, help="images per epoch (default: all 60,000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/PERFORMANCE.md")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    images, labels = load_dataset("mnist", "train", subset=args.train_subset)
    n = len(labels)
    times = {"reference pipeline (PIL + ToTensor + Normalize DataLoader, plain autograd JR)": [],
             "robench train (data on device, seeded index batches)": []}  # fmt: skip
    ref_name, rb_name = times
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            torch.manual_seed(r)
            times[ref_name].append(reference_epoch(images, labels, device))
            times[rb_name].append(robench_epoch(args.train_subset, device, Path(tmp), r))
            print(f"round {r + 1}: " + ", ".join(f"{v[-1]:.1f} s" for v in times.values()), file=sys.stderr)
    best = {name: min(ts) for name, ts in times.items()}
    lines = [
        f"One JR epoch (lambda_JR={LAMBDA_JR}, n_proj=1), LeNet', batch {BATCH}, {n:,} MNIST images, "
        f"fastest of {args.rounds} alternating rounds, device: {device_label(device)}, torch {torch.__version__}",
        "",
        "| pipeline | epoch time | scaled to 60k images | speed vs reference |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {t:.2f} s | {t * FULL_EPOCH / n:.2f} s | {best[ref_name] / t:.2f}x |"
          for name, t in best.items()],
    ]  # fmt: skip
    print("\n".join(lines))
    if args.write:
        write_section("bench_epoch", "\n".join(lines))


if __name__ == "__main__":
    main()
