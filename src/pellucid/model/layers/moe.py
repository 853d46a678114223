"""Mixture-of-experts feed-forward: a router picks k of E expert FFNs per token; shared experts see every token.

    scores   = softmax(router(x)) or sigmoid(router(x))         (E,) per token
    chosen   = top-k of scores (+ a selection-only bias, within the best groups: DeepSeek V3)
    weights  = scores[chosen] (/ their sum) (x scale)
    out      = sum_j weights[j] * expert[chosen[j]](x)  [+ shared(x) (x sigmoid(gate . x): Qwen 2 MoE)]
             or sum_j expert[chosen[j]](weights[j] * x)  (Llama 4: the weight scales the expert's input)

GPT-OSS ("softmax_weight") chooses by the router's logits and takes the softmax of the chosen k logits as the
weights; its router and every expert projection carry a bias, and its experts use the clamped SwiGLU.

This is llama.cpp's `build_moe_ffn` (src/llama-graph.cpp) and transformers' Qwen3MoeSparseMoeBlock /
DeepseekV3MoE, step for step; `ModelConfig`'s expert_* fields switch the variants.

Only the chosen experts' weights are read. Experts stay as the file stores them: a GGUF expert stack is one
3-D tensor (experts x out x in) whose packed bytes each expert views as a matrix of its own (`row_slice` of the
stack: no copy), a Hugging Face folder has one 2-D matrix per expert. Tokens are grouped by expert, so each
chosen expert's matrices are read once per forward whatever the number of tokens routed to it: a decode step
reads ~k experts per token (its active parameters), a batched decode step or a prefill the union of the
experts its tokens chose, once each. With one token, the gate and up products of all its k experts read the
same x and run as one call (`project`: one quantization of x, one parallel region in the native kernels).

In the default arithmetic on the CPU a decode step's MoE layer is two native ops: `native.moe_route` (router
product, scores, top-k, weights) and `native.moe_experts` (the k experts' gate/up, activation, down and weighted
sum); run as ATen ops, the same steps were ~25 ops a layer, ~0.1 ms of Python at Qwen3-30B-A3B's shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from pellucid.model.layers.linear import Linear, frozen, project
from pellucid.model.layers.mlp import GatedMLP, make_glu
from pellucid.quant import kernels, native
from pellucid.quant.linear import QuantizedLinear

# Experts with at most this many tokens run in the native grouped products, in chunks of native.MAX_ROWS rows (each
# chunk reads the expert's packed matrices once); above it an expert's weights are unpacked once for a GEMM,
# which writes and reads 4 bytes per weight (bfloat16) against a chunk's ~0.6 (Q4_K): even at 64 rows, 8 chunks
# read about as much. A 32-token prompt at Qwen3-30B-A3B shapes (4 layers, 2 threads): 1.6 s with 8, 0.12 s with 64.
GROUPED_MAX_ROWS = 64
# llama.cpp clamps the sum of the chosen weights before dividing by it (the smallest normal float16)
_MIN_WEIGHT_SUM = 6.103515625e-5


def route(
    logits: torch.Tensor,
    k: int,
    *,
    gating: str = "softmax",
    normalize: bool = False,
    scale: float = 1.0,
    bias: torch.Tensor | None = None,
    n_groups: int = 0,
    n_groups_used: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (weights (N, k) float32, expert ids (N, k)), the best-scored expert first.

    `bias` (E,) is added to the scores for choosing only; the weights are the unbiased scores (DeepSeek V3's
    `e_score_correction_bias`, GGUF `exp_probs_b`). With `n_groups` > 1 a token chooses among the experts of
    its best `n_groups_used` groups only, a group scored by the sum of its two best (biased) scores.
    """
    logits = logits.float()
    if gating == "softmax_weight":  # GPT-OSS: the best k logits, then a softmax over those k
        top, experts = logits.topk(k, dim=-1)
        weights = torch.softmax(top, dim=-1)
        return (weights * scale if scale != 1.0 else weights), experts
    if gating == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif gating == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        raise ValueError(f"expert gating must be 'softmax', 'sigmoid' or 'softmax_weight', not {gating!r}")
    select = scores + bias.float() if bias is not None else scores
    if n_groups > 1:
        n, e = select.shape
        groups = select.view(n, n_groups, e // n_groups)
        group_scores = groups.topk(2, dim=-1).values.sum(-1)  # (N, groups)
        best = group_scores.topk(n_groups_used, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        select = groups.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(n, e)
    experts = select.topk(k, dim=-1).indices  # (N, k)
    weights = scores.gather(1, experts)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(_MIN_WEIGHT_SUM)
    if scale != 1.0:
        weights = weights * scale
    return weights, experts


class Experts(nn.Module):
    """E gated FFNs, expert e = down[e](act(gate[e](x)) * up[e](x)); each projection any linear layer (packed
    or dense). `forward` runs the chosen ones only, each on the tokens routed to it.

    `biases` (GPT-OSS): (gate, up, down) bias stacks, each (E, out) or None, added after the products. They are
    kept here rather than in the projections so that the native kernels, which take bias-free matrices, still
    run every expert product."""

    def __init__(
        self,
        gate: list[nn.Module],
        up: list[nn.Module],
        down: list[nn.Module],
        activation: str,
        *,
        biases: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] | None = None,
        swiglu_alpha: float = 1.702,
        swiglu_limit: float = 7.0,
    ):
        super().__init__()
        self.gate, self.up, self.down = nn.ModuleList(gate), nn.ModuleList(up), nn.ModuleList(down)
        self.activation = activation
        self.glu = make_glu(activation, swiglu_alpha, swiglu_limit)
        gate_b, up_b, down_b = biases or (None, None, None)
        self.gate_bias = frozen(gate_b.float()) if gate_b is not None else None
        self.up_bias = frozen(up_b.float()) if up_b is not None else None
        self.down_bias = frozen(down_b.float()) if down_b is not None else None

    @staticmethod
    def _biased(y: torch.Tensor, bias: torch.Tensor | None, experts) -> torch.Tensor:
        """y plus each row's expert's bias (`experts`: one id, or a tensor of ids, one per row)."""
        return y if bias is None else (y.float() + bias[experts]).to(y.dtype)

    def __len__(self) -> int:
        return len(self.gate)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x (N, hidden), weights / experts (N, k) -> (N, hidden): each token's weighted sum of its experts."""
        if x.shape[0] == 1:
            return self._one_token(x, weights[0], experts[0].tolist())
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        flat = experts.flatten()
        order = flat.argsort(stable=True)  # token slots grouped by expert, experts in ascending order
        counts = torch.bincount(flat, minlength=len(self)).tolist()
        token_of = order // experts.shape[1]
        w = weights.flatten()[order]
        few = [e for e, n in enumerate(counts) if 0 < n <= GROUPED_MAX_ROWS]
        if few and self._grouped(x, token_of, w, flat[order], few, [counts[e] for e in few], out):
            counts = [0 if 0 < n <= GROUPED_MAX_ROWS else n for n in counts]  # done: the rest go one by one
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            while flat[order[start]] != e:  # skip the slots of experts done above
                start += 1
            rows, end = token_of[start : start + count], start + count
            y = self._ffn(x[rows], e)  # every token routed to e, in one product per matrix
            out.index_add_(0, rows, y.float() * w[start:end, None])
            start = end
        return out.to(x.dtype)

    def _grouped(self, x, token_of, w, expert_of, few: list[int], counts: list[int], out: torch.Tensor) -> bool:
        """The experts with few tokens (a batched decode step, a short prompt), all in three native calls (gate,
        up, down), each expert's matrices read once per MAX_ROWS of its tokens. False where the kernels do not
        apply (exact arithmetic, dense or biased matrices); nothing is added to `out` then."""
        mats, chunks = [], []
        for e, n in zip(few, counts):
            packed = [m.packed if isinstance(m, QuantizedLinear) and m.bias is None else None for m in (
                self.gate[e], self.up[e], self.down[e])]  # fmt: skip
            if any(p is None for p in packed):
                return False
            for start in range(0, n, native.MAX_ROWS):
                mats.append(packed)
                chunks.append(min(native.MAX_ROWS, n - start))
        counts = chunks
        small = torch.zeros(len(self), dtype=torch.bool)
        small[few] = True
        slots = small[expert_of].nonzero().flatten()  # the sorted slots of those experts, still grouped
        xs = x[token_of[slots]]
        gate = kernels.matmul_grouped(xs, counts, [ms[0] for ms in mats])
        if gate is None:
            return False
        up = kernels.matmul_grouped(xs, counts, [ms[1] for ms in mats])
        ids = expert_of[slots]
        h = self.glu(self._biased(gate, self.gate_bias, ids), self._biased(up, self.up_bias, ids))
        y = self._biased(kernels.matmul_grouped(h, counts, [ms[2] for ms in mats]), self.down_bias, ids)
        out.index_add_(0, token_of[slots], y.float() * w[slots, None])
        return True

    def _ffn(self, x: torch.Tensor, e: int) -> torch.Tensor:
        gate, up = project(x, self.gate[e], self.up[e])
        h = self.glu(self._biased(gate, self.gate_bias, e), self._biased(up, self.up_bias, e))
        return self._biased(self.down[e](h), self.down_bias, e)

    def _one_token(self, x: torch.Tensor, weights: torch.Tensor, chosen: list[int]) -> torch.Tensor:
        """A decode step's token: where its k experts are packed, the whole weighted sum is one native op (x
        quantized once for the k gate/up products, each expert's activation once for its down product);
        otherwise the gate and up products of its k experts in one call (they share x), then each down."""
        specs = self._native_specs(x, chosen)
        if specs is not None and self._fused_on_cpu():  # the default arithmetic on the CPU: one native op
            return native.moe_experts(x.float(), weights, [spec for _, spec in specs], self.activation).to(x.dtype)
        if specs is not None:  # biases or an activation the native op lacks (GPT-OSS): three native products
            k, width = len(chosen), self.gate[chosen[0]].out_features
            gate_up = native.gemv(x.float(), [s for triple, _ in specs for s in triple[:2]]).view(k, 2, width)
            h = self.glu(  # (k, expert FFN)
                self._biased(gate_up[:, 0], self.gate_bias, chosen), self._biased(gate_up[:, 1], self.up_bias, chosen)
            )
            y = native.gemv_grouped(h, [1] * k, [triple[2] for triple, _ in specs])
            y = self._biased(y, self.down_bias, chosen)
            return (y * weights[:, None]).sum(0, keepdim=True).to(x.dtype)
        outs = project(x, *[p for e in chosen for p in (self.gate[e], self.up[e])])
        out = None
        for j, e in enumerate(chosen):
            gate, up = self._biased(outs[2 * j], self.gate_bias, e), self._biased(outs[2 * j + 1], self.up_bias, e)
            y = self._biased(self.down[e](self.glu(gate, up)), self.down_bias, e).float() * weights[j]
            out = y if out is None else out + y
        return out.to(x.dtype)

    def _fused_on_cpu(self) -> bool:
        """Whether `native.moe_experts` computes these experts whole: no biases, an activation `native.glu` has."""
        no_biases = self.gate_bias is None and self.up_bias is None and self.down_bias is None
        return no_biases and self.activation in native.ACTIVATION_IDS

    def _native_specs(self, x: torch.Tensor, chosen: list[int]) -> list[tuple] | None:
        """Per chosen expert, its (gate, up, down) native specs and the three as one `native.expert_spec`,
        remembered per expert (a decode step would otherwise look up 3k matrices' specs through their modules:
        ~1 ms a token at k = 8), or None when the native kernels do not apply (exact arithmetic, another device,
        dense matrices)."""
        if not kernels.fused(x):
            return None
        table = self.__dict__.setdefault("_specs", {})
        specs = []
        for e in chosen:
            entry = table.get(e)
            if entry is None:
                mats = (self.gate[e], self.up[e], self.down[e])
                ok = all(isinstance(m, QuantizedLinear) and m.bias is None for m in mats)
                triple = tuple(kernels.native_spec(m.packed) for m in mats) if ok else (None,)
                entry = table[e] = (triple, native.expert_spec(*triple)) if None not in triple else False
            if entry is False:
                return None
            specs.append(entry)
        return specs


class MoE(nn.Module):
    """The mixture-of-experts feed-forward of one layer (the module docstring has the arithmetic)."""

    def __init__(
        self,
        router: nn.Module,
        experts: Experts,
        n_used: int,
        *,
        gating: str = "softmax",
        normalize: bool = False,
        scale: float = 1.0,
        selection_bias: torch.Tensor | None = None,
        n_groups: int = 0,
        n_groups_used: int = 0,
        shared: GatedMLP | None = None,
        shared_gate: nn.Module | None = None,
        weights_on_input: bool = False,
    ):
        super().__init__()
        self.weights_on_input = weights_on_input
        self.router, self.experts, self.n_used = router, experts, n_used
        self.gating, self.normalize, self.scale = gating, normalize, scale
        self.selection_bias = frozen(selection_bias) if selection_bias is not None else None
        self.n_groups, self.n_groups_used = n_groups, n_groups_used
        self.shared, self.shared_gate = shared, shared_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, hidden = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, hidden)  # (N, hidden): every token of every sequence
        weights, experts = self.route(flat)
        if self.weights_on_input:
            out = self._weighted_inputs(flat, weights, experts)
        else:
            out = self.experts(flat, weights, experts)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(self.shared_gate(flat).float()).to(shared.dtype)
            out = out + shared
        return out.view(*lead, hidden)

    def _weighted_inputs(self, flat: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Llama 4: each chosen expert runs on x times its weight (a different input per slot, so each of the k
        slots becomes a row of its own, routed to one expert with weight 1), and the slots' outputs are summed.
        Its experts are nonlinear, so this is not the weighted sum of their outputs (Llama 4 routes top-1)."""
        n, k = experts.shape
        scaled = (flat.float().repeat_interleave(k, dim=0) * weights.reshape(n * k, 1)).to(flat.dtype)
        ones = torch.ones(n * k, 1, dtype=torch.float32, device=flat.device)
        out = self.experts(scaled, ones, experts.reshape(n * k, 1))  # (N * k, hidden)
        return out.view(n, k, -1).sum(1) if k > 1 else out

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, expert ids), each (N, k), for tokens flat (N, hidden)."""
        router = self._native_router(flat)
        if router is not None:  # one native op: the router's product, scores, top-k and weights
            return native.moe_route(flat.float(), router, self.n_used, self.gating, self.normalize, self.scale)
        return route(
            self.router(flat),
            self.n_used,
            gating=self.gating,
            normalize=self.normalize,
            scale=self.scale,
            bias=self.selection_bias,
            n_groups=self.n_groups,
            n_groups_used=self.n_groups_used,
        )

    def _native_router(self, flat: torch.Tensor) -> torch.Tensor | None:
        """The router's float32 matrix when `native.moe_route` computes this layer's routing (the default
        arithmetic on the CPU, a few tokens: a decode step, batched or not; and a routing it implements), else
        None. A prompt's many tokens go through torch's GEMM, which reuses the router's weights from cache. A new
        routing switch must be refused here until the native op implements it."""
        if flat.shape[0] > native.MAX_ROWS or not kernels.fused(flat):
            return None
        r = self.router
        cached = self.__dict__.get("_native_router_weight")
        if cached is None or cached[0] is not getattr(r, "weight", None):  # (re)decided when the weight changes
            plain = isinstance(r, Linear) and r.bias is None and r.weight.dtype == torch.float32
            simple = self.gating in native.GATING_IDS and self.selection_bias is None and self.n_groups <= 1
            cached = (getattr(r, "weight", None), r.weight.contiguous() if plain and simple else None)
            self.__dict__["_native_router_weight"] = cached
        return cached[1]
