"""Shell completion for the CLI: attack names for --attack (one comma-separated item at a time),
model names for --model and --arch. Everything here reads file names only (no torch, no foolbox),
so completing is as fast as `robench --help`.

Enable it with click's mechanism, e.g. for bash: `eval "$(_ROBENCH_COMPLETE=bash_source robench)"`
(zsh: zsh_source, fish: fish_source); see the README.
"""

from __future__ import annotations

from importlib import resources

MODEL_NAMES = ("lenet", "lenet5", "mlp", "resnet18")  # robench.models.MODELS (a test keeps them equal)
ARCH_PREFIXES = ("robench:", "torchvision:", "timm:")


def attack_names() -> list[str]:
    """Every attack and suite file in the packaged specs, plus 'default' and 'all'."""
    try:
        files = resources.files("robench.attack_specs").iterdir()
        names = sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))
    except (ModuleNotFoundError, OSError):
        names = []
    return names + ["default", "all"]


def complete_attacks(ctx, param, incomplete: str):
    """Complete the last item of a comma-separated attack list."""
    from click.shell_completion import CompletionItem

    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [CompletionItem(prefix + name) for name in attack_names() if name.startswith(last)]


def complete_models(ctx, param, incomplete: str):
    from click.shell_completion import CompletionItem

    return [CompletionItem(name) for name in MODEL_NAMES if name.startswith(incomplete)]


def complete_arch(ctx, param, incomplete: str):
    """robench names and the registry prefixes (torchvision/timm names are too many to list)."""
    from click.shell_completion import CompletionItem

    options = list(MODEL_NAMES) + [f"robench:{m}" for m in MODEL_NAMES] + list(ARCH_PREFIXES)
    return [CompletionItem(o) for o in dict.fromkeys(options) if o.startswith(incomplete)]
