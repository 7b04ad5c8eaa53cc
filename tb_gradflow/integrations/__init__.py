"""Gradient flow inside training frameworks, one module each.

- :mod:`tb_gradflow.integrations.lightning`: ``GradFlowCallback`` for PyTorch
  Lightning (``lightning.pytorch`` or ``pytorch_lightning``).
- :mod:`tb_gradflow.integrations.huggingface`: ``GradFlowCallback`` for the
  Hugging Face ``transformers.Trainer``.

Each module imports its framework and is importable only where the framework is
installed; nothing else in ``tb_gradflow`` imports them. Each takes the step
numbers from the framework's own counter, so that the gradient of an update is
logged at the step where the framework logs that update's loss.
"""
