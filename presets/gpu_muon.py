# The fast single-GPU recipe with Muon: python train.py presets/gpu_muon.py
#
# presets/gpu.py (bfloat16, torch.compile, 131,072 tokens per step as 4 micro-batches of 256 x 128)
# with --optimizer=muon: torch.optim.Muon for the 2-D weights inside the transformer blocks,
# AdamW (config.py's learning_rate, betas, weight decay) for the embeddings with the tied LM head,
# biases and LayerNorms. Both follow config.py's warmup and cosine. docs/modern.md says when to use
# it; its comparison with AdamW (BENCHMARKS.md) was measured on a CPU at a smaller scale.
device = "cuda"
dtype = "bfloat16"
compile = "true"

batch_size = 256
gradient_accumulation_steps = 4  # 256 * 128 * 4 = 131,072 tokens per step, as config.py

optimizer = "muon"
muon_lr = 0.02
muon_momentum = 0.95
muon_weight_decay = 0.0
