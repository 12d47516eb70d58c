# prepare: python prepare.py --vocab_size=4096 --max_stories=200000 --out_dir=data_laptop
# Stories on a laptop: python train.py presets/laptop.py (30 minutes on a CPU, no GPU needed)
#
# Chosen by a measured sweep on real TinyStories (BENCHMARKS.md, "Quality per compute"): a
# vocabulary of 4,096 tokens learned from the data, whose LM head is 12 times smaller than
# GPT-2's, so the compute goes to the model; the modern block; Muon for the blocks' matrices. At
# this budget a bigger model sees too few tokens, and a smaller vocabulary or a longer context
# measured no better. The data step streams the first 200,000 stories (about 40M tokens), more
# than 30 minutes on 2 cores train on (about 20M): every story is new, none is seen twice. Expect
# stories with named characters, whole sentences and an ending, not always a plot.
data_dir = "data_laptop"
out_dir = "out-laptop"
max_minutes = 30.0
max_iters = 1000000  # the budget ends the run

n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0  # every story new: nothing to overfit
pos_emb = "rope"
qk_norm = True
mlp = "relu2"
zero_init_proj = True
bias = False

batch_size = 16
gradient_accumulation_steps = 1  # 16 * 128 = 2,048 tokens per step: many small steps

optimizer = "muon"
muon_lr = 0.02
learning_rate = 3e-3  # AdamW's, for the embedding and the norms
min_lr = 3e-4
warmup_iters = 100  # with max_minutes: warmup is warmup_iters / lr_decay_iters = 2% of the budget
lr_decay_iters = 5000

eval_interval = 1000
eval_iters = 20
log_interval = 100
checkpoint_interval = 1000
