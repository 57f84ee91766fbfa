"""BERT pre-training (masked LM + next-sentence prediction) with LAMB, one phase per invocation.

    python -m pretraining.run_pretraining --input_dir DIR --config_file bert_config.json \
        --output_dir results/checkpoints [--phase2 ...]

The argument names are those of NVIDIA's/Habana's run_pretraining.py, so existing command lines keep
working. The defaults that depend on the phase (sequence length, masked positions, learning rate, batch,
steps, warm-up, checkpoint interval) come from ``pretraining.phases``: phase 1's, or phase 2's with
``--phase2``. This parser is the one source of truth for the script's flags: ``demo_bert.py pretraining``
copies its declarations and builds each phase's argv for it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from central.cli_options import add_runtime_options, whole_number
from central.errors import run_main
from central.mode_environment import export_mode_environment
from pretraining.phases import PHASES, SCRIPT_PHASE_OPTIONS, phase_default


def packed_data_mode(text: str) -> str:
    """--enable_packed_data_mode's value, spelled as Habana's string flag takes it: "True" or "False"."""
    words = {"true": "True", "1": "True", "yes": "True", "false": "False", "0": "False", "no": "False"}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"{text!r}: expected True or False")
    return words[text.lower()]


class PhaseDefaultsParser(argparse.ArgumentParser):
    """Fills the phase-dependent options the command line left out with phase 1's or (--phase2) phase 2's value."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        phase = 2 if getattr(namespace, "phase2", False) else 1
        for dest in SCRIPT_PHASE_OPTIONS:
            if getattr(namespace, dest, None) is None:
                setattr(namespace, dest, phase_default(phase, dest))
        return namespace, rest


class PhaseDefaultsHelp(argparse.HelpFormatter):
    """-h shows the phase-dependent defaults (the help strings stay free of them: the launcher copies them)."""

    def _get_help_string(self, action):
        if action.dest in SCRIPT_PHASE_OPTIONS:
            return (f"{action.help} (default: {phase_default(1, action.dest)}; "
                    f"with --phase2 {phase_default(2, action.dest)})")
        return action.help


def build_parser() -> argparse.ArgumentParser:
    parser = PhaseDefaultsParser(
        prog="python -m pretraining.run_pretraining",
        description="Pre-train BERT (MLM + NSP) on HDF5 shards for one phase.",
        formatter_class=PhaseDefaultsHelp,
    )
    # Required (reference).
    parser.add_argument("--input_dir", required=True, help="folder of HDF5 shards (files named *training*)")
    parser.add_argument("--config_file", required=True,
                        help="the model's shape: a bert_config.json, a model folder holding one, or a preset "
                             "(tiny, mini, base, large)")
    parser.add_argument("--output_dir", required=True, help="where ckpt_<step>.pt files are written")
    # Model / data shape.
    parser.add_argument("--init_checkpoint", default=None, help="start from this ckpt_N.pt")
    parser.add_argument("--max_seq_length", type=whole_number, default=None, help="sequence length of the shards")
    parser.add_argument("--max_predictions_per_seq", type=whole_number, default=None,
                        help="masked positions per sequence in the shards")
    parser.add_argument("--vocab_file", default=None,
                        help="vocab.txt copied into the HF export and read by --dynamic_masking (default: the "
                             "one beside the shards)")
    parser.add_argument("--enable_packed_data_mode", type=packed_data_mode, nargs="?", const="True", default=None,
                        metavar="True|False",
                        help="Habana's flag: True = the shards must be packed (data.pack_pretraining_data), False "
                             "= unpacked; a value the shards contradict is refused (default: read the shards as "
                             "they are: packed ones hold next_sentence_positions)")
    parser.add_argument("--dynamic_masking", action="store_true",
                        help="mask every micro-batch afresh from the shards' original tokens (RoBERTa-style), "
                             "seeded from its place in the data so that a resumed run repeats it; needs the "
                             "shards' vocab.txt (--vocab_file or <input_dir>/vocab.txt)")
    # Optimisation.
    parser.add_argument("--train_batch_size", type=whole_number, default=None,
                        help="sequences per optimizer step on this rank: micro-batch x --gradient_accumulation_steps "
                             "(packed shards: the micro-batch counts packs)")
    parser.add_argument("--gradient_accumulation_steps", type=whole_number, default=1,
                        help="micro-batches per optimizer step (packed shards: divided by the samples per pack, "
                             "so that a step sees about as many samples)")
    parser.add_argument("--optimizer", choices=("lamb", "adamw"), default="lamb",
                        help="lamb: the reference's LAMB, made for large batches; adamw: AdamW (eps 1e-6), which "
                             "learns faster at the small batches of one CPU or GPU. Both clip the global gradient "
                             "norm to 1.0, decay weights but not biases and LayerNorm (0.01) and follow the same "
                             "warm-up and decay")
    parser.add_argument("--learning_rate", type=float, default=None, help="peak learning rate")
    parser.add_argument("--max_steps", type=whole_number, default=None, help="optimizer steps of the phase")
    parser.add_argument("--warmup_proportion", type=float, default=None, help="warm-up as a fraction of --max_steps")
    parser.add_argument("--seed", type=whole_number, default=12439, help="random seed")
    parser.add_argument("--allreduce_post_accumulation", action="store_true",
                        help="no DDP: one flat all-reduce of the gradients after accumulation")
    parser.add_argument("--allreduce_post_accumulation_fp16", action="store_true",
                        help="do that all-reduce in 16 bits to halve the traffic: in bf16, not fp16 as the "
                             "reference's name says (bf16 keeps fp32's range); no effect without "
                             "--allreduce_post_accumulation")
    parser.add_argument("--use_fused_lamb", action="store_true", help="Habana FusedLamb on HPU (ignored elsewhere)")
    # Phases, resume, checkpoints.
    parser.add_argument("--phase2", action="store_true", help="this is phase 2 (it continues phase 1's steps)")
    parser.add_argument("--phase1_end_step", type=whole_number, default=PHASES[1].max_steps,
                        help="phase 1's last step: phase 2's checkpoints are numbered from there")
    parser.add_argument("--resume_from_checkpoint", action="store_true",
                        help="continue from the newest checkpoint in --output_dir (or --init_checkpoint)")
    parser.add_argument("--resume_step", type=whole_number, default=-1,
                        help="resume from ckpt_<N>.pt (-1: the newest; with --init_checkpoint: its step)")
    parser.add_argument("--num_steps_per_checkpoint", type=whole_number, default=None,
                        help="checkpoint every N optimizer steps")
    parser.add_argument("--skip_checkpoint", action="store_true")
    parser.add_argument("--steps_this_run", type=whole_number, default=-1,
                        help="stop after this many steps (-1: --max_steps)")
    parser.add_argument("--keep_checkpoints", type=whole_number, default=3, help="how many ckpt_<step>.pt to keep")
    parser.add_argument("--hf_export_dir", default=None,
                        help="HF-format export of each finished phase goes to <this>/phase<N> "
                             "(default: <output_dir>/../hf_export)")
    parser.add_argument("--nonfinite_loss", choices=("stop", "skip"), default="stop",
                        help="a NaN/inf loss stops the run (default) or skips that step, counting skips")
    # Logging.
    parser.add_argument("--log_freq", type=float, default=1.0)
    parser.add_argument("--json-summary", dest="json_summary", default="results/dllogger.json")
    parser.add_argument("--do_train", action="store_true", help="accepted for compatibility; training always runs")
    parser.add_argument("--log_param_checksum", action="store_true",
                        default=os.environ.get("BERT_LOG_PARAM_CHECKSUM") == "1",
                        help="debug: each rank appends '<step> <SHA-256 of its parameters> <shard read>' per "
                             "step to <output_dir>/param_checksums.rank<r>.txt (also: BERT_LOG_PARAM_CHECKSUM=1, "
                             "which reaches every rank through the launcher)")
    # Device, mode, precision, process placement, --debug.
    add_runtime_options(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    export_mode_environment(args.device, args.mode)  # before torch: it may load the Habana bridge
    from pretraining.training import run  # heavy imports only once the arguments are valid

    return run_main(lambda _: run(args), argv, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
