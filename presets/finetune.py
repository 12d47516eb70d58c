# Fine-tune trained weights on your text:
#     python train.py presets/finetune.py --init_from=out --data_dir=data_mine --out_dir=out-mine
#
# --init_from: a run folder, a ckpt.pt / best_model_params.pt, a Hugging Face GPT-2 folder, or gpt2
# (docs/finetuning.md). The architecture comes from those weights, so this file sets none of it.
# Chosen by bench_finetune.py (BENCHMARKS.md): a short warmup, then a constant learning rate, a
# few hundred small steps, and an evaluation often, so that best_model_params.pt keeps the best
# point before the model starts to memorize a small text.
out_dir = "out-finetune"

batch_size = 12
gradient_accumulation_steps = 1  # 12 sequences a step: fine-tuning data is often small

learning_rate = 1e-3
min_lr = 1e-3  # constant after warmup: a few hundred steps leave no time for a long decay
warmup_iters = 20
max_iters = 200
lr_decay_iters = 200

eval_interval = 20
eval_iters = 10
checkpoint_interval = 100
log_interval = 10
