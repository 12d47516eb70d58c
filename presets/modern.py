# The modern block: python train.py presets/modern.py (give it after a recipe to combine them, e.g.
# python train.py presets/gpu.py presets/modern.py)
#
# modded-nanogpt's and nanochat's changes to GPT-2's block, as config.py's model options: rotary
# position embeddings instead of the learned position table, RMS-normalized queries and keys,
# ReLU² instead of GELU, the blocks' output projections initialized at zero, and no biases.
# Only the architecture: the rest of the recipe stays as config.py or the preset before it has it.
# nanochat's x0 skip connection and logit softcap were measured on top of these, of no help at this
# kit's scale (BENCHMARKS.md), and left out of the model.
# The model cannot be exported to Hugging Face's GPT-2 (export.py says so). docs/modern.md says
# what it buys against GPT-2's block; BENCHMARKS.md has the measurements.
pos_emb = "rope"
qk_norm = True
mlp = "relu2"
zero_init_proj = True
bias = False
