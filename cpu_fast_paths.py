"""Faster CPU versions of pieces of model.py, with the same results.

model.py is the plain GPT, written for reading and for the GPU, where torch.compile and bf16
autocast's fused kernels already do this work. A CPU running the model eagerly gains from a few
replacements, which enable() swaps into a built model in place (same parameters, same
state_dict, same results up to float rounding; tests/test_cpu_fast_paths.py is their spec).
In float32 (training, evaluation, sampling with --dtype=float32) there are four:

- FusedLossGPT: the LM head and cross-entropy of a training step, a chunk of rows at a time,
  with the gradients made in the same pass. The plain path holds all (B*T) x vocab logits, their
  log-softmax and its gradient: the largest tensors of a step, and on a CPU most of its time in
  fresh-memory page faults.
- CheapDropout: a dropout mask from comparing uniform floats with p, cheaper on a CPU than the
  bernoulli_ draws of F.dropout (same distribution, other random numbers).
- ExplicitAttention: attention in training with dropout. SDPA's CPU kernels have no dropout, so
  there it runs these same math ops anyway, only with the bernoulli_ mask.
- FewRowsLinear: a Linear applied to a few rows (one new token while generating). Such a product
  reads the whole weight for little arithmetic; cut into blocks of rows, the weight becomes one
  torch.bmm that spreads the reading over all threads.

With bfloat16 weights (sample.py --dtype=bfloat16, the default on CPUs with bf16 instructions)
there are two:

- PackedLinear: a Linear whose weight oneDNN has reordered once into its own blocked layout.
  Generating a token reads every weight once for little arithmetic. From the plain layout,
  oneDNN's bf16 kernel for a few rows is slower than the float32 paths above, for half the bytes;
  prepacked, it takes about half as long as from the plain layout. Same oneDNN arithmetic, so the
  same results as F.linear.
- Float32Attention (with Float32CacheGPT): attention, and the KV cache, in float32. SDPA's CPU
  kernel is several times slower in bf16 than in float32 for the one query of a generated token,
  most of all in a batch of stories; the cache is small next to the weights, so its doubled size
  costs little. The bf16 keys and values convert exactly, so this only rounds less.

BENCHMARKS.md has what they are worth. train.py, sample.py, eval.py and bench.py call enable()
right after building the model; it does nothing unless the model runs eagerly on a CPU, in
float32 or with bfloat16 weights.
"""
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from model import GPT, CausalSelfAttention, KVCache

LOSS_CHUNK_ROWS = 1024  # rows of logits alive at once in the fused loss (1024 x 50257 fp32 = 200 MB)


def enable(model, device, dtype=torch.float32, compiled=False):
    """Swap the fast paths into `model` when it runs eagerly on a CPU; True if it did.

    dtype is what the model computes in: float32, an autocast dtype (train.py), or the dtype its
    weights were cast to (sample.py). Float32 gets the four float32 paths; bfloat16 weights get the
    two bf16 paths where oneDNN runs bf16 matmuls. Elsewhere the plain model is the fast one: on a
    GPU, or under autocast or torch.compile, the fused kernels do what these paths do by hand.
    """
    weights = next(model.parameters()).dtype
    if str(device).split(":")[0] != "cpu" or compiled or dtype != weights:
        return False
    if weights == torch.bfloat16:
        return enable_bf16(model)
    if weights != torch.float32:
        return False
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.numel() >= 1 << 18:  # small ones gain nothing
            module.__class__ = FewRowsLinear
        elif isinstance(module, nn.Dropout):
            module.__class__ = CheapDropout
        elif isinstance(module, CausalSelfAttention):
            module.__class__ = ExplicitAttention
    if isinstance(model, GPT):
        model.__class__ = FusedLossGPT
    return True


# ----------------------------------------------------------------------------- the LM-head loss

def linear_cross_entropy(h, weight, targets, with_grads=True, chunk_rows=LOSS_CHUNK_ROWS):
    """Mean cross-entropy of the logits h @ weight.T (h: N x C, weight: vocab x C) against targets
    (N; -1 = ignore), computed chunk_rows rows at a time; with_grads also returns d loss / d h and
    d loss / d weight.

    One chunk buffer is reused, and the gradients are made while the chunk's probabilities are at
    hand (softmax - one_hot is the gradient of the logits), so the backward pass has nothing left
    to recompute. Every pass over a chunk costs memory bandwidth, so there are few: the matmul
    writes it, softmax rewrites it in place, the two gradient matmuls read it; the 1/N scale is
    applied to the small (rows x C) operands instead of the chunk.
    """
    valid = targets != -1
    row_scale = (valid / valid.sum()).to(h.dtype)[:, None]  # d loss / d row loss: 1/(counted rows), 0 if ignored
    safe_targets = targets.clamp(min=0)[:, None]  # ignored rows read column 0, then get weight 0
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if with_grads else None
    grad_weight = torch.zeros_like(weight) if with_grads else None
    buffer = h.new_empty(min(chunk_rows, h.size(0)), weight.size(0))
    for start in range(0, h.size(0), chunk_rows):
        end = min(start + chunk_rows, h.size(0))
        h_chunk, scale, chunk_targets = h[start:end], row_scale[start:end], safe_targets[start:end]
        logits = torch.mm(h_chunk, weight.t(), out=buffer[:end - start])  # (rows, vocab)
        if not with_grads:
            log_probs = torch.log_softmax(logits, dim=1, out=logits)  # in place: the chunk is the only copy
            loss -= (log_probs.gather(1, chunk_targets) * scale).sum()
            continue
        target_logits = logits.gather(1, chunk_targets)
        probs = torch.softmax(logits, dim=1, out=logits)
        target_probs = probs.gather(1, chunk_targets)
        row_loss = -target_probs.log()
        tiny = (target_probs < 1e-30).squeeze(1)  # -log would lose precision, or be inf: take the exact form
        if tiny.any():
            tiny_logits = h_chunk[tiny] @ weight.t()
            row_loss[tiny] = torch.logsumexp(tiny_logits, dim=1, keepdim=True) - target_logits[tiny]
        loss += (row_loss * scale).sum()
        probs.scatter_add_(1, chunk_targets, torch.full_like(target_probs, -1.0))  # d row loss / d logits
        torch.mm(probs, weight, out=grad_h[start:end]).mul_(scale)
        grad_weight.addmm_(probs.t(), h_chunk * scale)
    return loss, grad_h, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    """linear_cross_entropy as an autograd op: the forward computes the gradients too (see there),
    the backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets):
        loss, ctx.grad_h, ctx.grad_weight = linear_cross_entropy(h, weight, targets)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # not in place: with retain_graph=True a second backward must find them unchanged
        return ctx.grad_h * grad_loss, ctx.grad_weight * grad_loss, None


class FusedLossGPT(GPT):
    """GPT whose loss goes through linear_cross_entropy: the full logits are never materialized."""

    def forward(self, idx, targets=None):
        if targets is None:
            return super().forward(idx)
        x = self.hidden_states(idx)  # (B, T, C)
        h, weight, targets = x.view(-1, x.size(-1)), self.lm_head.weight, targets.view(-1)
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return None, LinearCrossEntropy.apply(h, weight, targets)
        return None, linear_cross_entropy(h, weight, targets, with_grads=False)[0]


# ----------------------------------------------------------------------------- dropout and attention

def cheap_dropout(x, p, training=True):
    """F.dropout with its mask made by comparing uniform floats with p."""
    if not training or p == 0.0:
        return x
    return x * torch.where(torch.rand_like(x) >= p, 1.0 / (1.0 - p), 0.0).to(x.dtype)


class CheapDropout(nn.Dropout):
    def forward(self, x):
        return cheap_dropout(x, self.p, self.training)


class ExplicitAttention(CausalSelfAttention):
    """Attention as explicit math ops when training with dropout, so that the cheap mask applies."""

    def attend(self, q, k, v, mask=None):
        if not (self.training and self.dropout > 0) or mask is not None:
            return super().attend(q, k, v, mask)
        T = q.size(2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return cheap_dropout(att.softmax(dim=-1), self.dropout) @ v  # (B, nh, T, hs)


# ----------------------------------------------------------------------------- few-row Linear

def few_rows_linear(x, weight, bias=None, parts=8):
    """F.linear for an x of a few rows, with the weight read by all threads.

    A matmul with one or two rows is all memory traffic (the LM head's weight is 77 MB) and the
    BLAS runs it on one thread. Cut into `parts` blocks of rows, the weight becomes one torch.bmm,
    which spreads the blocks over the threads.
    """
    rows = x.reshape(-1, x.size(-1))
    n, (out_features, in_features) = rows.size(0), weight.shape
    block = out_features // parts
    split = weight[:block * parts].view(parts, block, in_features)
    columns = rows.t().expand(parts, in_features, n)
    if bias is None:
        out = torch.bmm(split, columns)  # (parts, block, n)
    else:
        out = torch.baddbmm(bias[:block * parts].view(parts, block, 1), split, columns)
    out = out.permute(2, 0, 1).reshape(n, block * parts)
    if block * parts < out_features:  # the rows left over (the LM head: 50257 = 8 * 6282 + 1)
        rest = F.linear(rows, weight[block * parts:], None if bias is None else bias[block * parts:])
        out = torch.cat((out, rest), dim=1)
    return out.view(*x.shape[:-1], out_features)


class FewRowsLinear(nn.Linear):
    """nn.Linear that takes few_rows_linear for a few rows without gradients (generation)."""

    def forward(self, x):
        if x.numel() <= 8 * x.size(-1) and not (torch.is_grad_enabled() and self.weight.requires_grad):
            return few_rows_linear(x, self.weight, self.bias)
        return super().forward(x)


# ----------------------------------------------------------------------------- bf16 weights

def enable_bf16(model):
    """Swap the bf16 paths into `model`: PackedLinear, Float32Attention, Float32CacheGPT;
    True if oneDNN can run them."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.dtype == torch.bfloat16:
            module.__class__ = PackedLinear
        elif isinstance(module, CausalSelfAttention):
            module.__class__ = Float32Attention
    if isinstance(model, GPT):
        model.__class__ = Float32CacheGPT
    return True


class PackedLinear(nn.Linear):
    """nn.Linear with bf16 weights that, without gradients, runs on a copy of its weight prepacked
    for oneDNN; the copy is made on first use and again whenever the weight changes."""

    def forward(self, x):
        if torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad):
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")

    def packed_weight(self):
        key = (self.weight.data_ptr(), self.weight._version)  # _version counts in-place changes
        cached = self.__dict__.get("_packed")  # not a parameter or buffer: state_dict stays as it was
        if cached is None or cached[0] != key:
            cached = self.__dict__["_packed"] = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1))
        return cached[1]


class Float32Attention(CausalSelfAttention):
    """Attention computed in float32 from bf16 queries, keys and values; the result in bf16 again.
    With a mask it reads only the slots up to the last one the last query sees (the later ones
    are masked: a KV cache not yet full)."""

    def attend(self, q, k, v, mask=None):
        if mask is not None:
            end = int(mask[-1].nonzero()[-1]) + 1  # the last query sees no slot from end on
            k, v, mask = k[:, :, :end], v[:, :, :end], mask[:, :end]
        return super().attend(q.float(), k.float(), v.float(), mask).to(q.dtype)


class Float32CacheGPT(GPT):
    """GPT whose KV cache is float32 whatever its weights: the attention reads it as it is."""

    def make_kv_cache(self, batch_size, device):
        return KVCache(self.config, batch_size, device, torch.float32)
