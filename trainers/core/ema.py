"""Exponential moving average of a module's floating-point state, kept in fp32; checkpointable."""

import torch


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # early weights are far from the end: warm up
        state = module.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        # one fused call instead of a kernel per tensor: matters on a GPU, where a U-Net has ~500
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].float() for k in floats], 1 - decay)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        module.load_state_dict({k: v.to(state[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}
