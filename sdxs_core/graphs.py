"""Frozen graphs of the one-step path: ControlNet, U-Net and decoder traced once per input shape.

Why: a one-step model at live-loop sizes spends a third of its CPU time in Python (diffusers'
module calls, argument checks, dataclass outputs), not in arithmetic. A traced and frozen
TorchScript graph runs the same ops without it and folds the weights in as constants; with the
networks and inputs in channels-last layout (which oneDNN's CPU convolutions prefer) the
miniature model's ControlNet + U-Net + decoder take about half the eager time on a 2-core CPU,
after a trace of well under a second. ``torch.compile`` fuses more, but compiling the same three
networks took ~90 s on that CPU, again for every model, ControlNet, LoRA scale and shape: too long
for an app whose users switch models.

A graph bakes in the weights and every Python-level decision (shapes, which residuals exist, LoRA
scales), so graphs are cached by network, the engine's weight state (which LoRAs at which scales)
and input shapes. TorchScript never gives back the memory of a trace (pytorch/pytorch#35600: a
discarded graph's IR stays allocated), so the cache avoids tracing rather than freeing: going back
to a LoRA scale, a ControlNet or a batch size seen before reuses its graph; batches are padded to a
few fixed sizes (``BATCH_SIZES``) so the Images slider does not make a graph per value; and after
``trace_budget`` traces an engine runs new states eagerly, so a long session's memory is bounded
whatever the users do. If tracing fails for a model, that key falls back to the eager module, with
one warning.
"""

import threading
import warnings
from collections import OrderedDict

import torch


class _ControlNetGraph(torch.nn.Module):
    """ControlNet residuals as one flat tuple ``(mid, *down)``: TorchScript outputs must be tensors."""

    def __init__(self, controlnet):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, x, t, embeds, control, scale):
        down, mid = self.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=control,
                                    conditioning_scale=scale, return_dict=False)
        return (mid, *down)


class _UNetGraph(torch.nn.Module):
    def __init__(self, unet, with_residuals: bool):
        super().__init__()
        self.unet, self.with_residuals = unet, with_residuals

    def forward(self, x, t, embeds, *residuals):
        if not self.with_residuals:
            return self.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
        mid, *down = residuals
        return self.unet(x, t, encoder_hidden_states=embeds, down_block_additional_residuals=tuple(down),
                         mid_block_additional_residual=mid, return_dict=False)[0]


class _DecoderGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents, return_dict=False)[0]


def _channels_last(tensors: tuple) -> tuple:
    return tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors)


BATCH_SIZES = (1, 2, 4, 8, 16)  # batches are padded up to one of these before a traced call


def padded_batch(n: int) -> int:
    """The batch size a traced call runs ``n`` images at (``n`` itself past the largest size)."""
    return next((b for b in BATCH_SIZES if b >= n), n)


def _pad(tensors: tuple, n: int) -> tuple:
    """Batch tensors (first dimension ``n``) padded to ``padded_batch(n)`` by repeating the first row:
    each image of a batch is computed independently, so the padding never changes the real rows."""
    b = padded_batch(n)
    if b == n:
        return tensors
    return tuple(torch.cat([t, t[:1].expand(b - n, *t.shape[1:])]) if t.dim() and t.shape[0] == n else t
                 for t in tensors)


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device.type) for t in tensors)


class GraphCache:
    """Traced graphs by (network, weight state, input shapes, dtypes, device); at most
    ``trace_budget`` traces are ever made (see the module's docstring). Past ``capacity`` the least
    recently used are dropped; it defaults to the budget, because re-tracing a dropped graph costs
    memory that is never given back, while keeping it costs only its weights."""

    def __init__(self, capacity: int = 64, trace_budget: int = 64):
        self.capacity, self.trace_budget = capacity, trace_budget
        # key -> (graph or None, the network): holding the network keeps its id() from being reused
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self.traces = 0  # graphs traced so far (how often a change cost a re-trace)
        self._budget_warned = False

    def __len__(self) -> int:
        return len(self._graphs)

    def controlnet(self, controlnet, x, t, embeds, control, scale: float, state: tuple = ()):
        """``(down_residuals, mid_residual)`` as the eager ControlNet returns them."""
        n = x.shape[0]
        scale_t = torch.tensor(float(scale), dtype=x.dtype, device=x.device)
        inputs = _channels_last(_pad((x, t, embeds, control, scale_t), n))
        graph = self._get(("controlnet", id(controlnet), state), controlnet, lambda: _ControlNetGraph(controlnet),
                          inputs)
        if graph is None:
            return controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=control,
                              conditioning_scale=scale, return_dict=False)
        mid, *down = (r[:n] for r in graph(*inputs))
        return tuple(down), mid

    def unet(self, unet, x, t, embeds, down=None, mid=None, state: tuple = ()):
        """The U-Net's noise prediction (with ControlNet residuals when given); ``state`` names the
        weights the U-Net has now (its LoRAs and their scales)."""
        n = x.shape[0]
        residuals = () if down is None else (mid, *down)
        inputs = _channels_last(_pad((x, t, embeds, *residuals), n))
        graph = self._get(("unet", id(unet), state, down is not None), unet, lambda: _UNetGraph(unet, down is not None),
                          inputs)
        if graph is None:
            return unet(x, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, return_dict=False)[0]
        return graph(*inputs)[:n]

    def decode(self, vae, latents):
        n = latents.shape[0]
        inputs = _channels_last(_pad((latents,), n))
        graph = self._get(("decoder", id(vae)), vae, lambda: _DecoderGraph(vae), inputs)
        return vae.decode(latents, return_dict=False)[0] if graph is None else graph(*inputs)[:n]

    def _get(self, key: tuple, network, make, inputs: tuple):
        """The graph for ``inputs``, which must already be channels-last (see ``_channels_last``);
        None: run eagerly (tracing failed, or the trace budget is spent)."""
        key = (*key, _signature(inputs))
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key][0]
            if self.traces >= self.trace_budget:
                if not self._budget_warned:
                    self._budget_warned = True
                    warnings.warn(f"{self.traces} graphs traced by this model: new shapes and LoRA scales now run "
                                  "eagerly (TorchScript keeps every trace's memory)", RuntimeWarning, stacklevel=4)
                return None
            graph = self._trace(make(), inputs)
            self._graphs[key] = (graph, network)
            self.traces += 1
            while len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
            return graph

    @staticmethod
    def _trace(module: torch.nn.Module, inputs: tuple):
        """Freeze ``module`` for ``inputs``; its weights are moved to channels-last in place (the
        values are unchanged, so eager calls of the same network still agree). The move runs outside
        inference mode: an inference-mode copy of a LoRA weight could never be toggled trainable
        again, which PEFT does whenever an adapter's scale changes."""
        try:
            with torch.inference_mode(False):
                module.to(memory_format=torch.channels_last)
            with warnings.catch_warnings(), torch.no_grad():
                # tracing's deprecation notice and its "treated as a constant" notes are expected:
                # the constants are exactly what the cache key pins down
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return torch.jit.freeze(torch.jit.trace(module.eval(), inputs, check_trace=False))
        except Exception as e:  # a model TorchScript cannot trace still runs, eagerly
            warnings.warn(f"could not trace {type(module).__name__[1:-5]} ({type(e).__name__}: {e}); "
                          "running it eagerly", RuntimeWarning, stacklevel=4)
            return None
