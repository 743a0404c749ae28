"""The AIRA-MoE layer: several A's and several B's around a frozen linear layer (SPEC section 1).

The experts of one layer are stored stacked, `A` as one `(num_A * r, d_in)` tensor and `B` as one
`(d_out, num_B * r)` tensor, so the forward is two GEMMs and a tiny `(num_B, num_A)` mix in
r-space, never a loop over (i, j) pairs. One tensor per bank and adapter also keeps peft's
save/load key mapping simple (nested ModuleLists would save but silently not reload).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge

from .config import Collaboration


def collaboration_matrix(collaboration: Collaboration, num_A: int, num_B: int) -> torch.Tensor:
    """Ω (num_B x num_A) of a fixed strategy; for `learned`, a non-symmetric start.

    `learned` must not start from equal rows or columns: identical experts get identical
    gradients and stay identical, so the extra experts would add no rank.
    """
    if collaboration == "fully":
        return torch.ones(num_B, num_A)
    if collaboration == "heuristic":
        omega = torch.zeros(num_B, num_A)
        block = num_B // num_A
        for j in range(num_B):
            owner = j // block if j < block * num_A else j - block * num_A
            omega[j, owner] = 1.0
        return omega
    generator = torch.Generator().manual_seed(num_A * 1000 + num_B)
    return 1.0 + 0.5 * (2 * torch.rand(num_B, num_A, generator=generator) - 1)


class AiraMoeLayer(BaseTunerLayer):
    """State shared by every AIRA-MoE layer type: per-adapter expert banks, mix and scaling."""

    adapter_layer_names = ("aira_A", "aira_B", "aira_omega")
    other_param_names = (
        "r", "scaling", "num_A", "num_B", "collaboration", "aira_dropout", "aira_mix", "aira_w_in", "aira_w_out"
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.aira_A = nn.ParameterDict({})
        self.aira_B = nn.ParameterDict({})
        self.aira_omega = nn.ParameterDict({})  # learned collaboration only
        self.aira_mix = BufferDict({}, persistent=False)  # fixed collaboration: rebuilt from the config
        self.aira_w_in = BufferDict({}, persistent=True)  # activation weights (SPEC 5), `inps` mode
        self.aira_w_out = BufferDict({}, persistent=True)  # activation weights (SPEC 5), `outps` mode
        self.aira_dropout = nn.ModuleDict({})
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.num_A: dict[str, int] = {}
        self.num_B: dict[str, int] = {}
        self.collaboration: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"aira_moe adapts torch.nn.Linear layers only; got {type(base).__name__}. "
                "Narrow `lora_target` / `target_modules` to linear projections."
            )
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        num_A: int,
        num_B: int,
        collaboration: Collaboration,
        use_rslora: bool = False,
        init_weights: bool = True,
        inference_mode: bool = False,
        activation_aware_mode: Optional[str] = None,
    ) -> None:
        self.r[adapter_name] = r
        self.num_A[adapter_name] = num_A
        self.num_B[adapter_name] = num_B
        self.collaboration[adapter_name] = collaboration
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.aira_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.aira_A[adapter_name] = nn.Parameter(torch.empty(num_A * r, self.in_features))
        self.aira_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, num_B * r))
        omega = collaboration_matrix(collaboration, num_A, num_B)
        if collaboration == "learned":
            self.aira_omega[adapter_name] = nn.Parameter(omega)
        else:
            self.aira_mix[adapter_name] = omega
        if activation_aware_mode == "inps":
            self.aira_w_in[adapter_name] = torch.ones(self.in_features)
        elif activation_aware_mode == "outps":
            self.aira_w_out[adapter_name] = torch.ones(self.out_features)
        self.reset_parameters(adapter_name, init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, init_weights: bool) -> None:
        """LoRA's init per expert: A_i Kaiming-uniform, B_j zero, so the adapter starts as ΔW = 0.

        With `init_weights=False` B is random too (used by tests to exercise non-zero updates).
        """
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.aira_A[adapter_name], a=math.sqrt(5))
            if init_weights:
                nn.init.zeros_(self.aira_B[adapter_name])
            else:
                nn.init.normal_(self.aira_B[adapter_name], std=0.02)

    def omega(self, adapter_name: str) -> torch.Tensor:
        """Ω of the adapter: the learned parameter or the fixed pattern."""
        if adapter_name in self.aira_omega:
            return self.aira_omega[adapter_name]
        return self.aira_mix[adapter_name]

    def mixed_B(self, adapter_name: str) -> torch.Tensor:
        """[B_1 … B_N](Ω ⊗ I_r): the (d_out, num_A * r) matrix with ΔW = s · mixed_B · A."""
        B = self.aira_B[adapter_name]
        r, num_B = self.r[adapter_name], self.num_B[adapter_name]
        omega = self.omega(adapter_name).to(B.dtype)
        return torch.einsum("onr,nm->omr", B.view(self.out_features, num_B, r), omega).flatten(1)

    def set_activation_weights(self, adapter_name: str, weights: torch.Tensor) -> None:
        """Install static activation weights (from calibration) on the side the adapter's mode scales."""
        bank = self.aira_w_in if adapter_name in self.aira_w_in else self.aira_w_out
        if adapter_name not in bank:
            raise ValueError(f"adapter {adapter_name!r} was created without activation-aware weighting")
        if weights.shape != bank[adapter_name].shape:
            raise ValueError(f"activation weights of shape {tuple(weights.shape)}, expected {tuple(bank[adapter_name].shape)}")
        bank[adapter_name] = weights.to(bank[adapter_name])

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = s · diag(w_out) [B_1 … B_N](Ω ⊗ I_r)[A_1; …; A_M] diag(w_in), computed in fp32."""
        A = self.aira_A[adapter_name].float()
        mixed = self.mixed_B(adapter_name).float()
        if adapter_name in self.aira_w_in:
            A = A * self.aira_w_in[adapter_name].float()
        if adapter_name in self.aira_w_out:
            mixed = mixed * self.aira_w_out[adapter_name].float()[:, None]
        return self.scaling[adapter_name] * (mixed @ A)


class Linear(nn.Module, AiraMoeLayer):
    """AIRA-MoE around an `nn.Linear`."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, **adapter_kwargs: Any) -> None:
        super().__init__()
        AiraMoeLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **adapter_kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        for adapter_name in check_adapters_to_merge(self, adapter_names):
            if adapter_name not in self.aira_A:
                continue
            merged = base.weight.data.float() + self.get_delta_weight(adapter_name)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights; adapter {adapter_name!r} seems broken.")
            base.weight.data = merged.to(base.weight.dtype)
            self.merged_adapters.append(adapter_name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter_name = self.merged_adapters.pop()
            if adapter_name in self.aira_A:
                restored = base.weight.data.float() - self.get_delta_weight(adapter_name)
                base.weight.data = restored.to(base.weight.dtype)

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Δy = s · w_out ⊙ B (Ω ⊗ I_r) A (w_in ⊙ dropout(x)): A GEMM, an (N x M) mix per token, B GEMM."""
        A = self.aira_A[adapter_name]
        r, num_A = self.r[adapter_name], self.num_A[adapter_name]
        x = self._cast_input_dtype(self.aira_dropout[adapter_name](x), A.dtype)
        if adapter_name in self.aira_w_in:
            x = x * self.aira_w_in[adapter_name].to(x.dtype)
        h = F.linear(x, A).unflatten(-1, (num_A, r))
        mixed = torch.matmul(self.omega(adapter_name).to(h.dtype), h)
        out = F.linear(mixed.flatten(-2), self.aira_B[adapter_name]) * self.scaling[adapter_name]
        if adapter_name in self.aira_w_out:
            out = out * self.aira_w_out[adapter_name].to(out.dtype)
        return out

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for adapter_name in self.active_adapters:
            if adapter_name in self.aira_A:
                result = result + self.adapter_output(x, adapter_name).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "aira_moe." + super().__repr__()
