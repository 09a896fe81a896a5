"""Forward and backward hooks as context managers that always remove themselves.

After baukit's ``nethook``: :class:`Trace` watches one module, :class:`TraceDict` several, by
name. Inside the ``with`` block every forward pass through a traced module records its input
(``retain_input``) and output, optionally the gradient of the loss with respect to that output
(``retain_grad``: a tensor hook, filled by ``backward()``), and optionally replaces the output
(``edit_output``: ``f(output, name, input) -> new output``, e.g. ``input`` itself to skip a
block, or an ablated LoRA delta). Leaving the block removes every hook, also when the block raised, so a model is never
left instrumented.

Recorded tensors are the module's own (``detach=False``, needed for gradients) or detached
copies (``detach=True``, the default for plain forward capture, so that nothing holds the graph).
A module whose output is a tuple (a Whisper encoder layer, its self-attention) is recorded by its
first element, the hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_first(value, new):
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


class Trace:
    """Record (and optionally edit) what one module computes while the ``with`` block runs.

    >>> with Trace(model.encoder.layers[3], retain_grad=True, detach=False) as trace:  # doctest: +SKIP
    ...     loss = criterion(model(x), y)
    ...     loss.backward()
    >>> trace.output, trace.output_grad  # doctest: +SKIP
    """

    def __init__(self, module: nn.Module, name: str = "", *, retain_input: bool = False,
                 retain_output: bool = True, retain_grad: bool = False, detach: bool = True,
                 edit_output: Callable | None = None):
        if retain_grad and detach:
            raise ValueError("retain_grad needs detach=False: a detached output has no gradient")
        self.module, self.name = module, name
        self.retain_input, self.retain_output, self.retain_grad = retain_input, retain_output, retain_grad
        self.detach, self.edit_output = detach, edit_output
        self.input = self.output = self.output_grad = None
        self._handles: list = []

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self.detach else tensor

    def _hook(self, module, inputs, output):
        if self.edit_output is not None:
            output = _replace_first(output, self.edit_output(_first(output), self.name, _first(inputs)))
        hidden = _first(output)
        if self.retain_input:
            self.input = self._keep(_first(inputs))
        if self.retain_output:
            self.output = self._keep(hidden)
        if self.retain_grad and hidden.requires_grad:
            hidden.register_hook(self._store_grad)
        return output if self.edit_output is not None else None

    def _store_grad(self, grad: torch.Tensor) -> None:
        self.output_grad = grad.detach()

    def __enter__(self) -> "Trace":
        self._handles.append(self.module.register_forward_hook(self._hook))
        return self

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, kind, error, trace) -> bool:
        self.close()
        return False


class TraceDict(dict):
    """:class:`Trace` for several modules of ``model``, by their names in ``named_modules()``;
    ``trace_dict[name]`` is that module's trace. Unknown names are refused before any hook is set."""

    def __init__(self, model: nn.Module, names: Iterable[str], **options):
        super().__init__()
        modules = dict(model.named_modules())
        names = list(names)
        unknown = [name for name in names if name not in modules]
        if unknown:
            raise KeyError(f"no module named {unknown[:5]} in the model ({len(unknown)} unknown)")
        for name in names:
            self[name] = Trace(modules[name], name, **options)

    def __enter__(self) -> "TraceDict":
        try:
            for trace in self.values():
                trace.__enter__()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for trace in self.values():
            trace.close()

    def __exit__(self, kind, error, trace) -> bool:
        self.close()
        return False
