"""Causal-LM training: from scratch or fine-tuning, full or LoRA, resumable step for step.

Texts (files, directories, globs, or JSONL with a "text" field) are split into train and held-out
by a stable hash of their name, tokenized, joined with <|endoftext|> and cut into fixed-length
blocks. Each epoch visits the blocks in an order drawn from the seed. AdamW (weight decay on
matrices only), linear warmup then cosine decay, gradient clipping and accumulation, optional bf16
autocast and gradient checkpointing. A checkpoint holds the model in transformers' format (or the
LoRA adapters) plus optimizer, RNG and data position, so a killed run resumes with the same
subsequent losses as one that was never interrupted.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import math
import os
import random
import re
import time
import zlib
from dataclasses import asdict, dataclass, field

import torch

from . import lora
from .config import CodeGenConfig
from .model import CodeGenForCausalLM
from .progress import Progress
from .tokenizer import CodeGenTokenizerFast

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
LAST_FILE = "last-checkpoint"


@dataclass
class TrainConfig:
    out: str
    data: list[str]
    exclude: list[str] = field(default_factory=list)  # glob patterns of paths to leave out
    model: str | None = None  # fine-tune this checkpoint...
    config: str | None = None  # ...or train from scratch: a preset name or a config.json
    tokenizer: str | None = None
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "float32"  # autocast dtype for the forward pass: float32 or bfloat16
    gradient_checkpointing: bool = False
    eval_fraction: float = 0.05
    eval_every: int = 100
    eval_batches: int = 16
    save_every: int = 200
    seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv_proj", "out_proj"])
    resume: bool = True

    def validate(self) -> None:
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of --model (fine-tune) or --config (train from scratch)")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError("lr must be > 0 and min_lr >= 0")


# ----------------------------------------------------------------------------- data
def collect_texts(paths: list[str], exclude: list[str] = ()) -> list[tuple[str, str]]:
    """(name, text) for files, directories (their *.py files), globs, and JSONL files of {"text": ...};
    paths matching an `exclude` glob are left out. A JSONL record may carry a "name" (the held-out split
    hashes it), so texts derived from one source file land on the same side of the split."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, "**", "*.py"), recursive=True))
        elif any(c in p for c in "*?["):
            matched = sorted(glob.glob(p, recursive=True))
            if not matched:
                raise FileNotFoundError(f"--data {p}: the pattern matches no file")
            files += matched
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"--data {p}: no such file or directory")
    files = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in exclude)]
    texts = []
    for f in files:
        if f.endswith(".jsonl"):
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh):
                    if line.strip():
                        record = json.loads(line)
                        if "text" not in record:
                            raise ValueError(f"{f}, line {n + 1}: a JSONL record needs a 'text' field")
                        texts.append((str(record.get("name", f"{f}:{n}")), record["text"]))
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                texts.append((f, fh.read()))
        except UnicodeDecodeError:
            logger.info("skipping %s: not UTF-8", f)
    if not texts:
        raise ValueError(f"no training texts found in {paths}")
    return texts


def split(texts: list[tuple[str, str]], fraction: float) -> tuple[list[str], list[str]]:
    """Held-out by a stable hash of the name, so the split does not depend on file order or seed."""
    train, held = [], []
    for name, text in texts:
        (held if zlib.crc32(name.encode()) % 10_000 < fraction * 10_000 else train).append(text)
    return train, held


def pack(texts: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """(N, seq_len) blocks of the texts joined by <|endoftext|>; the tail that does not fill a block is dropped."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for chunk in (texts[i:i + 256] for i in range(0, len(texts), 256)):
        for row in tokenizer(chunk, return_attention_mask=False)["input_ids"]:
            ids += row + [eos]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


class Batches:
    """Blocks in a seeded order per epoch; the position is part of a checkpoint."""

    def __init__(self, blocks: torch.Tensor, seed: int) -> None:
        if len(blocks) == 0:
            raise ValueError("the training data is shorter than one sequence: lower --seq-len or add data")
        self.blocks, self.seed = blocks, seed
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))

    def next(self, batch_size: int) -> torch.Tensor:
        rows = []
        while len(rows) < batch_size:
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
            rows.append(self._order[self.cursor])
            self.cursor += 1
        return self.blocks[torch.stack(rows)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation()


# ----------------------------------------------------------------------------- optimisation
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (and embeddings); not biases, LayerNorm parameters or 1-D tensors."""
    params = {id(p): (n, p) for n, p in model.named_parameters() if p.requires_grad}  # tied weights once
    decay = [p for n, p in params.values() if p.dim() >= 2]
    no_decay = [p for n, p in params.values() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate_loss(model, blocks: torch.Tensor, batch_size: int, max_batches: int | None, dtype: torch.dtype,
                  progress: bool | None = False) -> float:
    """Mean next-token loss over held-out blocks (token-weighted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(blocks) if max_batches is None else min(len(blocks), max_batches * batch_size)
    with Progress(n, "scoring", "sequence", enabled=progress) as bar:
        for i in range(0, n, batch_size):
            x = blocks[i:i + batch_size]
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = model(x, labels=x, use_cache=False).loss
            total += float(loss) * x.numel()
            count += x.numel()
            bar.update(len(x))
    model.train(was_training)
    return total / max(count, 1)


# ----------------------------------------------------------------------------- checkpoints
def _save(model, tokenizer, optimizer, batches, step, history, cfg, directory) -> None:
    os.makedirs(directory, exist_ok=True)
    if cfg.lora_rank:
        lora.save_adapters(model, directory, cfg.model)
    else:
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    state = {"step": step, "optimizer": optimizer.state_dict(), "data": batches.state_dict(),
             "torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1]), "history": history,
             "config": asdict(cfg)}
    torch.save(state, os.path.join(directory, STATE_FILE))
    tmp = os.path.join(cfg.out, LAST_FILE + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(os.path.basename(directory))
    os.replace(tmp, os.path.join(cfg.out, LAST_FILE))  # the pointer moves only once the checkpoint is complete


STATE_KEYS = ("step", "optimizer", "data", "torch_rng", "python_rng", "history")


def _read_state(directory: str) -> dict:
    """A checkpoint's trainer state; ValueError saying what is wrong with it."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{STATE_FILE} is missing")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # truncated (EOFError, RuntimeError), corrupt, or not ours (UnpicklingError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{STATE_FILE} is unreadable ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise ValueError(f"{STATE_FILE} lacks {', '.join(k for k in STATE_KEYS if not isinstance(state, dict) or k not in state)}")
    return state


def last_checkpoint(out: str) -> tuple[str, dict] | None:
    """The newest intact checkpoint in `out` and its trainer state, or None when `out` has none. A
    newer checkpoint with a missing or damaged state file is passed over with a warning naming it;
    when every checkpoint is damaged, ValueError (resume cannot be honoured; --no-resume starts over)."""
    names = sorted((n for n in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", n)), reverse=True) if os.path.isdir(out) else []
    pointer = os.path.join(out, LAST_FILE)
    if os.path.isfile(pointer):
        with open(pointer) as fh:
            named = fh.read().strip()
        if named in names:  # the pointer's checkpoint first (it moves only once a checkpoint is complete)
            names.remove(named)
            names.insert(0, named)
    problems = []
    for name in names:
        directory = os.path.join(out, name)
        try:
            state = _read_state(directory)
        except ValueError as e:
            problems.append(f"{name}: {e}")
            logger.warning("%s: %s; looking for an older checkpoint", directory, e)
            continue
        if problems:
            logger.warning("resuming from %s (%s)", directory, "; ".join(problems))
        return directory, state
    if problems:
        raise ValueError(f"{out}: no intact checkpoint to resume from ({'; '.join(problems)}); pass --no-resume to start over")
    return None


def build_model(cfg: TrainConfig, resume_dir: str | None) -> CodeGenForCausalLM:
    from .quant.convert import spec_of

    spec = spec_of(CodeGenConfig.from_pretrained(cfg.model)) if cfg.model is not None else None
    if spec is not None:
        raise ValueError(f"{cfg.model} is a quantized checkpoint ({spec.name}); "
                         f"training needs the unquantized one (quantize after training, with `codegen quantize`)")
    if cfg.model is not None:
        source = resume_dir if resume_dir and not cfg.lora_rank else cfg.model
        model = CodeGenForCausalLM.from_pretrained(source)
    elif resume_dir:
        model = CodeGenForCausalLM.from_pretrained(resume_dir)
    else:
        config = CodeGenConfig.from_pretrained(cfg.config) if cfg.config.endswith(".json") else CodeGenConfig.preset(cfg.config)
        model = CodeGenForCausalLM(config)
    if cfg.lora_rank:
        if resume_dir:
            lora.load_adapters(model, resume_dir)
        else:
            lora.apply_lora(model, cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets))
    return model


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, progress: bool | None = None, stop_after: int | None = None) -> dict:
    """Train until cfg.max_steps (or `stop_after` steps of this call, to simulate a kill);
    returns {"history": [(step, loss)], "eval": [(step, loss, perplexity)], "tokens_per_second": ...}."""
    cfg.validate()
    os.makedirs(cfg.out, exist_ok=True)
    found = last_checkpoint(cfg.out) if cfg.resume else None
    resume_dir, state = found if found is not None else (None, None)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = CodeGenTokenizerFast.from_pretrained(cfg.tokenizer or cfg.model or resume_dir)
    model = build_model(cfg, resume_dir)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} rows")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32

    train_texts, held_texts = split(collect_texts(cfg.data, cfg.exclude), cfg.eval_fraction)
    batches = Batches(pack(train_texts, tokenizer, cfg.seq_len), cfg.seed)
    held = pack(held_texts, tokenizer, cfg.seq_len) if held_texts else torch.empty(0, cfg.seq_len, dtype=torch.long)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("%d training blocks of %d tokens, %d held out; %d trainable parameters",
                len(batches.blocks), cfg.seq_len, len(held), trainable)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)

    step, history, evals = 0, [], []
    if resume_dir:
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["data"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        step, history = state["step"], [tuple(h) for h in state["history"]]
        logger.info("resuming from %s at step %d", resume_dir, step)

    model.train()
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    start_step, t0 = step, time.perf_counter()
    bar = Progress(cfg.max_steps, "training", "step", initial=step, enabled=progress)
    while step < cfg.max_steps:
        if stop_after is not None and step - start_step >= stop_after:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = 0.0
        for _ in range(cfg.grad_accum):
            x = batches.next(cfg.batch_size)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = model(x, labels=x, use_cache=False).loss / cfg.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        history.append((step, total))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{(step - start_step) * tokens_per_step / elapsed:.0f}", lr=f"{lr_at(step - 1, cfg):.2e}")
        bar.update(1)
        if len(held) and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            held_loss = evaluate_loss(model, held, cfg.batch_size, cfg.eval_batches, dtype)
            evals.append((step, held_loss, math.exp(min(held_loss, 50))))
            bar.note(f"step {step}: held-out loss {held_loss:.4f}, perplexity {evals[-1][2]:.2f}")
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            _save(model, tokenizer, optimizer, batches, step, history, cfg, os.path.join(cfg.out, f"checkpoint-{step:06d}"))
    bar.close()
    elapsed = time.perf_counter() - t0
    if step == cfg.max_steps:  # the final model, ready to use: OUT is a checkpoint directory itself
        if cfg.lora_rank:
            lora.save_adapters(model, cfg.out, cfg.model)
        else:
            model.save_pretrained(cfg.out)
        tokenizer.save_pretrained(cfg.out)
    return {"history": history, "eval": evals, "steps": step,
            "tokens_per_second": (step - start_step) * tokens_per_step / elapsed if elapsed > 0 else 0.0}


def perplexity(model, tokenizer, paths: list[str], seq_len: int = 512, batch_size: int = 8) -> tuple[float, int]:
    """Mean next-token loss and the number of tokens scored over the given texts."""
    blocks = pack([t for _, t in collect_texts(paths)], tokenizer, min(seq_len, model.config.n_positions))
    if len(blocks) == 0:
        raise ValueError("the texts are shorter than one sequence; lower --seq-len")
    return evaluate_loss(model, blocks, batch_size, None, torch.float32, progress=None), blocks.numel()
