# prepare: python prepare.py --vocab_size=4096 --out_dir=data_4k
# The best stories in 30 minutes on a 2-core CPU: a vocabulary of 4,096 tokens learned from the
# data (its LM head is 12 times smaller than GPT-2's), the modern block, AdamW.
data_dir = "data_4k"
max_minutes = 30.0
max_iters = 1000000  # the budget ends the run
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
dropout = 0.0
pos_emb = "rope"
qk_norm = True
mlp = "relu2"
zero_init_proj = True
bias = False
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 100
lr_decay_iters = 5000
eval_interval = 250
eval_iters = 20
