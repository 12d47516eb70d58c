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


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # all keys/values so far, this step's included
        # A multi-token call always starts at position 0 (training, or a cache prefill), so the
        # plain causal mask is right; a single new token may attend to everything cached.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

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
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return None, loss

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (weights, embeddings) only, not biases or LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused AdamW runs the whole update in a few kernels on CUDA
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

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
                cache = KVCache(self.config, idx.size(0), idx.device, self.lm_head.weight.dtype)
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
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already reaches p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


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
