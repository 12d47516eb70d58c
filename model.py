"""The GPT language model, complete in one file: config, attention, MLP, transformer block, the
GPT itself, and generation with a KV cache.

The architecture is GPT-2's: token + position embeddings, pre-LayerNorm transformer blocks, and
an LM head that shares its weight with the token embedding. This is the plain model, the one a
GPU trains (under bf16 autocast and torch.compile). cpu_fast_paths.py swaps a few of its pieces
for faster equivalents when it runs on a CPU; nothing here depends on that.

Options of GPTConfig (all off by default) give the "modern" block of modded-nanogpt and nanochat
instead, each a few lines where it acts: rotary position embeddings instead of the position table
(pos_emb="rope"), RMS-normalized queries and keys (qk_norm), a ReLU² MLP (mlp="relu2"),
and residual-branch output projections that start at zero (zero_init_proj).

Shapes in comments: B = batch, T = sequence length, C = n_embd, nh = n_head, hs = C // nh.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE
    block_size: int = 128  # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.1
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    pos_emb: str = "learned"  # "learned": a table of block_size position vectors (GPT-2); "rope": rotary
    qk_norm: bool = False  # RMS-normalize each head's queries and keys before their dot products
    mlp: str = "gelu"  # the MLP's nonlinearity: "gelu" (GPT-2's) or "relu2", relu(x)^2
    zero_init_proj: bool = False  # the residual branches' output projections (c_proj) start at zero


def apply_rotary(x, pos, base=10000.0):
    """Rotary position embedding (RoPE) of x (B, nh, T, hs) at positions pos (T,): channels i and
    i + hs/2 are rotated as a pair by the angle pos * base^(-2i/hs).

    Rotating a query at position m and a key at position n makes their dot product depend on
    m - n only: attention sees relative positions, and no position table is learned.
    """
    half = x.size(-1) // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # (hs/2,): fast to slow
    angle = pos[:, None].float() * freq  # (T, hs/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def relu_squared(x):
    return F.relu(x).square()


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.block_size = config.block_size
        self.rope, self.qk_norm = config.pos_emb == "rope", config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0, pos=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:  # unit-RMS queries and keys: the attention logits cannot grow without bound
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if self.rope:
            q, k = apply_rotary(q, pos), apply_rotary(k, pos)
        if cache is None:
            band = None  # up to block_size positions: plain causal attention
            if T > self.block_size:  # (RoPE only) each position sees the block_size latest, itself included
                behind = pos[:, None] - pos[None, :]  # (T, T)
                band = (behind >= 0) & (behind < self.block_size)
            y = self.attend(q, k, v, band)  # (B, nh, T, hs)
        else:
            k, v = cache.update(layer, k, v, pos)  # (B, nh, block_size, hs): slot p % block_size holds position p
            # Slot s last held position p - (p - s) % block_size as seen from position p: itself or one
            # of the block_size - 1 before it, or, if that is negative, a slot not yet written in this
            # window (empty or left from an earlier one), which the mask keeps out.
            slots = torch.arange(k.size(2), device=pos.device)
            visible = pos[:, None] - (pos[:, None] - slots) % k.size(2) >= 0  # (T, block_size)
            y = self.attend(q, k, v, visible)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask=None):
        """softmax(q @ k^T / sqrt(hs)) @ v, each query attending only to the keys that mask (Tq, Tk)
        allows; without a mask, to its own position and earlier ones (causal, keys = queries).

        scaled_dot_product_attention runs this as one fused kernel (FlashAttention on a GPU in
        training) without ever holding the (T, T) attention matrix in memory.
        """
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              dropout_p=self.dropout if self.training else 0.0)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU(approximate="tanh") if config.mlp == "gelu" else relu_squared  # GPT-2's GELU, or ReLU²
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, pos=None):
        # pre-LayerNorm: each branch reads a normalized copy and adds its output to the residual stream
        x = x + self.attn(self.ln_1(x), cache, layer, pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.pos_emb not in ("learned", "rope") or config.mlp not in ("gelu", "relu2"):
            raise ValueError(f"unknown pos_emb={config.pos_emb!r} or mlp={config.mlp!r}")
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            # with RoPE there is no position table: the attention itself rotates by position
            **(dict(wpe=nn.Embedding(config.block_size, config.n_embd)) if config.pos_emb == "learned" else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection IS the token embedding (one tensor, two uses).
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual-branch output projections so the residual stream's variance
        # does not grow with depth. zero_init_proj: start them at zero, so every block begins as the
        # identity and the stream is the embedding alone until training opens the branches.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameters, the tied embedding counted once; non_embedding drops the position table (if any)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    def hidden_states(self, idx, cache=None, pos=None):
        """Final-LayerNorm outputs (B, T, C) for token ids idx (B, T) at positions pos (T,), by
        default 0..T-1. With a cache, the keys and values of these positions are stored in it and
        each position also attends to the earlier ones stored there. With RoPE, T may exceed
        block_size: each position then attends to the block_size latest (a sliding window)."""
        T = idx.size(1)
        if T > self.config.block_size and self.config.pos_emb == "learned":
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
        if pos is None:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, pos)
        return self.transformer.ln_f(x)

    def logits(self, h):
        """The LM head: hidden states (..., C) to logits (..., vocab)."""
        return self.lm_head(h)

    def forward(self, idx, targets=None):
        """Without targets: (logits (B, T, vocab), None). With targets (B, T): (None, the mean
        cross-entropy loss), targets of -1 not counted.

        With targets the logits are not returned: they are the largest tensor of a training step,
        and a caller holding them would keep them in memory (and keep torch.compile from fusing
        them into the loss).
        """
        logits = self.logits(self.hidden_states(idx))  # (B, T, vocab)
        if targets is None:
            return logits, None
        # the log-softmax in float32 even under bf16/fp16 autocast: it sums 50257 exponentials
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return None, loss

    def hidden_matrices(self):
        """The 2-D weights inside the transformer blocks (attention c_attn, c_proj; MLP c_fc, c_proj):
        the ones Muon trains with --optimizer=muon. The embeddings (with the tied LM head), biases
        and LayerNorms are not hidden matrices: AdamW trains them either way."""
        return [p for block in self.transformer.h for p in block.parameters() if p.dim() == 2]

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type, exclude=()):
        """AdamW with weight decay on matrices (weights, embeddings) only, not biases or LayerNorms;
        the parameters in `exclude` are left to another optimizer."""
        excluded = {id(p) for p in exclude}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in excluded]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused AdamW updates each tensor in one kernel instead of a handful of elementwise passes
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def flops_per_token(self):
        """Training FLOPs per token: 6 per weight (forward + backward) plus attention (PaLM, appendix B)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size

    # ------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True):
        """Yield max_new_tokens new token ids (each a (B, 1) tensor), continuing idx (B, T).

        temperature=0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
        smallest set whose probability reaches p (nucleus sampling). With kv_cache=False every
        token recomputes the whole window: simpler, and slower by the window's length.

        Past block_size tokens, GPT-2's learned positions need a window that starts at position 0:
        it jumps forward half a block at a time (window_start), refilling the cache. RoPE's
        positions are relative, so its window slides by one token and the cache, whose slots are
        reused in turn, is never refilled: each position attends to the block_size latest ones at
        every layer (a sliding window), which the uncached path computes over the last
        receptive_field() tokens.
        """
        block_size, slide = self.config.block_size, self.config.pos_emb == "rope"
        cache, cache_start, next_token = None, 0, None
        for _ in range(max_new_tokens):
            start = window_start(idx.size(1), block_size)
            if not kv_cache:
                context = idx[:, -self.receptive_field():] if slide else idx[:, start:]
                logits = self.logits(self.hidden_states(context)[:, -1, :])  # (B, vocab): the last position's
            elif cache is None or (start != cache_start and not slide):  # first step, or the window jumped: (re)fill
                cache = cache or self.make_kv_cache(idx.size(0), idx.device)
                cache_start = 0 if slide else start
                logits = self.prefill(idx[:, cache_start:], cache)
            else:  # only the newest token (last step's next_token): the earlier ones are cached
                pos = torch.tensor([idx.size(1) - 1 - cache_start], device=idx.device)  # its position in the window
                logits = self.decode_step(next_token, cache, pos)
            next_token = sample_next(logits, temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token

    def prefill(self, idx, cache):
        """Logits (B, vocab) for the token after idx (B, T), the keys and values of its positions
        0..T-1 stored in the cache: block_size of them in one pass, any later ones (RoPE only) one
        at a time, since they take the slots of positions that the earlier ones still attend to."""
        first = idx[:, :self.config.block_size]
        logits = self.logits(self.hidden_states(first, cache)[:, -1, :])
        for t in range(first.size(1), idx.size(1)):
            logits = self.decode_step(idx[:, t:t + 1], cache, torch.tensor([t], device=idx.device))
        return logits

    def receptive_field(self):
        """How many of the latest tokens the next one depends on when the window slides (RoPE):
        each layer looks block_size - 1 positions further back."""
        return self.config.n_layer * (self.config.block_size - 1) + 1

    def decode_step(self, token, cache, pos):
        """Logits (B, vocab) for the token after `token` (B, 1) at position pos (1,), the earlier
        positions read from the cache.

        Every shape in here is the same at every position (the attention reads the whole cache,
        masked), so this is one fixed program: sample.py --compile compiles it once.
        """
        return self.logits(self.hidden_states(token, cache, pos)[:, -1, :])

    def make_kv_cache(self, batch_size, device):
        """An empty KVCache for batch_size rows, in the dtype the keys and values are computed in."""
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else self.lm_head.weight.dtype)
        return KVCache(self.config, batch_size, device, dtype)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True):
        """Return idx (B, T) extended by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, kv_cache))
        return torch.cat([idx] + new, dim=1)


class KVCache:
    """Keys and values of every layer, one slot per position of the window (block_size slots).

    A new token's query needs the keys and values of all earlier tokens; they do not change (with
    learned positions the window only moves in jumps, see window_start), so they are computed
    once and kept here. Position p takes slot p % block_size: with RoPE, positions go on past
    block_size and each new one takes the slot of the one that just left the window.
    """

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        # zeros, not empty: attention weighs the slots not yet filled by exactly 0, and 0 * NaN is NaN
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, layer, k, v, pos):
        """Store k, v (B, nh, T, hs) of positions pos (T,) in their slots, in the cache's dtype (it
        may keep more precision than the model computes in); return the layer's slots, all of
        them: (B, nh, block_size, hs) each."""
        slots = pos % self.k.size(3)
        self.k[layer].index_copy_(2, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, slots, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


def window_start(length, block_size):
    """Index of the first token the model sees when predicting token number `length`.

    Up to block_size tokens the model sees them all. Past it, the window jumps forward by half a
    block at a time (rather than by one token) so that a KV cache stays valid between jumps: with
    learned absolute positions, sliding by one token would change every cached key and value.
    The uncached path uses the same window, so both produce the same tokens. (With RoPE the
    window slides by one instead; see generate_tokens.)
    """
    if length <= block_size:
        return 0
    stride = block_size // 2 or 1
    return ((length - block_size - 1) // stride + 1) * stride


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token id per row of logits (B, vocab): (B, 1)."""
    if temperature == 0:  # greedy: the index of the first largest logit (max's kernel is the faster one for bf16)
        return logits.max(dim=-1, keepdim=True).indices
    ids = None
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k)  # sorted; the other tokens have probability 0
    # Only now the float32 copy (the softmax sums up to 50257 exponentials, in float32 even when the
    # logits are bf16) and the temperature: after top-k they touch k values, not the vocabulary.
    logits = logits.float() / temperature
    if top_p is not None and top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, descending=True)
        probs = logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches p
        logits = logits.masked_fill(drop, float("-inf"))
    # Inverse-CDF sampling: one uniform number per row, looked up in the cumulative distribution
    # (torch.multinomial would draw a random number for every vocabulary entry).
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
    return choice if ids is None else ids.gather(1, choice)
