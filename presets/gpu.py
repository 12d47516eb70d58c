# prepare: python prepare.py
# The fast single-GPU recipe: python train.py presets/gpu.py
#
# config.py's model, schedule and 131,072 tokens per optimizer step, as 4 micro-batches of
# 256 x 128 tokens instead of 32 of 32 x 128: large matmuls keep a big GPU busy and there are 8x
# fewer micro-steps of Python and kernel-launch overhead. bfloat16 autocast and torch.compile
# are the other two big speed-ups. Needs CUDA with bfloat16 (Ampere or newer). Out of memory?
# Halve batch_size and double gradient_accumulation_steps: the same tokens per step.
device = "cuda"
dtype = "bfloat16"
compile = "true"

batch_size = 256
gradient_accumulation_steps = 4  # 256 * 128 * 4 = 131,072 tokens per step, as config.py
