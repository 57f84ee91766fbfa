"""Check a pre-training config and resolve what it names, before anything heavy starts.

Everything a user can get wrong (model config, vocab, data folder, shard layout, batch arithmetic,
output folder) is checked here and reported as a ``BadInputError``: one line naming the input,
exit status 2, before a model is built or a device is touched. What the data decides is resolved here
too: packed or not (the shards say; --enable_packed_data_mode may only confirm it), the samples per row
and so the accumulation steps (``PretrainingConfig.accumulation_steps``), the dynamic-masking rule.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from central.checkpoint import list_checkpoints
from central.errors import BadInputError
from data.vocab import load_vocab
from pretraining.bert_config import PRESETS, BertConfig, count_vocab
from pretraining.config import PretrainingConfig
from pretraining.dynamic_masking import MaskingRule, rule_for_vocab
from pretraining.model_names import ModelKind, resolve_model_name
from pretraining.phases import micro_batch
from pretraining.shard_layout import (SamplesPerRow, ShardError, ShardShape, check_layout, detect_samples_per_pack,
                                      list_training_files, samples_per_row)


@dataclass(frozen=True)
class RunPlan:
    """What a checked config names, resolved: the model shape, the vocab, the shards and what they imply."""
    model_config: BertConfig
    vocab_file: Optional[Path]     # copied into the HF export (None: no export)
    files: List[Path]              # every training shard, sorted
    shape: ShardShape              # shape.packed: the shards are packed
    samples_per_row: SamplesPerRow  # 1 unpacked; the packs' average
    accumulation_steps: int        # micro-batches per optimizer step (PretrainingConfig.accumulation_steps)
    masking: Optional[MaskingRule] = None  # --dynamic_masking

    @property
    def file_names(self) -> List[str]:
        return [path.name for path in self.files]

    def samples_per_step(self, micro_batch: int, world_size: int) -> float:
        """Samples one optimizer step sees over all ranks (expected: packs hold a varying number)."""
        return micro_batch * self.accumulation_steps * self.samples_per_row.value * world_size

    def data_parameters(self, micro_batch: int, world_size: int) -> dict:
        """What the data makes of the batch, for the log's PARAMETER record."""
        return {"packed_data": self.shape.packed, "samples_per_row": self.samples_per_row.value,
                "samples_per_optimizer_step": self.samples_per_step(micro_batch, world_size),
                "dynamic_masking": self.masking is not None}

    def packing_line(self, cfg: PretrainingConfig, world_size: int) -> str:
        """One line on how packed data changes the step (the accumulation rule applied)."""
        expected = self.samples_per_step(cfg.micro_batch, world_size)
        line = (f"packed shards: {self.samples_per_row.line}; micro-batch {cfg.micro_batch} packs, accumulation "
                f"{self.accumulation_steps} (--gradient_accumulation_steps {cfg.gradient_accumulation_steps} / "
                f"{self.samples_per_row.value:.2f}, rounded): about {expected:.0f} samples per optimizer step over "
                f"all ranks, {cfg.train_batch_size * world_size} unpacked")
        if expected > 1.5 * cfg.train_batch_size * world_size:
            line += ("; warning: fewer micro-batches are impossible, so each step sees more samples than the "
                     "unpacked batch (raise --gradient_accumulation_steps with a smaller micro-batch to keep it)")
        return line


def resolve_config(config_file: str, vocab_file: Optional[str], input_dir: str) -> Tuple[BertConfig, Optional[Path]]:
    """``--config_file``: a bert_config.json (its vocab_size as given; also a model folder's) or a preset name
    (vocab_size from the vocab.txt: ``--vocab_file``, else ``<input_dir>/vocab.txt``, else the preset's 30522).
    The name is classified by ``pretraining.model_names``, as the launcher does."""
    vocab: Optional[Path] = Path(vocab_file) if vocab_file else None
    if vocab is not None and not vocab.is_file():
        raise BadInputError(f"--vocab_file {vocab}: no such file")
    if vocab is None and (Path(input_dir) / "vocab.txt").is_file():
        vocab = Path(input_dir) / "vocab.txt"
    vocab_entries = count_vocab(vocab) if vocab is not None else None
    if vocab_entries == 0:
        raise BadInputError(f"vocab file {vocab} is empty")

    model = resolve_model_name(config_file, flag="--config_file", hub=False)
    if model.kind is ModelKind.PRESET:
        config = PRESETS[config_file]
        if vocab_entries:
            config = config.with_vocab_size(vocab_entries)
    else:
        shape = model.shape_file()
        if shape is None:
            raise BadInputError(f"--config_file {config_file}: a checkpoint has no shape; give a bert_config.json "
                                f"or a preset ({', '.join(PRESETS)})")
        try:
            with open(shape, encoding="utf-8") as handle:
                values = json.load(handle)
            config = BertConfig.from_dict(values)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as err:
            raise BadInputError(f"--config_file {config_file}: not a valid bert_config.json ({err})") from None
        if vocab_entries and vocab_entries > config.vocab_size:
            raise BadInputError(f"--config_file {config_file}: vocab_size {config.vocab_size} is smaller than "
                                f"the {vocab_entries} entries of {vocab}")
    if config.hidden_size % config.num_attention_heads:
        raise BadInputError(f"--config_file {config_file}: hidden_size {config.hidden_size} is not a multiple "
                            f"of num_attention_heads {config.num_attention_heads}")
    return config, vocab


def _check_writable(directory: Path, flag: str = "--output_dir") -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise BadInputError(f"{flag} {directory}: not writable ({err.strerror or err})") from None


def plan_run(cfg: PretrainingConfig) -> RunPlan:
    config, vocab = resolve_config(cfg.config_file, cfg.vocab_file, cfg.input_dir)
    positive = {"--train_batch_size": cfg.train_batch_size, "--gradient_accumulation_steps":
                cfg.gradient_accumulation_steps, "--max_steps": cfg.max_steps, "--max_seq_length":
                cfg.max_seq_length, "--max_predictions_per_seq": cfg.max_predictions_per_seq,
                "--learning_rate": cfg.learning_rate, "--log_freq": cfg.log_freq,
                "--num_steps_per_checkpoint": cfg.num_steps_per_checkpoint}
    for flag, value in positive.items():
        if not value > 0:
            raise BadInputError(f"{flag} {value}: must be positive")
    micro_batch(cfg.train_batch_size, cfg.gradient_accumulation_steps)  # the divisibility check
    if not 0.0 <= cfg.warmup_proportion <= 1.0:
        raise BadInputError(f"--warmup_proportion {cfg.warmup_proportion}: must lie in [0, 1]")
    if cfg.max_seq_length > config.max_position_embeddings:
        raise BadInputError(f"--max_seq_length {cfg.max_seq_length} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings}")
    if cfg.phase2 and cfg.phase1_end_step < 0:
        raise BadInputError(f"--phase1_end_step {cfg.phase1_end_step}: must not be negative")

    files = list_training_files(cfg.input_dir)  # ShardError (a BadInputError) names the folder or shard
    shape = ShardShape(cfg.max_seq_length, cfg.max_predictions_per_seq, config.vocab_size,
                       config.type_vocab_size, detect_samples_per_pack(files))
    _check_packed_mode(cfg, shape)
    for path in files:  # metadata only: a wrong folder fails now, not hours later
        check_layout(path, shape)
    per_row = samples_per_row(cfg.input_dir, files, shape)
    masking = _masking_rule(cfg, vocab) if cfg.dynamic_masking else None

    output_dir = cfg.checkpoint_dir
    _check_writable(output_dir)
    existing = list_checkpoints(output_dir)
    if existing and not cfg.resume_from_checkpoint and not cfg.skip_checkpoint:
        # A fresh run would interleave its checkpoints with these (and keep-last-3 would delete its own).
        raise BadInputError(f"--output_dir {output_dir} already holds checkpoints (newest {existing[-1][1].name}): "
                            f"add --resume_from_checkpoint to continue them, or use an empty folder")
    _check_writable(cfg.hf_export_root, "--hf_export_dir")
    return RunPlan(model_config=config, vocab_file=vocab, files=files, shape=shape, samples_per_row=per_row,
                   accumulation_steps=cfg.accumulation_steps(per_row.value), masking=masking)


def _check_packed_mode(cfg: PretrainingConfig, shape: ShardShape) -> None:
    """--enable_packed_data_mode may say what the shards are, never the opposite."""
    wanted = cfg.packed_mode_requested
    if wanted is not None and wanted != shape.packed:
        found = "packed" if shape.packed else "unpacked (no next_sentence_positions)"
        hint = ("pack them with python -m data.pack_pretraining_data, or" if wanted else "give the unpacked folder, or")
        raise ShardError(f"--enable_packed_data_mode {cfg.enable_packed_data_mode}: the shards in {cfg.input_dir} "
                         f"are {found}; {hint} leave the flag out to read them as they are")


def _masking_rule(cfg: PretrainingConfig, vocab: Optional[Path]) -> MaskingRule:
    """--dynamic_masking draws from the vocab the shards were made with: its size and special ids."""
    if vocab is None:
        raise BadInputError(f"--dynamic_masking needs the vocab the shards were made with: give --vocab_file or "
                            f"put its vocab.txt in {cfg.input_dir}")
    return rule_for_vocab(load_vocab(vocab), cfg.max_predictions_per_seq)  # load_vocab: bad input in one line
