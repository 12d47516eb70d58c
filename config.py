"""Every training knob and its default, in one place.

Edit the values here, or override any of them on the command line:
    python train.py --batch_size=64 --learning_rate 3e-4
    python train.py presets/gpu.py --max_iters=2000     (a preset file first; later flags win)
A value is parsed with the type of its default; an unknown name is an error listing close matches.
train.py reads the result as attributes: cfg.batch_size.
"""
import builtins
import difflib
import os
from types import SimpleNamespace

from common import UserError

# --- I/O ---
data_dir = "data"  # folder with train.bin / validation.bin / meta.json written by prepare.py
out_dir = "out"  # checkpoints, metrics.csv and loss.png go here
init_from = "scratch"  # 'scratch': random weights; 'resume': continue out_dir/ckpt.pt; else weights to fine-tune
overwrite = False  # let a new run (scratch or fine-tune) replace the run already in out_dir (otherwise refused)
checkpoint_interval = 250  # save the latest state to out_dir/ckpt.pt every this many steps

# --- system ---
device = "auto"  # 'auto' picks cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # autocast: 'auto' = bfloat16 where the GPU has it, else float16 (with a GradScaler) on CUDA, float32 on CPU/MPS
compile = "auto"  # torch.compile the model: 'auto' = on CUDA only, 'true' or 'false'
seed = 1337  # seeds weight init, dropout and batch sampling

# --- model (GPT-2 style; the defaults are the seed's architecture, ~30.0M parameters) ---
n_layer = 6  # transformer blocks
n_head = 6  # attention heads per block; must divide n_embd
n_embd = 384  # width of the residual stream
block_size = 128  # context length in tokens
dropout = 0.1  # dropout on embeddings, attention weights and residual branches
bias = True  # biases in Linear and LayerNorm layers, as in GPT-2
# the modern block (modded-nanogpt, nanochat), option by option; presets/modern.py sets them all
pos_emb = "learned"  # 'learned' position table (GPT-2), or 'rope': rotary embeddings, relative positions
qk_norm = False  # RMS-normalize queries and keys per head before attention
mlp = "gelu"  # the MLP's nonlinearity: 'gelu' (GPT-2) or 'relu2' (relu(x)^2)
zero_init_proj = False  # the blocks' output projections (attention and MLP c_proj) start at zero

# --- batch: tokens per optimizer step = batch_size * block_size * gradient_accumulation_steps ---
batch_size = 32  # sequences per micro-batch (per GPU); on CUDA, when not given, the largest that fits (gpu_micro_batch)
gradient_accumulation_steps = 32  # micro-batches summed per optimizer step (divided across DDP ranks)

# --- optimizer: AdamW, weight decay on 2-D weights only; or Muon for the blocks' matrices ---
optimizer = "adamw"  # 'adamw' for every weight, or 'muon': Muon for the blocks' 2-D weights, AdamW for the rest
learning_rate = 1e-3  # AdamW's peak learning rate, reached after warmup
weight_decay = 0.1  # decoupled weight decay (AdamW), on 2-D weights only
beta1 = 0.9  # AdamW momentum
beta2 = 0.95  # AdamW second-moment decay; 0.95 rather than 0.999 steadies LM training
grad_clip = 1.0  # clip the global gradient norm to this; 0 disables clipping
muon_lr = 0.02  # Muon's peak learning rate (--optimizer=muon); it follows learning_rate's warmup and cosine
muon_momentum = 0.95  # Muon's Nesterov momentum
muon_weight_decay = 0.0  # Muon's decoupled weight decay (each step shrinks its weights by lr * this)
muon_dtype = "auto"  # Muon's orthogonalization: 'auto' = bfloat16 where the device computes it (CUDA, AVX512-BF16/AMX CPUs), else float32

# --- schedule, counted in optimizer steps (or stretched over a time budget: max_minutes) ---
max_iters = 5000  # optimizer steps in the whole run (with max_minutes: the most it may take)
max_minutes = 0.0  # > 0: train for this many minutes of training time (not start-up or evaluation), the schedule spread over them; 0 = no budget
warmup_iters = 200  # linear warmup from 0 to learning_rate
lr_decay_iters = 5000  # cosine decay from learning_rate down to min_lr ends here
min_lr = 1e-4  # floor of the schedule, usually learning_rate / 10

# --- evaluation and logging ---
eval_interval = 250  # evaluate (and maybe save the best model) every this many steps
eval_iters = 50  # batches per split in each evaluation
log_interval = 10  # print a training log line every this many steps

# --- experiment tracking with Weights & Biases (optional: pip install wandb) ---
wandb_log = False  # log every training log line, evaluation and the config to W&B (rank 0 only)
wandb_project = "tinystories-gpt"  # the W&B project the run goes to
wandb_run_name = ""  # the run's name on W&B; '' lets W&B pick one

MICRO_BATCH_TOKENS = 32768  # presets/gpu.py's 256 x 128: measured fast on an H200 (BENCHMARKS.md, GPU)

CHOICES = {
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile": ("auto", "true", "false"),
    "optimizer": ("adamw", "muon"),
    "muon_dtype": ("auto", "float32", "bfloat16"),
    "pos_emb": ("learned", "rope"),
    "mlp": ("gelu", "relu2"),
}


def gpu_micro_batch(cfg, vocab_size, world_size, gpu_bytes):
    """(batch_size, gradient_accumulation_steps) for a CUDA run whose --batch_size was not given: the
    same tokens per optimizer step, in the fewest micro-batches of at most MICRO_BATCH_TOKENS whose
    estimated memory takes at most half of the GPU's gpu_bytes. The defaults' 32 sequences a
    micro-batch suit a CPU; a GPU runs them several times slower than the same tokens in larger
    matrix products (BENCHMARKS.md, GPU).

    The estimate, in bf16: per token, 34 bytes per layer and width (the activations a block keeps
    for the backward pass, with fused attention: Korthikanti et al. 2022) and 10 per vocabulary
    entry (the logits, their float32 log-softmax and its gradient); 16 bytes per parameter for the
    weights, gradients and AdamW's moments."""
    sequences = cfg.batch_size * cfg.gradient_accumulation_steps // world_size  # per process and step
    params = 12 * cfg.n_layer * cfg.n_embd ** 2 + vocab_size * cfg.n_embd
    for batch in range(sequences, 0, -1):
        tokens = batch * cfg.block_size
        memory = tokens * (34 * cfg.n_layer * cfg.n_embd + 10 * vocab_size) + 16 * params
        if sequences % batch == 0 and tokens <= MICRO_BATCH_TOKENS and memory <= gpu_bytes / 2:
            return batch, sequences // batch * world_size
    return 1, sequences * world_size


def defaults():
    """The knobs above as a dict, name -> default value."""
    return {
        name: value
        for name, value in globals().items()
        if not name.startswith("_") and name.islower() and isinstance(value, (bool, int, float, str))
    }


def _typed(name, text, default):
    """Parse the command-line string `text` with the type of the knob's default."""
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise UserError(f"--{name}={text!r} is not a valid {kind.__name__} (default is {default!r})") from None


def _check_name(name, known):
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see config.py for the list"
        raise UserError(f"unknown config key '{name}'{hint}")


def _apply_preset(path, cfg):
    """Execute a preset file (plain `name = value` lines) and take its knobs; returns their names."""
    if not os.path.isfile(path):
        raise UserError(f"preset file {path} does not exist (presets live in presets/)")
    scope = {}
    with open(path) as f:
        source = f.read()
    try:
        exec(builtins.compile(source, path, "exec"), scope)  # `compile` here is the knob
    except Exception as e:
        raise UserError(f"preset file {path} failed to run: {type(e).__name__}: {e}") from e
    names = []
    for name, value in scope.items():
        if name.startswith("_") or not isinstance(value, (bool, int, float, str)):
            continue
        _check_name(name, cfg)
        if type(value) is not type(cfg[name]) and not (type(cfg[name]) is float and type(value) is int):
            raise UserError(f"{path}: {name} = {value!r} should be a {type(cfg[name]).__name__}")
        cfg[name] = type(cfg[name])(value)
        names.append(name)
    return names


def parse_args(argv, given=None):
    """Defaults, then preset files, then --name=value / --name value flags, in order given.

    Returns the knobs as attributes (cfg.batch_size), checked by validate(). The names that a
    preset or flag set are added to the set `given`, if one is passed (a fine-tune checks them
    against the architecture of the weights it starts from)."""
    cfg = defaults()
    names = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            if arg.endswith(".py"):
                names.update(_apply_preset(arg, cfg))
                i += 1
                continue
            raise UserError(f"unexpected argument '{arg}': use --name=value, or a preset file like presets/gpu.py")
        if "=" in arg:
            name, text = arg[2:].split("=", 1)
        else:
            name = arg[2:]
            if i + 1 >= len(argv):
                raise UserError(f"--{name} needs a value, as --{name}=VALUE")
            i += 1
            text = argv[i]
        name = name.replace("-", "_")  # --max-iters works as --max_iters
        _check_name(name, cfg)
        cfg[name] = _typed(name, text, cfg[name])
        names.add(name)
        i += 1
    if given is not None:
        given.update(names)
    if "max_minutes" in names and cfg["max_minutes"] <= 0:  # 0 is the default's "no budget", not a budget
        raise UserError(f"--max_minutes={cfg['max_minutes']} must be positive (leave it out to train for max_iters steps)")
    return validate(SimpleNamespace(**cfg))


def validate(cfg):
    """Refuse impossible settings before any work starts; returns cfg (choices lower-cased)."""
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name).lower()
        if value not in allowed:
            raise UserError(f"--{name}={getattr(cfg, name)!r} must be one of: {', '.join(allowed)}")
        setattr(cfg, name, value)
    if cfg.init_from.lower() in ("scratch", "resume"):
        cfg.init_from = cfg.init_from.lower()
    elif not cfg.init_from:  # anything else names the weights to fine-tune from (checked when they load)
        raise UserError("--init_from is empty; use scratch, resume, or the weights to fine-tune from (a run folder, "
                        "a checkpoint, a Hugging Face GPT-2 folder, or gpt2)")
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                 "eval_interval", "eval_iters", "log_interval", "checkpoint_interval"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name}={getattr(cfg, name)} must be at least 1")
    for name in ("max_iters", "warmup_iters", "lr_decay_iters"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name}={getattr(cfg, name)} must not be negative")
    if cfg.lr_decay_iters < cfg.warmup_iters:
        raise UserError(f"lr_decay_iters={cfg.lr_decay_iters} must be at least warmup_iters={cfg.warmup_iters}")
    if cfg.max_minutes < 0:
        raise UserError(f"--max_minutes={cfg.max_minutes} must not be negative (0: no time budget)")
    if cfg.max_minutes and cfg.lr_decay_iters <= cfg.warmup_iters:  # the budget holds warmup_iters/lr_decay_iters of warmup
        raise UserError(f"with --max_minutes the schedule is stretched over the budget, warmup taking warmup_iters / "
                        f"lr_decay_iters of it; lr_decay_iters={cfg.lr_decay_iters} must be more than "
                        f"warmup_iters={cfg.warmup_iters}")
    if cfg.n_embd % cfg.n_head and cfg.init_from in ("scratch", "resume"):  # a fine-tune's come from its source
        raise UserError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}; pick n_embd as a multiple of n_head")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout={cfg.dropout} must be in [0, 1)")
    for name in ("learning_rate", "muon_lr"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name}={getattr(cfg, name)} must be positive")
    if not 0.0 <= cfg.min_lr <= cfg.learning_rate:
        raise UserError(f"min_lr={cfg.min_lr} must be between 0 and learning_rate={cfg.learning_rate}")
    for name in ("beta1", "beta2", "muon_momentum"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise UserError(f"--{name}={getattr(cfg, name)} must be in [0, 1)")
    for name in ("weight_decay", "grad_clip", "muon_weight_decay"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name}={getattr(cfg, name)} must not be negative")
    return cfg
