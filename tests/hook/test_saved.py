"""LLaMA-Factory's own ``get_dataset`` with the hook installed: ``tokenized_path`` records and streamed datasets.

A non-empty ``tokenized_path`` is loaded as it is, so a dataset tokenized with other settings must stop the run;
a streamed dataset must reach the trainer with exactly stock's columns.
"""

import json
from pathlib import Path

import pytest

import rejection_align
from conftest import SENTENCE
from rejection_align.errors import ConfigError
from rejection_align.hook.masking import IGNORE_INDEX
from rejection_align.hook.saved import RECORD_NAME


NORMAL = "The picture shows a small red house next to a tall tree."
CONVERSATIONS = [
    ["What is in the picture?", SENTENCE],
    ["Describe the image.", NORMAL],
    ["What colour is it?", "It is red.", "Why is it red?", SENTENCE],
    ["What is two plus two?", "Four."],
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved_data")
    records = [
        {"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)]}
        for turns in CONVERSATIONS
    ]
    (root / "tiny.json").write_text(json.dumps(records), encoding="utf-8")
    entry = {"file_name": "tiny.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    (root / "dataset_info.json").write_text(json.dumps({"tiny": entry}), encoding="utf-8")
    return root


def load(tiny_llava_dir, data_dir, tmp_path, **extra):
    """Parse a training config with LLaMA-Factory's (patched) parser and run its real ``get_dataset``."""
    from llamafactory.data import get_template_and_fix_tokenizer, loader
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = {
        "model_name_or_path": str(tiny_llava_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "dataset": "tiny", "dataset_dir": str(data_dir), "template": "llava", "cutoff_len": 128,
        "output_dir": str(tmp_path / "out"), "report_to": "none", "overwrite_cache": True, **extra,
    }  # fmt: skip
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset_module = loader.get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    return {**dataset_module, "template": template, **tokenizer_module}


def collate(loaded: dict, rows: list[dict]) -> dict:
    """The batch LLaMA-Factory's SFT workflow would hand to the model."""
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask

    collator = SFTDataCollatorWith4DAttentionMask(
        template=loaded["template"],
        tokenizer=loaded["tokenizer"],
        processor=loaded["processor"],
        label_pad_token_id=IGNORE_INDEX,
    )
    return collator(rows)


def test_saving_with_the_method_on_records_the_settings_beside_the_dataset(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    saved = tmp_path / "tokenized"
    load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)

    record = json.loads((saved / RECORD_NAME).read_text(encoding="utf-8"))
    assert record["settings"]["rejection_mask_eos"] is True
    assert record["settings"]["rejection_mask_mode"] == "mask"


def test_saving_with_the_method_off_leaves_the_directory_as_stock_writes_it(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    saved = tmp_path / "tokenized"
    load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved))

    assert (saved / "dataset_dict.json").is_file()
    assert not (saved / RECORD_NAME).exists()


def test_a_dataset_saved_with_the_method_off_stops_a_run_with_the_method_on(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    saved = tmp_path / "tokenized"
    load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved))

    with pytest.raises(ConfigError) as caught:
        load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)

    message = str(caught.value)
    assert f"tokenized_path {saved} holds a dataset saved without rejection-align's record" in message
    assert "this run asks for rejection_mask_eos=True" in message
    assert f"Delete {saved}" in message


def test_a_dataset_saved_with_the_method_on_stops_a_run_with_the_method_off(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    saved = tmp_path / "tokenized"
    load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)

    with pytest.raises(ConfigError, match="this run asks for method off"):
        load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved))


def test_a_dataset_saved_in_mask_mode_stops_a_run_in_drop_mode(patched, tiny_llava_dir, data_dir, tmp_path):
    saved = tmp_path / "tokenized"
    load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)

    with pytest.raises(ConfigError, match="rejection_mask_mode='mask'.*rejection_mask_mode='drop'"):
        load(
            tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True,
            rejection_mask_mode="drop",
        )  # fmt: skip


def test_a_dataset_saved_with_the_same_settings_is_loaded_with_its_masked_labels(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    saved = tmp_path / "tokenized"
    first = load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)
    again = load(tiny_llava_dir, data_dir, tmp_path, tokenized_path=str(saved), rejection_mask_eos=True)

    assert list(again["train_dataset"]) == list(first["train_dataset"])
    assert again["train_dataset"][0]["labels"][-1] == IGNORE_INDEX


# ------------------------------------------------------------------------------------------------------- streaming


def test_a_streamed_dataset_gives_the_same_batches_as_stock_but_for_the_rejection_closings(
    patched, tiny_llava_dir, data_dir, tmp_path
):
    options = dict(streaming=True, max_steps=2, dataloader_num_workers=1)  # 0 shards would stream nothing
    ours_loaded = load(tiny_llava_dir, data_dir, tmp_path, **options, rejection_mask_eos=True)
    rejection_align.uninstall()
    stock_loaded = load(tiny_llava_dir, data_dir, tmp_path, **options)
    ours, stock = list(ours_loaded["train_dataset"]), list(stock_loaded["train_dataset"])
    ours_batch, stock_batch = collate(ours_loaded, ours), collate(stock_loaded, stock)

    assert len(ours) == len(stock) == len(CONVERSATIONS)
    assert sorted(ours_batch) == sorted(stock_batch)
    assert ours_batch["input_ids"].tolist() == stock_batch["input_ids"].tolist()
    assert ours_batch["attention_mask"].tolist() == stock_batch["attention_mask"].tolist()
    changed = (ours_batch["labels"] != stock_batch["labels"]).nonzero().tolist()
    assert len(changed) == 2  # one closing </s> in each of the two examples that end with a rejection answer
    assert all(ours_batch["labels"][row, column] == IGNORE_INDEX for row, column in changed)


# ------------------------------------------------------------------------------------------------------ the record


def test_the_record_on_disk_keeps_its_schema_and_reads_back_as_the_settings(tmp_path):
    from rejection_align.hook.saved import read_record, write_record
    from rejection_align.hook.settings import RejectionSettings

    settings = RejectionSettings(mask_eos=True, mask_mode="drop", sentences=(SENTENCE, "No."), match="contains")
    write_record(tmp_path, settings)

    on_disk = json.loads((tmp_path / RECORD_NAME).read_text(encoding="utf-8"))
    assert on_disk == {"format": 1, "settings": settings.to_dict()}
    assert read_record(tmp_path) == settings.to_dict()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "is not valid JSON"),
        ('{"format": 1}', "does not hold the settings rejection-align writes"),
        ('{"format": 1, "settings": {"rejection_mask_eos": "yes", "rejection_mask_mode": "mask", '
         '"rejection_sentences": ["x"], "rejection_match": "exact"}}',
         "does not hold the settings rejection-align writes (at $.settings.rejection_mask_eos)"),
        ('{"format": 2, "settings": {"rejection_mask_eos": true, "rejection_mask_mode": "mask", '
         '"rejection_sentences": ["x"], "rejection_match": "exact"}}', "has format 2, this rejection-align reads format 1"),
    ],
    ids=["not-json", "no-settings", "wrong-type", "newer-format"],
)  # fmt: skip
def test_a_damaged_record_is_one_message_naming_the_file_and_the_way_out(tmp_path, text, problem):
    from rejection_align.hook.saved import read_record

    (tmp_path / RECORD_NAME).write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        read_record(tmp_path)

    assert str(caught.value) == f"{tmp_path / RECORD_NAME} {problem}; delete {tmp_path} to tokenize again."
