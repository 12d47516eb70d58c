"""The GPU's training loss without the full logits, with the same results as model.py's.

model.py computes the loss as a reader expects: logits for every position over the whole
vocabulary, then cross-entropy. For a micro-batch of 256 x 128 tokens that is a 32,768 x 50,257
tensor (3.3 GB in bf16), its float32 log-softmax and its gradient: the largest tensors of a step,
written and read several times. ChunkedLossGPT computes the same loss a chunk of rows at a time
and makes the gradients in the same pass (the gradient of the logits is softmax - one_hot), so
the full logits never exist and the backward pass has nothing left to recompute, as Liger's and
modded-nanogpt's fused losses do. The head's matrix is padded with zero rows to a multiple of 64
on the way (50,257 -> 50,304): matrix engines work in tiles, and a ragged edge costs a partial
tile on every product. The padding ids get no probability, and the padding never reaches a
parameter or a file.

train.py calls enable() right after cpu_fast_paths.enable(); it does nothing off CUDA.
tests/test_gpu_fast_paths.py checks the loss and gradients against the plain model's, on the CPU.
"""
import torch
from torch.nn import functional as F

from model import GPT

PAD_TO = 64  # vocabulary rows rounded up to a multiple of this
CHUNK_ROWS = 4096  # rows of logits alive at once: 4096 x 50,304 in float32 is 0.8 GB


def enable(model, device):
    """Give `model` the chunked loss when it trains on a GPU; True if it did."""
    if str(device).split(":")[0] != "cuda" or type(model) is not GPT:
        return False
    model.__class__ = ChunkedLossGPT
    return True


def chunked_cross_entropy(h, weight, targets, dtype, with_grads=True, chunk_rows=CHUNK_ROWS, pad_to=PAD_TO):
    """(mean cross-entropy of h @ weight.T against targets, d loss / d h, d loss / d weight), the
    products in `dtype` (autocast's), the softmax in float32. h: (N, C), weight: (vocab, C),
    targets: (N,), -1 = not counted. Without with_grads, the gradients are None."""
    vocab = weight.size(0)
    padded = F.pad(weight.to(dtype), (0, 0, 0, -vocab % pad_to))  # (vocab rounded up, C)
    rows = h.to(dtype)
    counted = targets != -1
    scale = 1.0 / counted.sum().clamp(min=1)  # d loss / d row loss of a counted row
    safe_targets = targets.clamp(min=0)[:, None]  # rows not counted read column 0, then get weight 0
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(rows) if with_grads else None
    grad_padded = torch.zeros(padded.shape, dtype=torch.float32, device=h.device) if with_grads else None
    for start in range(0, h.size(0), chunk_rows):
        chunk = slice(start, start + chunk_rows)
        logits = (rows[chunk] @ padded.t()).float()  # (rows, padded vocab)
        logits[:, vocab:] = float("-inf")  # the padding ids: probability 0
        log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
        row_loss = log_norm - logits.gather(1, safe_targets[chunk])
        loss += (row_loss.squeeze(1) * counted[chunk]).sum()
        if not with_grads:
            continue
        grad = torch.exp_(logits.sub_(log_norm))  # softmax, in place of the logits
        grad.scatter_add_(1, safe_targets[chunk], torch.full_like(row_loss, -1.0))  # - one_hot
        grad = (grad * (counted[chunk, None] * scale)).to(dtype)  # d loss / d logits
        grad_h[chunk] = grad @ padded
        grad_padded += (grad.t() @ rows[chunk]).float()
    if not with_grads:
        return loss * scale, None, None
    return loss * scale, grad_h.to(h.dtype), grad_padded[:vocab].to(weight.dtype)


class ChunkedCrossEntropy(torch.autograd.Function):
    """chunked_cross_entropy as an autograd op: the forward makes the gradients too, the backward
    only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, dtype):
        loss, grad_h, grad_weight = chunked_cross_entropy(h, weight, targets, dtype)
        ctx.save_for_backward(grad_h, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors
        return grad_h * grad_loss, grad_weight * grad_loss, None, None


class ChunkedLossGPT(GPT):
    """GPT whose loss never holds the full logits (see chunked_cross_entropy)."""

    def forward(self, idx, targets=None):
        if targets is None:
            return super().forward(idx)
        x = self.hidden_states(idx)  # (B, T, C); the compiled part of a compiled model
        return None, self.loss(x.view(-1, x.size(-1)), targets.view(-1))

    @torch.compiler.disable  # a loop over chunks, each a few large kernels: nothing for the compiler to fuse
    def loss(self, h, targets):
        weight = self.lm_head.weight
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):  # the dtypes are chosen above, one by one
            if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                return ChunkedCrossEntropy.apply(h, weight, targets, dtype)
            return chunked_cross_entropy(h, weight, targets, dtype, with_grads=False)[0]
