"""Where each data preparation stage reads and writes (the reference's folder names).

Everything lives under the working directory ``$BERT_PREP_WORKING_DIR`` (default: the current one)::

    download/<dataset>/...                                    raw downloads (dump, books, squad/v1.1, glue_data/MRPC)
    extracted/<dataset>/...                                   (WikiExtractor output, if you bring your own)
    formatted_one_article_per_line/<name>.txt                 one document per line
    sharded_training_shards_<n>_test_shards_<m>_fraction_<f>/<dataset>/<dataset>_{training|test}_<i>.txt
    hdf5_lower_case_<lc>_seq_len_<L>_max_pred_<P>_masked_lm_prob_<p>_random_seed_<s>_dupe_factor_<d>/
        <dataset>/<dataset>_{training|test}_<i>.hdf5 + vocab.txt
        <dataset>_packed/<dataset>_training_<i>.hdf5 + vocab.txt    (create_hdf5_files --pack)
        <dataset>_packed_metadata.json
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

WORKING_DIR_ENV = "BERT_PREP_WORKING_DIR"

# pre-training corpora and the formatted files their sharding reads
FORMATTED_NAMES: Dict[str, str] = {
    "wikicorpus_en": "wikicorpus_en_one_article_per_line.txt",
    "bookscorpus": "bookscorpus_one_book_per_line.txt",
    "custom": "custom_one_article_per_line.txt",
}
CORPUS_PARTS: Dict[str, List[str]] = {
    "wikicorpus_en": ["wikicorpus_en"],
    "bookscorpus": ["bookscorpus"],
    "books_wiki_en_corpus": ["bookscorpus", "wikicorpus_en"],
    "custom": ["custom"],
}
FINETUNING_DATASETS = ("squad", "mrpc")
WEIGHTS_DATASET = "google_pretrained_weights"  # in the reference: where the vocab comes from
DATASETS = tuple(CORPUS_PARTS) + FINETUNING_DATASETS + (WEIGHTS_DATASET,)


def working_dir(explicit: Optional[str] = None) -> Path:
    return Path(explicit or os.environ.get(WORKING_DIR_ENV) or os.getcwd()).resolve()


@dataclass(frozen=True)
class Layout:
    root: Path

    def download(self, dataset: str) -> Path:
        return self.root / "download" / dataset

    def extracted(self, dataset: str) -> Path:
        return self.root / "extracted" / dataset

    def formatted(self, part: str) -> Path:
        return self.root / "formatted_one_article_per_line" / FORMATTED_NAMES[part]

    def sharded(self, dataset: str, n_training_shards: int, n_test_shards: int, fraction_test_set: float) -> Path:
        name = f"sharded_training_shards_{n_training_shards}_test_shards_{n_test_shards}_fraction_{fraction_test_set}"
        return self.root / name / dataset

    def hdf5(self, dataset: str, do_lower_case: int, max_seq_length: int, max_predictions_per_seq: int,
             masked_lm_prob: float, random_seed: int, dupe_factor: int, whole_word_masking: bool = False) -> Path:
        name = (f"hdf5_lower_case_{do_lower_case}_seq_len_{max_seq_length}_max_pred_{max_predictions_per_seq}"
                f"_masked_lm_prob_{masked_lm_prob}_random_seed_{random_seed}_dupe_factor_{dupe_factor}")
        if whole_word_masking:  # not in the reference; kept apart so the two never mix
            name += "_whole_word_masking"
        return self.root / name / dataset

    @staticmethod
    def packed(hdf5_dir: Path) -> Path:
        """The packed set made from the shards in ``hdf5_dir``: a sibling folder, ``_packed`` appended."""
        return hdf5_dir.with_name(hdf5_dir.name + "_packed")

    def mrpc(self) -> Path:
        """GLUE's own layout (glue_data/MRPC), MSR sources beside the TSVs as GLUE's script leaves them."""
        return self.root / "download" / "glue_data" / "MRPC"

    def squad(self) -> Path:
        return self.download("squad") / "v1.1"

    def trained_vocab(self, dataset: str, do_lower_case: int, vocab_size: int) -> Path:
        return self.root / "vocab" / f"{dataset}_lower_case_{do_lower_case}_vocab_size_{vocab_size}.txt"

    def reference_vocab(self) -> Path:
        """The reference takes its vocab from Google's BERT-Large uncased weights; we fetch only vocab.txt."""
        return self.download(WEIGHTS_DATASET) / "uncased_L-24_H-1024_A-16" / "vocab.txt"


def shard_name(dataset: str, split: str, index: int, suffix: str) -> str:
    return f"{dataset}_{split}_{index}{suffix}"
