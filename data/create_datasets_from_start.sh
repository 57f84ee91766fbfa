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
# exists, else python3; see tools/python_env.sh), PACK (below).
#
# PACK=1 (default) also packs the phase-2 (512) training shards into <hdf5 folder>_packed (Habana's packed
# format, up to 3 samples per row: data.pack_pretraining_data through create_hdf5_files --pack). Wikipedia at
# 512 is half padding, so phase 2 trains on about 2x fewer rows, and run_pretraining reads the packed folder
# as it is (it detects the format). The unpacked folder stays, for every other tool. PACK=all packs phase 1
# too: at 128 most rows are nearly full, so it gives about 1.1-1.2x and costs a second copy of the largest
# set; PACK=0 packs nothing.
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
pack="${PACK:-1}"
case "$pack" in
  0|1|all) ;;
  *) echo "PACK=$pack: expected 0, 1 (phase 2) or all" >&2; exit 2 ;;
esac
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

# 4. HDF5 instances for both phases (packed as PACK says)
for phase in "128 20" "512 80"; do
  read -r seq_len max_pred <<< "$phase"
  pack_this=0
  if [[ "$pack" == all || ( "$pack" == 1 && "$seq_len" == 512 ) ]]; then pack_this=1; fi
  prep --action create_hdf5_files --dataset "$dataset" "${shards[@]}" --n_processes "$n_processes" \
       --max_seq_length "$seq_len" --max_predictions_per_seq "$max_pred" \
       --vocab_file "$vocab_file" --do_lower_case 1 --pack "$pack_this"
done

if [[ "$pack" == 0 ]]; then
  echo "done: pass the two hdf5_* folders printed above to demo_bert.py pretraining --data_dir PHASE1 PHASE2"
else
  echo "done: pass demo_bert.py pretraining --data_dir PHASE1 PHASE2 the folders printed above, the packed one" \
       "(ending in _packed) for each phase that has one"
fi
