#!/usr/bin/env bash
# From nothing to the phase-1 (seq 128, 20 predictions) and phase-2 (seq 512, 80 predictions) HDF5
# datasets that `demo_bert.py pretraining --data_dir P1 P2` reads.
#
#   bash data/create_datasets_from_start.sh [wiki_only|wiki_books]
#
# wiki_only (default): English Wikipedia. wiki_books: Wikipedia + BookCorpus, which has no official
# download any more: put one .txt file per book in $BERT_PREP_WORKING_DIR/download/bookscorpus first.
# Everything is written under $BERT_PREP_WORKING_DIR (default: the current directory).
# Optional environment: VOCAB_FILE (default: BERT's uncased vocab, downloaded), N_PROCESSES (default:
# all cores), N_TRAINING_SHARDS / N_TEST_SHARDS / FRACTION_TEST_SET (256 / 256 / 0.1),
# WIKI_DUMP_URL (another Wikipedia dump), PYTHON (default: the repository's .venv/bin/python when it
# exists, else python3; see tools/python_env.sh).
set -euo pipefail

to_download="${1:-wiki_only}"
case "$to_download" in
  wiki_only) dataset=wikicorpus_en ;;
  wiki_books) dataset=books_wiki_en_corpus ;;
  *) echo "usage: bash $0 [wiki_only|wiki_books]" >&2; exit 2 ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/../tools/python_env.sh"
python_bin="$(project_python)"
require_project_packages "$python_bin" create_datasets_from_start.sh
import_this_checkout
export BERT_PREP_WORKING_DIR="${BERT_PREP_WORKING_DIR:-$(pwd)}"
n_processes="${N_PROCESSES:-$(nproc)}"
shards=(--n_training_shards "${N_TRAINING_SHARDS:-256}" --n_test_shards "${N_TEST_SHARDS:-256}"
        --fraction_test_set "${FRACTION_TEST_SET:-0.1}")

prep() { "$python_bin" -m data.prepare "$@"; }

# 1. download (resumable, checksum-verified)
if [[ -n "${WIKI_DUMP_URL:-}" ]]; then
  prep --action download --dataset wikicorpus_en --wiki_dump_url "$WIKI_DUMP_URL"
else
  prep --action download --dataset wikicorpus_en
fi
if [[ "$to_download" == wiki_books ]]; then
  prep --action download --dataset bookscorpus
fi
if [[ -n "${VOCAB_FILE:-}" ]]; then
  vocab_file="$VOCAB_FILE"
else
  prep --action download --dataset google_pretrained_weights
  vocab_file="$BERT_PREP_WORKING_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
fi

# 2. one article (book) per line
prep --action text_formatting --dataset wikicorpus_en --n_processes "$n_processes"
if [[ "$to_download" == wiki_books ]]; then
  prep --action text_formatting --dataset bookscorpus
fi

# 3. sentence-split shards
prep --action sharding --dataset "$dataset" "${shards[@]}"

# 4. HDF5 instances for both phases
for phase in "128 20" "512 80"; do
  read -r seq_len max_pred <<< "$phase"
  prep --action create_hdf5_files --dataset "$dataset" "${shards[@]}" --n_processes "$n_processes" \
       --max_seq_length "$seq_len" --max_predictions_per_seq "$max_pred" \
       --vocab_file "$vocab_file" --do_lower_case 1
done

echo "done: pass the two hdf5_* folders printed above to demo_bert.py pretraining --data_dir PHASE1 PHASE2"
