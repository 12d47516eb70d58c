"""The optimizers and their learning-rate schedule.

--optimizer=adamw trains every weight with AdamW; --optimizer=muon trains the blocks' matrices
with Muon (torch.optim.Muon, or Float32Muon where bf16 is emulated) and the rest with AdamW. One
schedule, linear warmup then cosine decay to min_lr, drives them all (set_learning_rates).
"""
import math

import torch

from common import UserError, native_bf16


def make_optimizers(model, cfg, device_type):
    """The optimizers of this run, {name: optimizer}, stepped together every step.

    --optimizer=adamw: {'adamw': AdamW over every parameter}. --optimizer=muon: {'muon': Muon over
    the blocks' 2-D weights, 'adamw': AdamW over the rest (the embeddings with the tied LM head,
    biases, LayerNorms)}. Muon orthogonalizes each matrix's update, which only means something
    for a matrix that maps one hidden space to another.
    """
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return {"adamw": model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, betas, device_type)}
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"--optimizer=muon needs torch.optim.Muon, new in PyTorch 2.9, and this is torch "
                        f"{torch.__version__}; upgrade torch or use --optimizer=adamw")
    hidden = model.hidden_matrices()
    in_bf16 = cfg.muon_dtype == "bfloat16" or (cfg.muon_dtype == "auto" and native_bf16(device_type))
    muon = torch.optim.Muon if in_bf16 else Float32Muon
    return {"muon": muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay),
            "adamw": model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, betas, device_type, exclude=hidden)}


class Float32Muon(getattr(torch.optim, "Muon", torch.optim.Optimizer)):  # (no Muon before torch 2.9: refused above)
    """torch.optim.Muon with its Newton-Schulz iteration in float32 instead of bfloat16.

    torch's Muon orthogonalizes in bf16, which GPUs and some CPUs compute in hardware; other CPUs
    emulate it, many times slower than float32 (--muon_dtype=auto picks this class there). The
    same update, only rounded less; the same state (a momentum buffer per matrix), so ckpt.pt
    resumes with either class.
    """

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            a, b, c = group["ns_coefficients"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                momentum.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(momentum, group["momentum"]) if group["nesterov"] else momentum
                tall = p.size(0) > p.size(1)
                x = update.float().T if tall else update.float()  # wide, so that x @ x.T is the smaller product
                x = x / x.norm().clamp(min=group["eps"])  # spectral norm <= 1, where the iteration converges
                for _ in range(group["ns_steps"]):  # x <- a x + (b x x^T + c (x x^T)^2) x
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                x = x.T if tall else x
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(x, alpha=-group["lr"] * math.sqrt(max(1, p.size(0) / p.size(1))))  # torch's "original" lr scale


def get_lr(step, cfg):
    """AdamW's learning rate for optimizer step `step`: linear warmup, then cosine decay to min_lr."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def set_learning_rates(optimizers, step, cfg):
    """Set every param group's learning rate for step `step`; returns AdamW's (for the log).

    One schedule for all: each optimizer's peak times get_lr(step) / learning_rate, the fraction
    of the peak that warmup and cosine allow at this step (so Muon's floor is muon_lr * min_lr /
    learning_rate). AdamW's factor is exactly 1: its learning rates are get_lr's, bit for bit.
    """
    lr = get_lr(step, cfg)
    peaks = {"adamw": cfg.learning_rate, "muon": cfg.muon_lr}
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = lr * (peaks[name] / cfg.learning_rate)
    return lr
