"""Helpers every script shares: one-line errors for bad input, crash-safe file writes, device choice."""
import argparse
import contextlib
import difflib
import os
import sys
import tempfile
import traceback

# Set TRACEBACK=1 to see the full Python traceback behind an `error:` line (for a bug report).
TRACEBACK_ENV = "TRACEBACK"


class UserError(Exception):
    """Something the user can fix (a path, a flag, a file). Printed as one line, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one-line UserErrors, with close matches for unknown flags."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """Also accept the dashed spelling of every flag: --out-dir for --out_dir."""
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_args([underscored(arg) for arg in args], namespace)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            flags = [o for action in self._actions for o in action.option_strings]
            for arg in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(arg.split("=")[0], flags, n=3, cutoff=0.6)
                if close:
                    message += f" (did you mean {', '.join(close)}?)"
        raise UserError(f"{message}; see {self.prog} --help")


def first_line(exception):
    """The first line of an exception's message, for a one-line error that names its cause."""
    text = str(exception).strip()
    return text.splitlines()[0] if text else "no message"


def last_line(exception):
    """The last non-blank line of an exception's message: where load_state_dict names what did not fit."""
    lines = [line.strip() for line in str(exception).splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def underscored(arg):
    """`--out-dir=x` -> `--out_dir=x`: only the flag's name changes, never its value."""
    if not arg.startswith("--"):
        return arg
    name, equals, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + equals + value


def run_main(main):
    """Run a script's main(); a UserError becomes `error: ...` on stderr and exit status 2.

    The one line says what went wrong and what to do; with TRACEBACK=1 in the environment the
    full traceback, with the exception that caused the error, is printed above it."""
    try:
        main()
    except UserError as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C in train.py, or Ctrl-C anywhere else
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class WriteError(UserError):
    """A file could not be written (no space left, no permission, an I/O error); the file it was
    to replace, if any, is intact."""


def os_error_behind(exception):
    """The OSError that caused `exception` (itself, or one it was raised from or while handling)."""
    while exception is not None and not isinstance(exception, OSError):
        exception = exception.__cause__ or exception.__context__
    return exception


def atomic_write(path, write_fn):
    """Write `path` so that a crash at any moment leaves either the old file or the new one.

    `write_fn(f)` writes into a temporary file in the same folder (same file system, so the
    final rename is atomic); it is flushed and fsynced before it replaces `path`. When the
    operating system refuses (a full disk...), the temporary file is removed and WriteError says
    why; `path` is then untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp_path = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)
        cause = os_error_behind(e) if isinstance(e, Exception) else None  # torch.save wraps it in a RuntimeError
        if cause is None:
            raise
        raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from e
    # make the rename itself durable
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_output_dir(path, flag):
    """Create the folder `path` if needed; a UserError naming `flag` if it cannot be made or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {flag} {path}: {e.strerror}; choose another {flag}") from e
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable; choose another {flag}")


def remove_stale_temp_files(folder):
    """Delete temporary files that atomic_write left behind when a process was killed mid-write."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))


def native_bf16(device_type):
    """True where bfloat16 arithmetic runs in hardware: CUDA GPUs from Ampere on, CPUs with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated (many times slower than float32) or missing (MPS)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


@contextlib.contextmanager
def explain_compile_failures(compiled, instead):
    """torch.compile could not compile (no C++ compiler for a CPU, no Triton for a GPU, ...): one
    line that says so and what to do `instead`, not a page of compiler internals."""
    try:
        yield
    except Exception as e:
        import torch  # (torch._dynamo is imported by then: only torch.compile raises its errors)

        if not compiled or not isinstance(e, torch._dynamo.exc.TorchDynamoException):
            raise
        raise UserError(f"torch.compile failed: {first_line(e)}; {instead}") from e


def resolve_dtype(name, device, generating=False):
    """The torch dtype --dtype=name means on `device`. 'auto': bfloat16 on a GPU that computes it,
    else float16 on CUDA; float32 on a CPU or MPS, but bfloat16 for generating on a CPU that
    computes it (its weights are half the bytes to read for every token: faster there, see
    BENCHMARKS.md). A dtype the device cannot run at all is refused; one it emulates is not
    (warn_if_bf16_is_emulated says what it costs)."""
    import torch

    kind = device.split(":")[0]
    if name == "auto":
        if kind == "cuda":
            name = "bfloat16" if native_bf16("cuda") else "float16"
        else:
            name = "bfloat16" if generating and kind == "cpu" and native_bf16("cpu") else "float32"
    if name == "bfloat16" and (kind == "mps" or kind == "cuda" and not torch.cuda.is_bf16_supported()):
        raise UserError(f"--dtype=bfloat16 is not supported on this {kind} device; use --dtype=float16 or float32")
    return getattr(torch, name)


def warn_if_bf16_is_emulated(device_type):
    """One line on stderr for a user who asked for --dtype=bfloat16 where it is emulated."""
    if not native_bf16(device_type):
        faster = "float16" if device_type == "cuda" else "float32"
        device = {"cpu": "CPU", "cuda": "GPU"}.get(device_type, device_type)
        print(f"warning: this {device} has no bfloat16 arithmetic (it is emulated), so --dtype=bfloat16 runs "
              f"many times slower than --dtype={faster}, which is faster here (--dtype=auto picks it)",
              file=sys.stderr)


def resolve_device(name, local_rank=0, distributed=False):
    """The torch device to use; 'auto' = cuda > mps > cpu. Under DDP each rank takes its own GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={name} but CUDA is not available here; use --device=cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device={name} but MPS is not available here; use --device=cpu (or auto)")
    if kind == "cuda" and distributed:
        name = f"cuda:{local_rank}"
    return name
