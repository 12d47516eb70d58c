# A tiny model that trains in about a minute on a laptop CPU: python train.py presets/cpu_tiny.py
#
# For trying the whole pipeline (prepare, train, sample, eval, export) without a GPU, not for good
# stories: a minute of TinyStories gives a model that strings story words together. It writes to
# its own out_dir, so it never overwrites a real run. Almost all its 6.8M parameters are the
# 50257 x 128 token embedding, and the LM head over that vocabulary is most of each step.
out_dir = "out-cpu-tiny"
device = "cpu"
dtype = "float32"
compile = "false"

n_layer = 2
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0  # too few steps to overfit

batch_size = 16
gradient_accumulation_steps = 1  # 16 * 64 = 1,024 tokens per step

learning_rate = 2e-3  # a small model takes a larger step
min_lr = 2e-4
max_iters = 200
warmup_iters = 20
lr_decay_iters = 200

eval_interval = 100
eval_iters = 10
log_interval = 20
checkpoint_interval = 100
