"""A GPT-2 style language model: token + position embeddings, pre-LayerNorm transformer blocks,
and an LM head that shares its weight with the token embedding. Also: KV-cached generation and
loading a checkpoint saved by train.py."""
import json
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import UserError


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE
    block_size: int = 128  # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.1
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2


def few_rows_linear(x, weight, bias=None, parts=8):
    """F.linear for an x of a few rows (one new token while generating), at memory bandwidth.

    MKL runs such a product on one thread at ~16 GB/s here, while reading the weight is all the
    work (the LM head is 77 MB). Cut into `parts` blocks of rows, the weight becomes one torch.bmm,
    which spreads the blocks over the threads (~70 GB/s on 2 cores): the LM head in 1.1 ms, not 4.8.
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


class Linear(nn.Linear):
    """nn.Linear (same parameters and state_dict) that routes few-row CPU inference to few_rows_linear."""

    def forward(self, x):
        if (x.device.type == "cpu" and not (torch.is_grad_enabled() and self.weight.requires_grad)
                and x.numel() <= 8 * x.size(-1) and self.weight.numel() >= 1 << 18):
            return few_rows_linear(x, self.weight, self.bias)
        return super().forward(x)


def dropout(x, p, training=True):
    """F.dropout, with a cheaper mask on CPU: comparing uniform floats (torch.rand_like) with p costs
    ~35% less there than the bernoulli_ F.dropout draws, and a step of the default model draws 19
    masks (4% of a CPU step). Same distribution; other random numbers."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    return x * torch.where(torch.rand_like(x) >= p, 1.0 / (1.0 - p), 0.0).to(x.dtype)


class Dropout(nn.Dropout):
    def forward(self, x):
        return dropout(x, self.p, self.training)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # all keys/values so far, this step's included
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA's CPU kernels have no dropout, so here it runs these same math ops, only with
            # the slower bernoulli_ mask
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            y = dropout(att.softmax(dim=-1), self.dropout) @ v
        else:
            # A multi-token call always starts at position 0 (training, or a cache prefill), so the
            # plain causal mask is right; a single new token may attend to everything cached.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled

    def update(self, layer, k, v):
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


LOSS_CHUNK_ROWS = 1024  # rows of logits alive at once in the fused loss: 1024 x 50257 fp32 = 200 MB (512: ~3% slower)


def linear_cross_entropy(h, weight, targets, with_grads=True, chunk_rows=LOSS_CHUNK_ROWS):
    """Mean cross-entropy of the logits h @ weight.T (h: N x C, weight: vocab x C) against targets
    (N; -1 = ignore), computed chunk_rows rows at a time; with_grads also returns d loss / d h and
    d loss / d weight.

    The plain path holds all N x vocab fp32 logits (800 MB at batch 32 x 128), their log-softmax and
    its gradient: the largest tensors of a training step, and on CPU most of its fresh-memory page
    faults. Here one chunk buffer is reused, and the gradients are made while the chunk's
    probabilities are at hand (softmax - one_hot is the gradient of the logits), so the backward
    pass has nothing left to recompute. Every pass over a chunk costs memory bandwidth, so there
    are few: the matmul writes it, softmax rewrites it in place, the two gradient matmuls read it;
    the 1/N scale is applied to the small (rows x C) operands instead of the chunk.
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
        logits = torch.mm(h_chunk, weight.t(), out=buffer[:end - start])
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
            row_loss[tiny] = torch.logsumexp(h_chunk[tiny] @ weight.t(), dim=1, keepdim=True) - target_logits[tiny]
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


def window_start(length, block_size):
    """Index of the first token the model sees when predicting token number `length`.

    Up to block_size tokens the model sees them all. Past it, the window jumps forward by half a
    block at a time (rather than by one token) so that a KV cache stays valid between jumps: with
    learned absolute positions, sliding by one token would change every cached key and value.
    The uncached path uses the same window, so both produce the same tokens.
    """
    if length <= block_size:
        return 0
    stride = block_size // 2 or 1
    return ((length - block_size - 1) // stride + 1) * stride


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection IS the token embedding (one tensor, two uses).
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual-branch output projections so the residual stream's variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameters, the tied embedding counted once; non_embedding drops the position table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx, cache=None):
        """Final-LayerNorm outputs (B, T, n_embd) for token ids idx (B, T)."""
        T = idx.size(1)
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """Without targets: logits (B, T, vocab). With targets: (None, mean cross-entropy loss).

        With targets the full logits are not returned: at (B*T) x 50257 they are the largest
        tensor of a training step, and the loss is all training needs.
        """
        x = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(x), None
        h, weight, targets = x.view(-1, x.size(-1)), self.lm_head.weight, targets.view(-1)
        if torch.is_autocast_enabled(h.device.type) or torch.compiler.is_compiling():
            # bf16/fp16 autocast (the GPU default) and torch.compile take the plain path: under
            # compile, inductor fuses the upcast and the log-softmax into the loss kernels.
            logits = self.lm_head(x)
            return None, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets, ignore_index=-1)
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return None, LinearCrossEntropy.apply(h, weight, targets)
        return None, linear_cross_entropy(h, weight, targets, with_grads=False)[0]

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (weights, embeddings) only, not biases or LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused AdamW updates each tensor in one kernel (CUDA, and CPU since torch 2.4) instead of
        # ~8 elementwise passes per tensor
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def flops_per_token(self):
        """Training FLOPs per token: 6 per weight (forward + backward) plus attention (PaLM, appendix B)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True):
        """Yield max_new_tokens new token ids (each a (B, 1) tensor), continuing idx (B, T).

        temperature=0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
        smallest set whose probability reaches p (nucleus sampling).
        """
        block_size = self.config.block_size
        cache, cache_start = None, 0
        for _ in range(max_new_tokens):
            start = window_start(idx.size(1), block_size)
            if not kv_cache:
                x = self.hidden_states(idx[:, start:])
            elif cache is None or start != cache_start:  # first step, or the window jumped: refill
                dtype = (torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type)
                         else self.lm_head.weight.dtype)  # what the keys and values are computed in
                cache = KVCache(self.config, idx.size(0), idx.device, dtype)
                cache_start = start
                x = self.hidden_states(idx[:, start:], cache)
            else:
                x = self.hidden_states(idx[:, -1:], cache)
            logits = self.lm_head(x[:, -1, :]).float()
            next_token = sample_next(logits, temperature, top_k, top_p)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True):
        """Return idx (B, T) extended by max_new_tokens sampled tokens."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, kv_cache))
        return torch.cat([idx] + new, dim=1)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token id per row of logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits, ids = logits / temperature, None
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k)  # sorted; the other tokens have probability 0
    if top_p is not None and top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, descending=True)
        probs = logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches p
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF draw, one uniform number per row: torch.multinomial draws one exponential per
    # vocabulary entry, 0.7 ms per token at 50257 (as long as the model's layers, on CPU).
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
    return choice if ids is None else ids.gather(1, choice)


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile (`_orig_mod.`) and DDP (`module.`) add to parameter names."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def load_checkpoint(path, device="cpu"):
    """Load a file saved by train.py (a full ckpt.pt or a plain state_dict); UserError if unusable."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; train a model first (python train.py) or pass --out_dir")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); "
                        "use another checkpoint or retrain") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a train.py checkpoint")
    return checkpoint


def load_model(path, device="cpu"):
    """A GPT with the weights in `path`, built from the architecture saved with them.

    A full ckpt.pt carries its model_args; a plain state_dict (best_model_params.pt) takes them
    from the config.json that train.py writes beside it.
    """
    checkpoint = load_checkpoint(path, device)
    if "model" in checkpoint and "model_args" in checkpoint:
        model_args, state_dict = checkpoint["model_args"], checkpoint["model"]
    else:
        config_path = os.path.join(os.path.dirname(path), "config.json")
        try:
            with open(config_path) as f:
                model_args = json.load(f)["model_args"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"{path} holds weights only and {config_path} (its architecture) is missing or broken; "
                            "pass the ckpt.pt of the same run with --checkpoint") from None
        state_dict = checkpoint
    known = {f.name for f in fields(GPTConfig)}
    model = GPT(GPTConfig(**{k: v for k, v in model_args.items() if k in known}))
    try:
        model.load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"{path} does not fit the architecture {model_args}: {lines[-1]}") from None
    return model.to(device)
