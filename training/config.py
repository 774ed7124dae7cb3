"""
Training configuration: every knob with its default, and how a run sets it.

    python train.py config/train_gpt2_small_sophia.py --max_iters=2000 --learning_rate=3e-4

Config files (`config/*.py`) are plain Python assignments; `--key=value` overrides are parsed as Python
literals (strings may be left unquoted). Both apply in command-line order. Key names follow the official
Sophia code (github.com/Liuhong99/Sophia), so its published configs read the same; the few official keys
that differ (OFFICIAL_KEYS) are translated or ignored, each with a one-line note on stderr. An unknown key, a
value of the wrong type or an invalid choice stops the run with one line that names the key and what is valid.
This module needs only the standard library: tools that read logs import it without torch.
"""

import ast
import dataclasses
import difflib
import inspect
import os
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Optional

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
# The optimizers (training/optimizers.py builds each) and the paper config each runs with:
# config/train_gpt2_<size>_<paper>.py. signmomentum, the control for Sophia-G's Hessian, runs with Sophia-G's.
PAPER_CONFIGS = {"adamw": "adam", "lion": "lion", "sophiag": "sophia", "sophiah": "sophiah", "signmomentum": "sophia"}
OPTIMIZER_NAMES = tuple(PAPER_CONFIGS)
OUTPUT_LAYERS = ("torch", "liger")  # training/kernels.py computes each


def paper_config(optimizer_name, size="small"):
    """The path of an optimizer's paper config for a model size (small, medium, large), which may not exist."""
    return os.path.join(CONFIG_DIR, f"train_gpt2_{size}_{PAPER_CONFIGS[optimizer_name]}.py")


@dataclass
class Config:
    # --- I/O
    out_dir: str = "out"  # the run's folder: ckpt.pt, metrics.jsonl (relative to the working directory)
    eval_interval: int = 1000  # evaluate (and checkpoint) every this many iterations
    log_interval: int = 10  # print and log a training record every this many iterations
    eval_iters: int = 200  # batches per split in an evaluation
    # how the val split is scored: 'sample' = eval_iters random batches (nanoGPT); 'full' = every complete
    # block_size window of the split, in order: the same tokens and the same number for every run, seed and
    # number of processes (the train split is still sampled)
    val_eval: str = "sample"
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # else save at an evaluation only when val loss improved
    checkpoint_interval: int = 0  # save at evaluations only every this many iterations; 0 = at each one
    # 'scratch' (a new run), 'resume' (continue the run in out_dir from its checkpoint), 'auto' (resume if out_dir
    # has a checkpoint, else start afresh: one command a scheduler can requeue forever), or a checkpoint's path
    # ending in .pt: a new run that starts from its weights (fine-tuning; ours or the official code's), with a
    # fresh optimizer
    init_from: str = "scratch"
    # a run from scratch refuses an out_dir that holds a run; True moves that run's files into
    # out_dir/overwritten-<date-time>/ first (nothing is deleted)
    overwrite: bool = False
    # --- wandb
    wandb_log: bool = False  # also log to wandb (needs `wandb login`, or WANDB_MODE=offline)
    wandb_project: str = "sophia"
    wandb_run_name: str = "gpt2"
    wandb_group: str = ""  # runs to compare side by side, e.g. 'small-100k'
    # --- data
    dataset: str = "openwebtext"  # data/<dataset>/{train,val}.bin, in the working directory or the repository
    batch_size: int = 12  # micro-batch per process, in sequences
    block_size: int = 1024  # sequence length, in tokens
    total_bs: int = 480  # global batch in sequences: accumulation = total_bs / (batch_size * processes)
    # derived at start and logged: micro-steps per process per iteration (total_bs / (batch_size * processes)),
    # and per Hessian refresh (hess_total_bs / (batch_size * processes)); a value set here is replaced
    gradient_accumulation_steps: int = 0
    hess_accumulation_steps: int = 0
    # how micro-batch gradients add up: 'mean' = the gradient of the global batch's mean loss; 'sum' = each
    # micro-batch's mean loss backpropagated undivided (the official train_adam.py; its train_sophiag.py
    # divides), so the gradient is accumulation times larger before clipping
    grad_accumulation: str = "mean"
    # --- model
    n_layer: int = 12
    n_head: int = 12  # must divide n_embd
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # biases in the Linear and LayerNorm layers
    scale_attn_by_inverse_layer_idx: bool = True  # the official code's attention scaling by 1/(layer + 1)
    # --- optimizer
    optimizer_name: str = "sophiag"  # signmomentum: Sophia-G never refreshing its Hessian, a control
    learning_rate: float = 6e-4  # peak
    max_iters: int = 100000  # optimizer steps in the run
    weight_decay: float = 2e-1  # decoupled: p *= 1 - lr * weight_decay (biases and LayerNorms excluded)
    beta1: float = 0.965
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the global gradient norm at this value; 0 disables
    # Sophia's clipping scale (the paper's gamma); None: the optimizer's own default, as in the official code
    # (SophiaG 0.04, SophiaH 0.01). The paper configs set it (GPT-2 small: 0.05)
    rho: Optional[float] = None
    hess_interval: int = 10  # Sophia: refresh the Hessian EMA every this many iterations
    hess_total_bs: int = 0  # Sophia: sequences in a Hessian refresh batch; 0 = total_bs (official)
    # Sophia-G's refresh batch: 'fresh' = the next batch of data, an extra forward + backward (official);
    # 'train' = the first hess_total_bs sequences of the iteration's own batch, whose forward pass the
    # refresh shares: one extra backward (cheaper, and needs one more parameter-sized buffer)
    gnb_batch: str = "fresh"
    hessian_bias_correction: bool = False  # Sophia: divide h by 1 - beta2^refreshes (not in the official code)
    # --- learning rate schedule: linear warmup, then cosine to min_lr at lr_decay_iters
    decay_lr: bool = True  # False: learning_rate throughout
    warmup_iters: int = 2000  # 0 = no warmup
    lr_decay_iters: int = 100000
    min_lr: float = 1.5e-5
    # --- system
    backend: str = "auto"  # DDP backend: 'auto' = nccl on CUDA, gloo on CPU
    # seconds a process waits at a collective (gradient all-reduce, checkpoint, stop agreement) before it
    # gives up on the others: bounds the hang when a process or node dies. Raise it where rank 0 may take
    # longer to write a checkpoint or compile (max-autotune) than the others take to reach the next one
    dist_timeout: float = 120.0
    device: str = "auto"  # 'auto' = cuda if available, else cpu; or 'cpu', 'cuda', 'cuda:1', ...
    # autocast dtype; weights are always fp32. float16 (for GPUs without bf16, the official code's default
    # there) scales the loss with a GradScaler and estimates the Hessian from unscaled gradients
    dtype: str = "bfloat16"
    compile: Optional[bool] = None  # torch.compile the model; None = on for CUDA, off for CPU
    compile_mode: str = "default"  # torch.compile's mode, e.g. 'max-autotune-no-cudagraphs' (slow to compile)
    # output layer + cross-entropy (kernels.py): 'torch' (the logits materialised; the fastest at the paper
    # configs' micro-batch) or 'liger' (Liger-Kernel's fused kernel, CUDA only: the logits never exist, so
    # 40-45% less memory and larger micro-batches)
    output_layer: str = "torch"
    fp8: bool = False  # torchao float8 matmuls in the transformer's Linear layers (CUDA, opt-in; kernels.py)
    seed: int = 1337
    peak_flops: float = 989e12  # for MFU: H100 SXM bf16 dense; A100 bf16: 312e12


CHOICES = {
    "optimizer_name": OPTIMIZER_NAMES,
    "init_from": ("scratch", "resume", "auto"),
    "val_eval": ("sample", "full"),
    "dtype": ("bfloat16", "float16", "float32"),
    "gnb_batch": ("fresh", "train"),
    "grad_accumulation": ("mean", "sum"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "output_layer": OUTPUT_LAYERS,
}
# Keys of the official code (its config files and the settings at the top of its train_sophiag.py and
# train_adam.py) that Config lacks: our key, or None where the key is ignored, and the note saying so.
OFFICIAL_KEYS = {
    "interval": ("hess_interval", "config key 'interval' is the official code's Hessian refresh interval "
                                  "(refresh every this many iterations): read as hess_interval"),
    "variant": (None, "config key 'variant' is ignored: the official train_sophiag.py and train_adam.py set it "
                      "(to 4) and never read it"),
    "gamma": (None, "config key 'gamma' is ignored: in the official train_adam.py only a SophiaG would read it "
                    "(an early form of its clipping bound), and AdamW does not; Sophia's clipping scale here is rho"),
}
# Values of Config keys that the official code accepts and this project does not, and why (for the error).
OFFICIAL_CHOICES = {
    "init_from": (("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"),
                  "the official code's 'gpt2*' values start from OpenAI's GPT-2 weights through Hugging Face "
                  "transformers, which this project does not use"),
}
POSITIVE = ("eval_interval", "log_interval", "eval_iters", "batch_size", "block_size", "total_bs",
            "n_layer", "n_head", "n_embd", "hess_interval", "learning_rate", "max_iters", "lr_decay_iters",
            "dist_timeout")
NON_NEGATIVE = ("warmup_iters", "min_lr", "weight_decay", "grad_clip", "rho", "hess_total_bs", "checkpoint_interval")
FRACTIONS = ("dropout", "beta1", "beta2")  # in [0, 1)


class ConfigError(ValueError):
    pass


# what each field type accepts, and how an error names it
TYPE_RULES = {
    int: ((int,), "an int"),
    float: ((int, float), "a number"),
    bool: ((bool,), "True or False"),
    str: ((str,), "a string"),
    Optional[bool]: ((bool, type(None)), "True, False or None"),
    Optional[float]: ((int, float, type(None)), "a number or None"),
}


def _field_types():
    return {f.name: f.type for f in dataclasses.fields(Config)}


def _check_type(key, value, expected):
    allowed, name = TYPE_RULES[expected]
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        raise ConfigError(f"config key '{key}' must be {name}, got {type(value).__name__} {value!r}")


def _unknown_key(key):
    keys = list(_field_types())
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; valid keys: {', '.join(keys)}")


def describe_keys():
    """Every key with its default and meaning, for --help: the meaning is the key's comment in Config (the
    comment lines just above it, then the one on its line); '# ---' comments head the sections."""
    defaults = dataclasses.asdict(Config())
    lines, above = [], []
    for line in inspect.getsource(Config).splitlines()[2:]:  # after the decorator and the class line
        text = line.strip()
        if text.startswith("# ---"):
            lines.append(f"\n{text.removeprefix('# ---').strip()}")
        elif text.startswith("#"):
            above.append(text.removeprefix("#").strip())
        elif text:
            key, _, inline = text.partition("  # ")
            key = key.split(":")[0]
            choices = f"  ({' | '.join(CHOICES[key])})" if key in CHOICES else ""
            lines.append(f"  --{key}={defaults[key]!r}{choices}")
            meaning = " ".join(above + [inline] if inline else above)
            lines += textwrap.wrap(meaning, 100, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                   break_on_hyphens=False)
            above = []
    return "\n".join(lines)


def parse_value(key, text):
    """The value of config key `key` written as text: a Python literal, or the text itself (so
    --dataset=enwiki needs no quotes); a string key keeps its text as written unless it is quoted
    (--wandb_run_name=2024 is the name "2024")."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return text if _field_types().get(key) is str and not isinstance(value, str) else value


def read_config_file(path):
    """The plain assignments of a config file (modules it imports and _private names are skipped). A
    relative path not found from the working directory is looked up in the repository (config/...)."""
    in_repo = os.path.join(os.path.dirname(CONFIG_DIR), path)
    if not os.path.exists(path) and not os.path.isabs(path) and os.path.exists(in_repo):
        path = in_repo
    if not path.endswith(".py"):
        raise ConfigError(f"config file {path}: config files are Python (`key = value` lines, as in config/*.py), "
                          f"not {os.path.splitext(path)[1] or 'a file without .py'}; write it as a .py file")
    try:
        source = open(path).read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    namespace = {}
    try:
        tree = ast.parse(source, path)
        for node in ast.walk(tree):  # `key: value` is valid Python that sets nothing (YAML's syntax)
            if isinstance(node, ast.AnnAssign) and node.value is None:
                raise ConfigError(f"config file {path} line {node.lineno}: `{ast.get_source_segment(source, node)}` "
                                  f"sets nothing; write `key = value`")
        exec(compile(tree, path, "exec"), namespace)
    except ConfigError:
        raise
    except Exception as e:  # any error in the file: report it in one line
        where = f" line {e.lineno}" if isinstance(e, SyntaxError) else ""
        raise ConfigError(f"config file {path}{where}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def load_config(argv):
    """Config from defaults, then config files and --key=value overrides in command-line order."""
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"expected --key=value, got '{arg}'")
            _assign(values, key, parse_value(key, text))
        else:
            for key, value in read_config_file(arg).items():
                _assign(values, key, value)
    return make_config(**values)


def _assign(values, key, value):
    """values[key] = value, moved to the end: the dict then lists the keys in the order they were last set, so
    that translating official keys in that order (make_config) lets the later of interval and hess_interval win."""
    values.pop(key, None)
    values[key] = value


def translate_official_keys(values):
    """`values` with the official code's keys (OFFICIAL_KEYS) renamed to ours or dropped, each with its note; where
    two keys become one, the later value wins."""
    translated = {}
    for key, value in values.items():
        if key in OFFICIAL_KEYS:
            ours, note_text = OFFICIAL_KEYS[key]
            note(note_text)
            if ours is None:
                continue
            key = ours
        translated[key] = value
    return translated


def note(text):
    """A one-line note on stderr about how the config was read (from one process under torchrun)."""
    if os.environ.get("RANK", "0") == "0":  # under torchrun every process reads the config: one says it
        print(f"note: {text}", file=sys.stderr)


def make_config(**values):
    """A validated Config from keyword values (unknown keys, wrong types and bad choices raise); the official
    code's keys are translated first."""
    values = translate_official_keys(values)
    types_ = _field_types()
    for key, value in values.items():
        if key not in types_:
            raise _unknown_key(key)
        _check_type(key, value, types_[key])
        if types_[key] in (float, Optional[float]) and value is not None:
            values[key] = float(value)
    cfg = Config(**values)
    for key, choices in CHOICES.items():
        value = getattr(cfg, key)
        if value not in choices and not (key == "init_from" and value.endswith(".pt")):
            official, reason = OFFICIAL_CHOICES.get(key, ((), ""))
            why = f": {reason}" if value in official else ""
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}{why}")
    check_values(cfg)
    return cfg


def check_values(cfg):
    """Values no run can use: each a one-line ConfigError that names the key."""
    for keys, valid, what in ((POSITIVE, lambda v: v > 0, "positive"), (NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
                              (FRACTIONS, lambda v: 0 <= v < 1, "in [0, 1)")):
        for key in keys:
            if getattr(cfg, key) is not None and not valid(getattr(cfg, key)):
                raise ConfigError(f"config key '{key}' must be {what}, got {getattr(cfg, key)}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head} (each head gets "
                          f"n_embd / n_head channels); change one of them")
    if not cfg.out_dir.strip():
        raise ConfigError("config key 'out_dir' is empty; name the run's folder, e.g. --out_dir=out-mine")
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr={cfg.min_lr:g} is above learning_rate={cfg.learning_rate:g}: the schedule would "
                          f"rise instead of decaying; set min_lr <= learning_rate (the paper configs: about "
                          f"learning_rate / 20 to / 40)")
    if cfg.fp8 and cfg.optimizer_name == "sophiah":
        raise ConfigError("fp8=True cannot run Sophia-H's refresh: float8 matmuls have no double backward")
    if cfg.decay_lr and cfg.lr_decay_iters < cfg.warmup_iters:
        raise ConfigError(f"lr_decay_iters={cfg.lr_decay_iters} must be at least warmup_iters="
                          f"{cfg.warmup_iters}: the cosine decay runs from one to the other")
