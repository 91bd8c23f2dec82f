"""robench: train classifiers with and without Jacobian regularization, attack them through Foolbox.

Importing the package is cheap on purpose: heavy libraries (foolbox, click, pandas) load only in the
modules that need them, so `import robench.jacobian` works in anyone's training loop.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`robench.evaluate_model` without importing torch at `import robench`."""
    if name == "evaluate_model":
        from .api import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
