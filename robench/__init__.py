"""robench: train classifiers with and without Jacobian regularization, attack them through Foolbox.

Importing the package is cheap on purpose: heavy libraries (foolbox, click, pandas) load only in the
modules that need them, so `import robench.jacobian` works in anyone's training loop.
"""

__version__ = "0.1.0"
