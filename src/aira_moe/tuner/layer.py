"""The AIRA-MoE layer: several A's and several B's around a frozen linear layer (docs/method.md §1).

On a quantised base (bitsandbytes 4- or 8-bit storage) the AwSVD residual W - P0 cannot be written
into the frozen weight, so P0 stays a separate frozen factor pair that the forward subtracts while
the adapter is in use (docs/method.md §4, quantised bases).

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
from peft.utils.integrations import gather_params_ctx

from ..errors import AiraMoeError
from .config import Collaboration

# bitsandbytes' parameter classes (named, as peft does, so that bitsandbytes stays optional)
QUANTIZED_WEIGHT_TYPES = ("Params4bit", "Int8Params")


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
        "r", "scaling", "num_A", "num_B", "collaboration", "aira_dropout", "aira_mix", "aira_w_in", "aira_w_out",
        "aira_res_left", "aira_res_right", "compute_dtype",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.aira_A = nn.ParameterDict({})
        self.aira_B = nn.ParameterDict({})
        self.aira_omega = nn.ParameterDict({})  # learned collaboration only
        self.aira_mix = BufferDict({}, persistent=False)  # fixed collaboration: rebuilt from the config
        self.aira_w_in = BufferDict({}, persistent=True)  # activation weights (docs/method.md §5), `inps`
        self.aira_w_out = BufferDict({}, persistent=True)  # activation weights (docs/method.md §5), `outps`
        # AwSVD residual P0 = left @ right, subtracted from the frozen weight (docs/method.md §4); saved so that
        # loading onto the original base rebuilds W - P0 without calibration or SVD.
        self.aira_res_left = BufferDict({}, persistent=True)
        self.aira_res_right = BufferDict({}, persistent=True)
        self.aira_dropout = nn.ModuleDict({})
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.num_A: dict[str, int] = {}
        self.num_B: dict[str, int] = {}
        self.collaboration: dict[str, str] = {}
        self.compute_dtype: dict[str, str] = {}
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
        # bitsandbytes packs W (in integers, or in the compute dtype's storage): W - P0 cannot be written into it
        self.quantized = type(base.weight).__name__ in QUANTIZED_WEIGHT_TYPES
        self.kwargs = kwargs
        self.register_load_state_dict_pre_hook(AiraMoeLayer._load_residual)

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
        awsvd_residual: bool = False,
        compute_dtype: str = "input",
    ) -> None:
        self.r[adapter_name] = r
        self.compute_dtype[adapter_name] = compute_dtype
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
        if adapter_name in self.aira_res_left:  # rebuilt under the same name: W must not keep the old P0
            self.clear_residual(adapter_name)
            del self.aira_res_left[adapter_name], self.aira_res_right[adapter_name]
        if awsvd_residual:  # zero until AwSVD initialises it or a saved adapter is loaded
            self.aira_res_left[adapter_name] = torch.zeros(self.out_features, num_A * r)
            self.aira_res_right[adapter_name] = torch.zeros(num_A * r, self.in_features)
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

    def start_omega(self, adapter_name: str) -> torch.Tensor:
        """Ω as training starts: the strategy's pattern; after AwSVD, `learned` pairs A_k with B_k (identity block)."""
        num_A, num_B = self.num_A[adapter_name], self.num_B[adapter_name]
        omega = collaboration_matrix(self.collaboration[adapter_name], num_A, num_B)
        if self.collaboration[adapter_name] == "learned" and adapter_name in self.aira_res_left:
            pairs = min(num_A, num_B)
            omega[:pairs, :pairs] = torch.eye(pairs)
        return omega

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

    def _folded(self, adapter_name: str, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s · diag(w_out) · left, right · diag(w_in)) in fp32: scaling and activation weights in the small factors."""
        right, left = right.float(), self.scaling[adapter_name] * left.float()
        if adapter_name in self.aira_w_in:
            right = right * self.aira_w_in[adapter_name].float()
        if adapter_name in self.aira_w_out:
            left = left * self.aira_w_out[adapter_name].float()[:, None]
        return left, right

    def delta_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) in fp32 with ΔW = left @ right: s · diag(w_out) · mixed B, and A · diag(w_in)."""
        return self._folded(adapter_name, self.mixed_B(adapter_name), self.aira_A[adapter_name])

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = s · diag(w_out) [B_1 … B_N](Ω ⊗ I_r)[A_1; …; A_M] diag(w_in), computed in fp32."""
        left, right = self.delta_factors(adapter_name)
        return left @ right

    def base_weight(self) -> torch.Tensor:
        """The frozen W as a floating-point tensor, dequantised from a quantised base, for the techniques to read.

        Read-only on purpose: peft's `dequantize_module_weight` re-creates the parameter on the CPU,
        which drops bitsandbytes' 8-bit state and breaks the next forward.
        """
        base = self.get_base_layer()
        if hasattr(base.weight, "ds_id"):  # partitioned by DeepSpeed ZeRO-3: a gathered copy of this layer only
            with gather_params_ctx(base.weight, modifier_rank=None):
                return base.weight.detach().clone()
        if not self.quantized:
            return base.weight
        import bitsandbytes.functional as bnb_functional

        weight = base.weight
        if type(weight).__name__ == "Params4bit":
            return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
        scales = weight.SCB if weight.SCB is not None else base.state.SCB  # moved to the state at the first forward
        return bnb_functional.int8_vectorwise_dequant(weight.data, scales)

    @torch.no_grad()
    def add_to_base_weight(self, delta: torch.Tensor, safe_merge_of: Optional[str] = None) -> None:
        """W += delta, computed in fp32 and stored back in W's dtype (merge, unmerge and residuals).

        With `safe_merge_of` (an adapter name) a non-finite result is refused before W changes.
        """
        if self.quantized:
            raise AiraMoeError(
                "an aira_moe adapter cannot be merged into a quantised (bitsandbytes) weight: load the "
                "unquantised base model to merge or export (LLaMA-Factory: drop quantization_bit)"
            )
        weight = self.get_base_layer().weight
        with gather_params_ctx(weight, modifier_rank=0):  # ZeRO-3: rank 0's result is partitioned back out
            updated = weight.data.float() + delta
            if safe_merge_of is not None and not torch.isfinite(updated).all():
                raise ValueError(f"NaNs detected in the merged weights; adapter {safe_merge_of!r} seems broken.")
            weight.data.copy_(updated.to(weight.dtype))

    @torch.no_grad()
    def set_residual(self, adapter_name: str, left: torch.Tensor, right: torch.Tensor) -> None:
        """Make the frozen weight W - left @ right, undoing the residual it held before.

        On a quantised base W is left as it is and the forward subtracts left @ right x instead.
        The factors may come from another device: peft loads a saved adapter's tensors onto the GPU
        while `aira-moe eval` or an export builds the model on the CPU and moves it afterwards.
        """
        device = self.get_base_layer().weight.device
        if not self.quantized:
            self.add_to_base_weight(self.residual(adapter_name) - left.to(device).float() @ right.to(device).float())
        # copies: the factors may be views of the trainable A (delta_factors), which must not move P0
        self.aira_res_left[adapter_name] = left.detach().to(self.aira_res_left[adapter_name], copy=True)
        self.aira_res_right[adapter_name] = right.detach().to(self.aira_res_right[adapter_name], copy=True)

    def residual(self, adapter_name: str) -> torch.Tensor:
        """P0 in fp32 (zero for an adapter without AwSVD)."""
        if adapter_name not in self.aira_res_left:
            return torch.zeros((), device=self.get_base_layer().weight.device)
        return self.aira_res_left[adapter_name].float() @ self.aira_res_right[adapter_name].float()

    def clear_residual(self, adapter_name: str) -> None:
        """Give P0 back to the frozen weight (W_res + P0 = W)."""
        left, right = self.aira_res_left[adapter_name], self.aira_res_right[adapter_name]
        self.set_residual(adapter_name, torch.zeros_like(left), torch.zeros_like(right))

    @torch.no_grad()
    def initialise_from_slices(self, adapter_name: str, B0: torch.Tensor, A0: torch.Tensor) -> None:
        """Start the experts at s · B0 A0 (the principal part, K = `expert_pairings` slices of r), then W -= P0.

        `fully` is one rank-r product by construction: A_i = A0 / M, B_j = B0 / N. `heuristic` gives A_i
        slice i and splits it over the B's A_i owns. `learned` pairs A_k with B_k on slice k (Ω's K x K
        block starts as the identity, its other entries keep their start) and starts the experts beyond
        min(M, N) at zero, linked through Ω so they still receive gradients. Distinct slices make the
        experts differ, so their gradients differ and the extra experts add rank (docs/method.md §4).
        Activation weights are divided out first; P0 is read back from the layer itself.
        """
        num_A, num_B, r = self.num_A[adapter_name], self.num_B[adapter_name], self.r[adapter_name]
        if adapter_name in self.aira_w_in:
            A0 = A0 / self.aira_w_in[adapter_name].float().clamp_min(1e-6)
        if adapter_name in self.aira_w_out:
            B0 = B0 / self.aira_w_out[adapter_name].float().clamp_min(1e-6)[:, None]
        collaboration = self.collaboration[adapter_name]
        if collaboration == "fully":
            A, B = (A0 / num_A).repeat(num_A, 1), (B0 / num_B).repeat(1, num_B)
        elif collaboration == "heuristic":
            owners = self.omega(adapter_name).argmax(dim=1).tolist()
            shares = [owners.count(owner) for owner in owners]
            A = A0
            B = torch.cat([B0[:, o * r : (o + 1) * r] / share for o, share in zip(owners, shares)], dim=1)
        else:
            pairs = min(num_A, num_B)
            A, B = A0.new_zeros(num_A * r, self.in_features), B0.new_zeros(self.out_features, num_B * r)
            A[: pairs * r], B[:, : pairs * r] = A0, B0
            self.aira_omega[adapter_name].copy_(self.start_omega(adapter_name))
        self.aira_A[adapter_name].copy_(A)
        self.aira_B[adapter_name].copy_(B)
        self.set_residual(adapter_name, *self.delta_factors(adapter_name))

    @staticmethod
    def _load_residual(module: "AiraMoeLayer", state_dict: dict, prefix: str, *args: Any) -> None:
        """Loading a saved adapter applies its residual to the frozen weight (unless already applied)."""
        for adapter_name in module.aira_res_left:
            left = state_dict.get(f"{prefix}aira_res_left.{adapter_name}")
            right = state_dict.get(f"{prefix}aira_res_right.{adapter_name}")
            if left is None or right is None:
                continue
            current_left, current_right = module.aira_res_left[adapter_name], module.aira_res_right[adapter_name]
            if torch.equal(left.to(current_left), current_left) and torch.equal(right.to(current_right), current_right):
                continue
            dtype = module.get_base_layer().weight.dtype
            if current_left.any() and dtype != torch.float32 and not module.quantized:
                warnings.warn(
                    f"loading adapter {adapter_name!r} over a different AwSVD residual on a {dtype} weight: the old "
                    "one is added back with rounding; load onto the original base model for an exact W - P0."
                )
            module.set_residual(adapter_name, left, right)

    def residual_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """P0 x, which restores the base function where an adapter with a residual is not in use."""
        left, right = self.aira_res_left[adapter_name], self.aira_res_right[adapter_name]
        return F.linear(F.linear(self._cast_input_dtype(x, right.dtype), right), left)

    def residual_terms(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The P0 corrections of the base output: W holds W - P0, so P0 x is added back where its adapter is
        not in use; a quantised W holds W itself, so P0 x is subtracted where its adapter is in use."""
        terms = []
        for adapter_name in self.aira_res_left:
            in_use = not self.disable_adapters and adapter_name in self.active_adapters
            if in_use == self.quantized:
                term = self.residual_output(x, adapter_name)
                terms.append(-term if self.quantized else term)
        return terms

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: Optional[list[str]]
    ) -> nn.Module:
        """peft's unload: merged adapters keep W - P0 + ΔW; every other residual is given back to W."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        for adapter_name in list(self.aira_res_left):
            if adapter_name not in self.merged_adapters:
                self.clear_residual(adapter_name)
        return self.get_base_layer()

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.aira_res_left:
            self.clear_residual(adapter_name)
        super().delete_adapter(adapter_name)


class Linear(nn.Module, AiraMoeLayer):
    """AIRA-MoE around an `nn.Linear`."""

    def __init__(self, base_layer: nn.Linear, adapter_name: str, **adapter_kwargs: Any) -> None:
        super().__init__()
        AiraMoeLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **adapter_kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        for adapter_name in check_adapters_to_merge(self, adapter_names):
            if adapter_name not in self.aira_A:
                continue
            self.add_to_base_weight(self.get_delta_weight(adapter_name), adapter_name if safe_merge else None)
            self.merged_adapters.append(adapter_name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        while self.merged_adapters:
            adapter_name = self.merged_adapters.pop()
            if adapter_name in self.aira_A:
                self.add_to_base_weight(-self.get_delta_weight(adapter_name))

    def matmul_dtype(self, x: torch.Tensor, adapter_name: str) -> torch.dtype:
        """The dtype the adapter's matmuls run in for input `x` (see `adapter_compute_dtype`)."""
        return x.dtype if self.compute_dtype[adapter_name] == "input" else self.aira_A[adapter_name].dtype

    def forward_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) with Δy = left (right x), scaling and activation weights folded into these small factors.

        `fully` is one rank-r product, (s · w_out ⊙ Σ_j B_j)((Σ_i A_i) · w_in): its GEMMs are r wide, not
        num_A · r and num_B · r, and no pass over the activations scales them (docs/method.md §1).
        """
        if self.collaboration[adapter_name] != "fully":
            return self.delta_factors(adapter_name)
        r, num_A, num_B = self.r[adapter_name], self.num_A[adapter_name], self.num_B[adapter_name]
        B_sum = self.aira_B[adapter_name].view(self.out_features, num_B, r).sum(1)
        A_sum = self.aira_A[adapter_name].view(num_A, r, self.in_features).sum(0)
        return self._folded(adapter_name, B_sum, A_sum)

    def adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Δy = s · w_out ⊙ B (Ω ⊗ I_r) A (w_in ⊙ dropout(x)), as two GEMMs with the folded factors.

        In `input` compute dtype the factors are cast to the activations' dtype, not the other way:
        casting a bf16 activation to fp32 copies it at twice its size and keeps that copy for the
        backward pass, while the factors are small and their gradients still reach the fp32 masters.
        """
        x = self._cast_input_dtype(self.aira_dropout[adapter_name](x), self.matmul_dtype(x, adapter_name))
        left, right = self.forward_factors(adapter_name)
        return F.linear(F.linear(x, right.to(x.dtype)), left.to(x.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        terms = self.residual_terms(x)
        if not (self.disable_adapters or self.merged):
            terms += [self.adapter_output(x, name) for name in self.active_adapters if name in self.aira_A]
        if not terms:
            return result
        # summed before the base output: on a quantised base the adapter and -P0 x cancel exactly at the start,
        # and an 8-bit base would turn a rounding residue into a jump in the next layer's quantised input
        change = terms[0].to(result.dtype)
        for term in terms[1:]:
            change = change + term.to(result.dtype)
        return result + change

    def __repr__(self) -> str:
        return "aira_moe." + super().__repr__()
