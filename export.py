"""Export a trained model as a Hugging Face GPT-2 folder.

    python export.py --out_dir=out --to hf_model/
    python export.py --checkpoint out/ckpt.pt --to hf_model/ --force

The folder loads with `transformers.GPT2LMHeadModel.from_pretrained("hf_model/")` and gives the
same logits as our model. It holds config.json and model.safetensors, plus the run's tokenizer,
so that `AutoTokenizer.from_pretrained("hf_model/")` works too: the run's own tokenizer.json, or
GPT-2's files (vocab.json, merges.txt) when tiktoken's cache has them (see tokenizer.py). Neither
transformers nor safetensors is needed to export.
"""
import json
import os
import struct
import sys

import torch

from checkpoint import CONV1D_SUFFIXES, load_model
from common import ArgumentParser, UserError, atomic_write, make_output_dir, run_main
import tokenizer
from tokenizer import BPE_FILES, EOT_TEXT, TOKENIZER_FILE, cache_dir, cached_file

# tiktoken's cached file -> the name Hugging Face's GPT2Tokenizer looks for (same content)
TOKENIZER_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}
# The model options GPT-2 has no counterpart for, at GPT-2's values (zero_init_proj only changes the
# initial weights, and bias=False exports as zero biases: both stay exportable).
GPT2_OPTIONS = {"pos_emb": "learned", "qk_norm": False, "mlp": "gelu"}


def hf_config(config, eot):
    """GPT2Config fields for our GPTConfig, with end-of-text id `eot`. Our GELU is the tanh
    approximation ('gelu_new') and our LayerNorms use torch's default eps, 1e-5; the LM head is tied
    to the token embedding."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.n_embd,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def hf_state_dict(model):
    """Our weights under GPT-2's names and layouts, float32; the tied lm_head is left out (Hugging
    Face re-ties it to transformer.wte.weight on load)."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.detach().float().cpu()
        tensors[name] = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
    if not model.config.bias:  # bias=False: GPT-2 always has biases, and zeros are the same model
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                tensors.setdefault(f"{name}.bias", torch.zeros(module.weight.shape[0]))
    return {name: t.contiguous() for name, t in sorted(tensors.items())}


def write_safetensors(path, tensors):
    """Write float32 tensors in the safetensors format: an 8-byte little-endian header length, a
    JSON header (name -> dtype, shape, byte range), then the raw data. The format is this simple,
    so exporting needs no extra package."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the spec pads the header to 8 bytes with spaces

    def write(f):
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for t in tensors.values():
            f.write(t.numpy().astype("<f4", copy=False).tobytes())  # safetensors is little-endian

    atomic_write(path, write)


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def copy_tokenizer(folder, block_size, record, run_folder):
    """Write the run's tokenizer into folder: its own tokenizer.json, or GPT-2's BPE files from
    tiktoken's cache; False when GPT-2's are not there."""
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "model_max_length": block_size}
    if record["kind"] != "gpt2":
        tokenizer.copy_file(run_folder, folder)
        write_json(os.path.join(folder, "tokenizer_config.json"), {"tokenizer_class": "PreTrainedTokenizerFast",
                                                                   **special})
        return True
    sources = {name: cached_file(name) for name in BPE_FILES}
    if not all(os.path.isfile(path) for path in sources.values()):
        return False
    for name, path in sources.items():
        with open(path, "rb") as f:
            data = f.read()
        atomic_write(os.path.join(folder, TOKENIZER_FILES[name]), lambda f, data=data: f.write(data))
    write_json(os.path.join(folder, "tokenizer_config.json"), {"tokenizer_class": "GPT2Tokenizer", **special,
                                                               "add_prefix_space": False})
    return True


def parse_args(argv):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", default="out", help="the training run's folder")
    parser.add_argument("--checkpoint", help="weights to export (default: OUT_DIR/best_model_params.pt)")
    parser.add_argument("--to", required=True, metavar="FOLDER", help="the Hugging Face folder to write")
    parser.add_argument("--force", action="store_true", help="write into FOLDER even if it is not empty")
    return parser.parse_args(argv)


def main():
    args = parse_args(sys.argv[1:])
    if os.path.isfile(args.to):
        raise UserError(f"--to {args.to} is a file; give a folder")
    if os.path.isdir(args.to) and os.listdir(args.to) and not args.force:
        raise UserError(f"{args.to} is not empty; pass --force to overwrite its files, or choose another --to")
    checkpoint = args.checkpoint or os.path.join(args.out_dir, "best_model_params.pt")
    model = load_model(checkpoint, "cpu")
    record = tokenizer.run_record(checkpoint)
    tokenizer.check_file(os.path.dirname(checkpoint), record, f"the run of {checkpoint}")
    other = [f"{name}={getattr(model.config, name)!r}" for name, value in GPT2_OPTIONS.items()
             if getattr(model.config, name) != value]
    if other:
        raise UserError(f"{checkpoint} is not a GPT-2 model ({', '.join(other)}): export.py writes GPT-2's "
                        "architecture only, which has no such options; export a model trained without them")
    make_output_dir(args.to, "--to")

    write_safetensors(os.path.join(args.to, "model.safetensors"), hf_state_dict(model))
    eot = record["vocab_size"] - 1  # <|endoftext|> is the last id of GPT-2's vocabulary and of a learned one
    write_json(os.path.join(args.to, "config.json"), hf_config(model.config, eot if eot < model.config.vocab_size else None))
    print(f"exported {checkpoint} ({model.num_params() / 1e6:.2f}M parameters) to {args.to}: "
          "config.json, model.safetensors")
    if copy_tokenizer(args.to, model.config.block_size, record, os.path.dirname(checkpoint)):
        files = f"{TOKENIZER_FILE}" if record["kind"] != "gpt2" else "vocab.json, merges.txt"
        print(f"  with {tokenizer.describe(record)}: {files}, tokenizer_config.json")
    else:
        print(f"  without tokenizer files: vocab.bpe / encoder.json are not in {cache_dir()} "
              "(run `python tokenizer.py --install`, then export again)")
    print(f"load it with: transformers.GPT2LMHeadModel.from_pretrained({args.to!r})")


if __name__ == "__main__":
    run_main(main)
