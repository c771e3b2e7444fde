"""The exports load with `datasets` and go through TRL's own dataset preparation.

One module, module-scoped fixtures: the adversarial workspace is exported once in every
format; a tiny randomly initialised Llama and a tokenizer built here (no download) run one
SFTTrainer step on each TRL SFT file and one DPOTrainer step on the TRL DPO file.
"""

from __future__ import annotations

import os

import pytest

from distill.export import run_export
from distill.export.formats import FORMATS, view_paths
from tests.export_helpers import adversarial_settings, build_adversarial, read_jsonl

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    adv = build_adversarial(tmp_path_factory.mktemp("trl"))
    settings = adversarial_settings(adv)
    for fmt in FORMATS:
        for kind in ("rag", "sft", "preference"):
            report = run_export(adv.ws, settings, kind, fmt=fmt, include_partial=True)
            assert report.balanced
    return adv


@pytest.fixture(scope="module")
def tokenizer(exported):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["response"] + "\n" + r["instruction"] for r in read_jsonl(exported.ws.sft_path)]
    corpus += [r["prompt"] + r["chosen"] + r["rejected"] for r in read_jsonl(exported.ws.preference_path)]
    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg)


def test_every_export_loads_with_datasets(exported):
    from datasets import load_dataset

    checked = 0
    for kind in ("rag", "sft", "preference"):
        for fmt in FORMATS:
            for name, path in view_paths(exported.ws, kind, fmt).items():
                if not path.exists():
                    continue
                ds = load_dataset("json", data_files=str(path), split="train")
                assert len(ds) == len(read_jsonl(path)) > 0, path
                checked += 1
    for stage in ("rag", "sft", "preference"):
        ds = load_dataset("json", data_files=str(exported.ws.quarantine_path(stage)), split="train")
        assert len(ds) > 0
    # rag: native; sft: native + trl (messages, prompt_completion, sidecar) + openai (chat, sidecar);
    # preference: native + trl (dpo, sidecar) + openai (preference, sidecar)
    assert checked == 1 + 6 + 5


def test_dataset_card_configs_load(exported):
    from datasets import load_dataset

    card = (exported.ws.exports_dir / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: preference_trl" in card
    for config in ("rag", "sft", "sft_trl_messages", "sft_openai", "preference", "preference_trl"):
        ds = load_dataset(str(exported.ws.exports_dir), config, split="train")
        assert len(ds) > 0, config


def test_views_align_with_sidecars(exported):
    sft = read_jsonl(exported.ws.sft_path)
    msgs = read_jsonl(view_paths(exported.ws, "sft", "trl")["messages"])
    side = read_jsonl(view_paths(exported.ws, "sft", "trl")["provenance"])
    assert len(sft) == len(msgs) == len(side)
    for s, m, p in zip(sft, msgs, side, strict=True):
        assert p["id"] == s["id"] and p["provenance"] == s["provenance"]
        assert m["messages"][-1] == {"role": "assistant", "content": s["response"]}
    dpo = read_jsonl(view_paths(exported.ws, "preference", "trl")["dpo"])
    assert dpo and all(set(r) == {"prompt", "chosen", "rejected"} for r in dpo)
    assert all(m["role"] == "assistant" for r in dpo for m in r["chosen"] + r["rejected"])
    oai = read_jsonl(view_paths(exported.ws, "preference", "openai")["preference"])
    assert all(set(r) == {"input", "preferred_output", "non_preferred_output"} for r in oai)


@pytest.mark.parametrize("view", ["messages", "prompt_completion"])
def test_sft_trainer_accepts_trl_sft_file(exported, tokenizer, tmp_path, view):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    path = view_paths(exported.ws, "sft", "trl")[view]
    ds = load_dataset("json", data_files=str(path), split="train")
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, max_length=256,
                     report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                     dataset_num_proc=None, bf16=False, fp16=False)
    trainer = SFTTrainer(model=tiny_model(tokenizer), args=args, train_dataset=ds, processing_class=tokenizer)
    processed = trainer.train_dataset
    assert len(processed) == len(ds) and "input_ids" in processed.column_names
    result = trainer.train()
    assert result.global_step == 1


def test_dpo_trainer_accepts_trl_dpo_file(exported, tokenizer, tmp_path):
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    path = view_paths(exported.ws, "preference", "trl")["dpo"]
    ds = load_dataset("json", data_files=str(path), split="train")
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, max_length=256,
                     report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", bf16=False, fp16=False)
    trainer = DPOTrainer(model=tiny_model(tokenizer), ref_model=tiny_model(tokenizer), args=args, train_dataset=ds,
                         processing_class=tokenizer)
    processed = trainer.train_dataset
    assert len(processed) == len(ds)
    assert any("chosen" in c and "ids" in c for c in processed.column_names), processed.column_names
    result = trainer.train()
    assert result.global_step == 1
