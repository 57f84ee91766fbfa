"""The shared fine-tuning loop (finetuning/train_loop.py with batches, optim, saving, inference, config)
and model resolution (finetuning/model_loading.py)."""
import json
import math
import os

import pytest
import torch

import central.runtime
from central.dllog import DLLogger, read_dllogger
from central.runtime import Runtime, init_runtime
from finetuning import train_loop as loop
from finetuning.batches import PaddingCollator
from finetuning.config import FinetuneConfig
from finetuning.inference import predict
from finetuning.model_loading import ModelLoadError, load_model
from finetuning.optim import build_optimizer, linear_schedule
from finetuning.saving import save_model
from finetuning.train_log import open_logger
from pretraining.bert_config import BertConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_args(tmp_path, **overrides) -> FinetuneConfig:
    """The loop's typed config, as a task builds it from its flags."""
    values = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=1.0, max_steps=-1,
                  learning_rate=1e-3, weight_decay=0.01, adam_epsilon=1e-8, max_grad_norm=1.0, warmup_steps=0,
                  warmup_proportion=0.0, logging_steps=2, save_steps=0, seed=1, device="cpu", mode="eager",
                  data_type="fp32", dist_timeout=60.0, disable_progress_bar=True, output_dir=str(tmp_path / "out"),
                  use_fused_adam=False, use_fused_clip_norm=False)
    values.update(overrides)
    return FinetuneConfig(**values)


def qa_model(seed=0):
    from transformers import BertForQuestionAnswering

    from finetuning.model_loading import _random_model

    torch.manual_seed(seed)
    return _random_model(BertForQuestionAnswering, TINY, {})


def toy_features(count=64, seed=0):
    """The answer is the position of token 7 (one per sequence); lengths vary from 9 to 20."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for _ in range(count):
        length = int(torch.randint(9, 21, (1,), generator=generator))
        ids = torch.randint(10, 60, (length,), generator=generator).tolist()
        answer = int(torch.randint(1, length - 1, (1,), generator=generator))
        ids[0], ids[-1], ids[answer] = 2, 3, 7
        features.append({"input_ids": ids, "attention_mask": [1] * length, "token_type_ids": [0] * length,
                         "start_positions": answer, "end_positions": answer})
    return features


def cpu_runtime():
    from central.distributed import DistEnv

    return Runtime("cpu", "eager", "fp32", torch.device("cpu"), DistEnv())


def test_collator_pads_to_longest_rounded_to_eight():
    collate = PaddingCollator(pad_token_id=5, drop_keys=("example_id",))
    batch = collate([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "labels": 1, "example_id": 9},
                     {"input_ids": list(range(10)), "attention_mask": [1] * 10, "labels": 0, "example_id": 3}])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].shape == (2, 16)
    assert batch["input_ids"][0].tolist() == [1, 2, 3] + [5] * 13       # pad id only for input_ids
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["labels"].tolist() == [1, 0]
    assert PaddingCollator(fixed_length=24)([{"input_ids": [1, 2]}])["input_ids"].shape == (1, 24)
    assert PaddingCollator().padded_length(16) == 16 and PaddingCollator().padded_length(17) == 24


def test_config_takes_every_field_from_the_task_parsers(tmp_path):
    """FinetuneConfig's fields are the scripts' flags, same names and values (run_squad has no --eval_steps)."""
    from finetuning import run_glue, run_squad

    common = ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path), "--data_dir", str(tmp_path),
              "--use_fused_adam", "--max_steps", "7"]
    for parser, extra in ((run_squad.build_parser(), []), (run_glue.build_parser(), ["--task_name", "mrpc",
                                                                                      "--eval_steps", "3"])):
        args = parser.parse_args(common + extra)
        config = FinetuneConfig.from_args(args)
        for name in ("per_device_train_batch_size", "learning_rate", "num_train_epochs", "seed", "output_dir",
                     "device", "data_type", "use_fused_clip_norm", "logging_steps", "dist_timeout"):
            assert getattr(config, name) == getattr(args, name), name
        assert config.use_fused_adam and config.max_steps == 7
        assert config.eval_steps == (3 if extra else 0)


def test_config_derives_the_schedule(tmp_path):
    by_epochs = make_args(tmp_path, num_train_epochs=2.5, warmup_proportion=0.1, gradient_accumulation_steps=2)
    assert by_epochs.total_steps(steps_per_epoch=4) == 10 and by_epochs.warmup_for(10) == 1
    assert by_epochs.accumulation == 2
    assert make_args(tmp_path, max_steps=3, num_train_epochs=9.0).total_steps(steps_per_epoch=4) == 3
    assert make_args(tmp_path, warmup_steps=5, warmup_proportion=0.5).warmup_for(10) == 5


def test_cpu_runtime_retains_freed_memory(monkeypatch):
    retained = []
    monkeypatch.setattr(central.runtime, "retain_freed_memory", lambda: retained.append(True))
    runtime = init_runtime(device="cpu", mode="eager", precision="fp32")
    assert (runtime.kind, runtime.dist.world_size) == ("cpu", 1)
    assert retained == [True]  # glibc keeps the activations' memory between steps (central/host_allocator)


def test_linear_schedule_warmup_then_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = linear_schedule(optimizer, warmup_steps=3, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7])
    assert scheduler.get_last_lr()[0] == 0.0


def test_optimizer_skips_decay_on_biases_and_layernorm(tmp_path):
    model = qa_model()
    optimizer = build_optimizer(model, make_args(tmp_path, weight_decay=0.1), "cpu")
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"qa_outputs.bias", "bert.embeddings.LayerNorm.weight"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_train_learns_logs_and_saves(tmp_path):
    from transformers import BertForQuestionAnswering

    args = make_args(tmp_path, num_train_epochs=6.0, save_steps=10, learning_rate=3e-3)
    runtime = cpu_runtime()
    model, features = qa_model(), toy_features(32)
    logger = open_logger(args.output_dir, runtime)
    result = loop.train(model, features, args, runtime, logger)
    logger.close()
    assert result.global_step == 6 * math.ceil(32 / 8) == 24
    records = read_dllogger(tmp_path / "out" / "dllogger.json")
    steps = [r for r in records if isinstance(r["step"], list) and len(r["step"]) == 2]
    assert [r["step"][1] for r in steps] == list(range(2, 25, 2))
    assert all({"loss", "learning_rate", "sequences_per_second"} <= set(r["data"]) for r in steps)
    assert steps[-1]["data"]["learning_rate"] == 0.0 and steps[0]["data"]["learning_rate"] > 0
    assert steps[-1]["data"]["loss"] < 0.6 * steps[0]["data"]["loss"]   # it learns the toy task
    final = [r for r in records if r["step"] == []][-1]["data"]
    assert final["e2e_train_time"] > 0 and final["training_sequences_per_second"] > 0
    assert (tmp_path / "out" / "checkpoint-10" / "config.json").is_file()
    assert (tmp_path / "out" / "checkpoint-20" / "model.safetensors").is_file()

    save_model(model, None, tmp_path / "final", runtime)
    reloaded = BertForQuestionAnswering.from_pretrained(str(tmp_path / "final"))
    batch = PaddingCollator(drop_keys=("start_positions", "end_positions"))(features[:4])
    outputs = [o for _, o in predict(model, features[:4], runtime, 4,
                                     PaddingCollator(drop_keys=("start_positions", "end_positions")))]
    with torch.no_grad():
        again = reloaded.eval()(**batch)
    assert torch.allclose(outputs[0]["start_logits"], again.start_logits, atol=1e-5)
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".saving-")]  # staging folder cleaned up


def record_gradients_before_the_step(model):
    """{name: gradient} as it stands when backward has finished adding to it: after the last micro-batch
    of an optimizer step, the accumulated gradient the optimizer receives (before clipping and the update)."""
    grads = {}
    for name, param in model.named_parameters():
        param.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    return grads


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Two micro-batches of 8 give the gradient of one batch of 16 (the loss is divided by the count).

    Gradients, not the parameters after the step, are compared: AdamW's first step moves each weight by
    about lr * g / (|g| + eps), so a weight whose true gradient is ~0 (the attention key biases and
    qa_outputs.bias: softmax is shift-invariant) moves by float noise, which differs with the summation
    order (batch size, CPU). The tolerance is scaled by the largest gradient for the same reason.
    """
    features = toy_features(16)
    grads, losses = [], []
    for batch, accumulation in ((16, 1), (8, 2)):
        model = qa_model(seed=3)
        grads.append(record_gradients_before_the_step(model))
        args = make_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         max_steps=1, logging_steps=1)
        # Fixed length: QA logits span padded positions too, so the loss depends on the padded length.
        result = loop.train(model, features, args, cpu_runtime(), loop.DLLogger(None, enabled=False),
                            collate=loop.PaddingCollator(fixed_length=24))
        assert result.global_step == 1
        losses.append(result.final_loss)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the logged loss is the mean over 16 either way
    big, accumulated = grads
    assert big.keys() == accumulated.keys() == {name for name, _ in qa_model().named_parameters()}
    scale = max(float(g.abs().max()) for g in big.values())
    for name in big:  # same sampler order in both runs: the same 16 features
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_max_steps_overrides_epochs_and_bf16_runs(tmp_path):
    args = make_args(tmp_path, max_steps=3, num_train_epochs=100.0, data_type="bf16", logging_steps=0)
    runtime = Runtime("cpu", "eager", "bf16", torch.device("cpu"), cpu_runtime().dist)
    result = loop.train(qa_model(), toy_features(40), args, runtime, DLLogger(None, enabled=False))
    assert result.global_step == 3 and math.isfinite(result.final_loss)


def test_load_model_from_bert_config_json_and_errors(tmp_path, shared_data):
    from transformers import BertForSequenceClassification

    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    config_path = tmp_path / "bert_config.json"
    config_path.write_text(json.dumps(dict(TINY.to_dict(), vocab_size=30522)))
    loaded = load_model(str(config_path), BertForSequenceClassification, vocab_file=str(vocab), num_labels=2)
    assert loaded.model.config.num_labels == 2 and loaded.model.config.hidden_size == 32
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.tokenizer("the cat")["input_ids"] == [101, 1996, 4937, 102]

    with pytest.raises(ModelLoadError, match="--model_name_or_path large .*HF_HUB_OFFLINE.*pass a local model"):
        load_model("large", BertForSequenceClassification)
    with pytest.raises(ModelLoadError, match="pass --vocab_file"):
        load_model("tiny", BertForSequenceClassification)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "missing.pt"), BertForSequenceClassification)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="the folder has no config.json"):
        load_model(str(tmp_path / "empty"), BertForSequenceClassification)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        load_model(str(tmp_path / "bad.pt"), BertForSequenceClassification, vocab_file=str(vocab))


def test_sigterm_finishes_the_step_then_stops(tmp_path):
    import signal

    inner = PaddingCollator()
    calls = []

    def collate_then_signal(features):
        calls.append(1)
        if len(calls) == 3:  # arrives while the 3rd step is being prepared
            os.kill(os.getpid(), signal.SIGTERM)
        return inner(features)

    before = signal.getsignal(signal.SIGTERM)
    args = make_args(tmp_path, max_steps=10, logging_steps=0)
    result = loop.train(qa_model(), toy_features(80), args, cpu_runtime(), DLLogger(None, enabled=False),
                        collate=collate_then_signal)
    assert result.stopped_by_signal == signal.SIGTERM and result.global_step == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_load_model_rejects_a_json_that_is_not_a_config(tmp_path, shared_data):
    from transformers import BertForQuestionAnswering

    bad = tmp_path / "bert_config.json"
    bad.write_text("[1, 2, 3]")
    with pytest.raises(ModelLoadError, match="not a readable bert_config.json"):
        load_model(str(bad), BertForQuestionAnswering,
                   vocab_file=str(shared_data / "vocab" / "bert-base-uncased-vocab.txt"))
    with pytest.raises(ModelLoadError, match="--vocab_file .*no such file"):
        load_model("tiny", BertForQuestionAnswering, vocab_file=str(tmp_path / "missing.txt"))
