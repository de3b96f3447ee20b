"""``lmms-eval --model llamafactory`` for real: the lmms-eval CLI as a subprocess on the tiny LLaVA and Qwen2-VL.

The tasks are lmms-eval's own ``scienceqa_img`` and ``pope`` configs, reached through ``--include_path`` YAMLs that
``include`` them and only point the dataset at a few local parquet rows of the real schemas (offline). Checked:
the metric lands in the results JSON, the prompt ids equal the prompt part of LLaMA-Factory's stock supervised
processor for the same doc, and the answers equal ``generate``'s (``HFGenerator``) for the same prompts.
Checks read lmms-eval's outputs, never its exit code alone: lmms-eval 0.7.3 exits 0 after a failed task.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed: these tests need the [lmms] extra (pip install -e '.[lmms]'; CI installs it "
    "in the LLaMA-Factory 0.9.5 leg)",
)

from rejection_align.cli import main  # noqa: E402
from rejection_align.errors import ConfigError  # noqa: E402
from rejection_align.eval.benchmarks import Item  # noqa: E402


pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
IGNORE_INDEX = -100
TASK_MAX_NEW_TOKENS = 8  # the local tasks' generation_kwargs; model_args ask for fewer, and the task's must win
STOP = "\n\n"  # lmms-eval's default `until` when a task sets none
SQA_POST = "\nAnswer with the option's letter from the given choices directly."
POPE_POST = "\nAnswer the question using a single word or phrase."

SQA_ROWS = [  # ScienceQA-IMG's columns (lmms-lab/ScienceQA, config ScienceQA-IMG)
    {"image": (200, 30, 30), "question": "Which color is shown?", "choices": ["red", "green"], "answer": 0, "hint": ""},
    {"image": (30, 200, 30), "question": "Which animal is this?", "choices": ["cat", "dog", "cow"], "answer": 2,
     "hint": "A farm."},
    {"image": None, "question": "Which is a mammal?", "choices": ["shark", "whale"], "answer": 1, "hint": ""},
]  # fmt: skip
POPE_ROWS = [  # POPE's columns (lmms-lab/POPE)
    {"question_id": "1", "question": "Is there a dog in the image?", "answer": "yes", "image": (10, 20, 30)},
    {"question_id": "2", "question": "Is there a car in the image?", "answer": "no", "image": (90, 90, 90)},
]


def _image(color, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def sqa_text(row: dict) -> str:
    """ScienceQA's doc_to_text with lmms-eval's default kwargs (lmms-eval's own function, so the task's wording)."""
    from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_text

    return sqa_doc_to_text(row, {"format": "default", "pre_prompt": "", "post_prompt": SQA_POST})


def pope_text(row: dict) -> str:
    from lmms_eval.tasks.pope.utils import pope_doc_to_text

    return pope_doc_to_text(row, {"pre_prompt": "", "post_prompt": POPE_POST})


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory) -> Path:
    """Parquet copies of a few rows of each schema and task YAMLs that include lmms-eval's configs."""
    import datasets
    import lmms_eval

    root = tmp_path_factory.mktemp("lmms_tasks")
    string = datasets.Value("string")
    extra = ("task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
    sqa_features = datasets.Features(
        {"image": datasets.Image(), "question": string, "choices": datasets.Sequence(string),
         "answer": datasets.Value("int64"), "hint": string, **dict.fromkeys(extra, string)}
    )  # fmt: skip
    sqa = {key: [row[key] for row in SQA_ROWS] for key in ("question", "choices", "answer", "hint")}
    sqa["image"] = [None if row["image"] is None else _image(row["image"]) for row in SQA_ROWS]
    sqa.update({key: ["x"] * len(SQA_ROWS) for key in extra})
    datasets.Dataset.from_dict(sqa, features=sqa_features).to_parquet(root / "sqa.parquet")

    pope = {key: [row[key] for row in POPE_ROWS] for key in ("question_id", "question", "answer")}
    pope.update(id=["0", "1"], image_source=["a", "b"], category=["adversarial"] * 2)
    pope["image"] = [_image(row["image"]) for row in POPE_ROWS]
    pope_features = datasets.Features({key: string for key in pope} | {"image": datasets.Image()})
    datasets.Dataset.from_dict(pope, features=pope_features).to_parquet(root / "pope.parquet")

    stock = Path(lmms_eval.__file__).parent / "tasks"
    for task, include, data in (
        ("sqa_local", stock / "scienceqa" / "scienceqa_img.yaml", root / "sqa.parquet"),
        ("pope_local", stock / "pope" / "pope.yaml", root / "pope.parquet"),
    ):
        (root / f"{task}.yaml").write_text(
            f"include: {include}\ntask: {task}\ndataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"generation_kwargs:\n  max_new_tokens: {TASK_MAX_NEW_TOKENS}\n  do_sample: false\n",
            encoding="utf-8",
        )
    # two images in one doc: ScienceQA's rows, the image given twice (a multi-image task's shape)
    (root / "two_images.py").write_text(
        "def doc_to_visual(doc):\n    return [] if doc['image'] is None else [doc['image'].convert('RGB')] * 2\n"
    )
    (root / "sqa_two_images.yaml").write_text(
        (root / "sqa_local.yaml").read_text().replace("task: sqa_local", "task: sqa_two_images")
        + "doc_to_visual: !function two_images.doc_to_visual\n",
        encoding="utf-8",
    )
    return root


def _lora(model_dir: Path, model_class: str, out: Path) -> Path:
    """A real LoRA adapter on the language model, with random (non-zero) B so that it changes answers."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = getattr(transformers, model_class).from_pretrained(model_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=r".*language_model.*\.(q_proj|v_proj|o_proj)", init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llava_adapter(tiny_llava_dir, tmp_path_factory) -> Path:
    return _lora(tiny_llava_dir, "LlavaForConditionalGeneration", tmp_path_factory.mktemp("lmms_lora") / "llava")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from rejection_align.demo.tiny import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("lmms_qwen") / "model")


@pytest.fixture(scope="module")
def qwen_adapter(tiny_qwen, tmp_path_factory) -> Path:
    return _lora(tiny_qwen, "Qwen2VLForConditionalGeneration", tmp_path_factory.mktemp("lmms_lora") / "qwen")


class LmmsRun:
    """One ``lmms-eval`` run's outputs: the results JSON and the logged samples per task."""

    def __init__(self, out: Path, returncode: int, log: str):
        self.out = out
        found = sorted(out.rglob("*_results.json"))  # under a model-named folder, or directly (infer_yaml only)
        assert len(found) == 1, f"lmms-eval wrote {len(found)} results files (exit {returncode})\n{log[-8000:]}"
        self.results = json.loads(found[0].read_text(encoding="utf-8"))
        self.samples = {}
        for path in out.rglob("*_samples_*.jsonl"):
            task = path.stem.split("_samples_", 1)[1]
            lines = path.read_text(encoding="utf-8").splitlines()
            self.samples[task] = sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])

    def answers(self, task: str) -> list[str]:
        return [sample["filtered_resps"] for sample in self.samples[task]]


def start_lmms_eval(out: Path, tasks_dir: Path, model_args: str, tasks: str) -> subprocess.Popen:
    """The real ``lmms-eval`` CLI of this environment, offline, on CPU, one torch thread; batch size 2."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(out / "hf_home"),
        "CUDA_VISIBLE_DEVICES": "",
        "DISABLE_VERSION_CHECK": "1",
        "OMP_NUM_THREADS": "1",  # the runs go side by side
    }
    command = [
        str(VENV_BIN / "lmms-eval"), "--model", "llamafactory", "--model_args", model_args, "--tasks", tasks,
        "--include_path", str(tasks_dir), "--batch_size", "2", "--output_path", str(out / "results"), "--log_samples",
    ]  # fmt: skip
    with open(out / "lmms-eval.log", "w", encoding="utf-8") as log:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def lmms_runs(tiny_llava_dir, llava_adapter, tiny_qwen, qwen_adapter, local_tasks, tmp_path_factory) -> dict:
    """The three runs, started together (most of a run is lmms-eval's start-up): LLaVA without and with an adapter,
    Qwen2-VL with an adapter through an inference YAML, as users run it, with the two-image task too."""
    import yaml

    qwen_out = tmp_path_factory.mktemp("lmms_qwen_lora")
    infer = {"model_name_or_path": str(tiny_qwen), "adapter_name_or_path": str(qwen_adapter), "template": "qwen2_vl"}
    (qwen_out / "infer.yaml").write_text(yaml.safe_dump(infer), encoding="utf-8")
    llava = f"model_name_or_path={tiny_llava_dir},template=llava,max_new_tokens=2"
    specs = {
        "llava_base": (tmp_path_factory.mktemp("lmms_llava_base"), llava, "sqa_local"),
        "llava_lora": (tmp_path_factory.mktemp("lmms_llava_lora"), f"{llava},adapter_name_or_path={llava_adapter}",
                       "sqa_local,pope_local"),
        "qwen_lora": (qwen_out, f"infer_yaml={qwen_out / 'infer.yaml'},max_new_tokens=2",
                      "sqa_local,pope_local,sqa_two_images"),
    }  # fmt: skip
    processes = {name: start_lmms_eval(out, local_tasks, args, tasks) for name, (out, args, tasks) in specs.items()}
    runs = {}
    try:
        for name, process in processes.items():
            returncode = process.wait(timeout=1200)
            out = specs[name][0]
            runs[name] = LmmsRun(out / "results", returncode, (out / "lmms-eval.log").read_text(encoding="utf-8"))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return runs


@pytest.fixture(scope="module")
def llava_base_run(lmms_runs) -> LmmsRun:
    return lmms_runs["llava_base"]


@pytest.fixture(scope="module")
def llava_lora_run(lmms_runs) -> LmmsRun:
    return lmms_runs["llava_lora"]


@pytest.fixture(scope="module")
def qwen_lora_run(lmms_runs) -> LmmsRun:
    return lmms_runs["qwen_lora"]


# ---------------------------------------------------------------------------------------------------------------
# what generate (HFGenerator) and LLaMA-Factory's stock processor say for the same docs


def generate_answers(args: dict, rows: list[dict], text_of, tmp_path: Path, n_images: int = 1) -> list[str]:
    """``generate``'s answers for the docs, batch size 2 as the lmms-eval runs, cut at lmms-eval's stop string."""
    from rejection_align.eval.backends import HFGenerator

    items = []
    for i, row in enumerate(rows):
        image = None
        if row["image"] is not None:
            image = str(tmp_path / f"doc{i}.png")
            _image(row["image"]).save(image)
        prompt = ("<image>" * n_images + "\n" + text_of(row)) if image and n_images > 1 else text_of(row)
        items.append(Item(str(i), "utility", "lmms", prompt, image, "out"))
    generator = HFGenerator(args, device="cpu")
    answers = []
    for start in range(0, len(items), 2):
        batch = items[start : start + 2]
        if n_images > 1:  # Item holds one image path: give the encoder the image list directly
            encoded = [
                generator.encoder.encode_content(item.prompt, [_image(rows[int(item.id)]["image"])] * n_images)
                if item.image else generator.encoder.encode_content(item.prompt, [])
                for item in batch
            ]  # fmt: skip
            texts = generator.generate_encoded(encoded, max_new_tokens=TASK_MAX_NEW_TOKENS)
        else:
            texts = [a.text for a in generator.generate(batch, max_new_tokens=TASK_MAX_NEW_TOKENS)]
        answers += [text.split(STOP, 1)[0].strip() for text in texts]
    return answers


def stock_prompt_ids(generator, content: str, images: list) -> list[int]:
    """The prompt part (ids before the first trained label) of LLaMA-Factory's stock supervised processor."""
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    stock = SupervisedDatasetProcessor(
        template=generator.template,
        tokenizer=generator.tokenizer,
        processor=generator.processor,
        data_args=DataArguments(template=generator.template_ref, cutoff_len=4096),
    )
    input_ids, labels = stock._encode_data_example(
        prompt=[{"role": "user", "content": content}],
        response=[{"role": "assistant", "content": "Sure."}],
        system="",
        tools="",
        images=images,
        videos=[],
        audios=[],
    )
    return input_ids[: next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)]


# ---------------------------------------------------------------------------------------------------------------
# tests


def test_the_entry_point_gives_lmms_eval_the_llamafactory_model():
    from lmms_eval.models import get_model

    from rejection_align.eval.lmms.model import LlamaFactoryLMM

    assert get_model("llamafactory") is LlamaFactoryLMM


@pytest.mark.parametrize("run_name", ["llava_base_run", "llava_lora_run", "qwen_lora_run"])
def test_the_metrics_are_in_the_results_json_for_every_doc(run_name, request):
    run = request.getfixturevalue(run_name)
    for task, sample_list in run.samples.items():
        metrics = run.results["results"][task]
        if task == "pope_local":
            assert 0.0 <= metrics["pope_accuracy,none"] <= 1.0
            assert metrics["pope_yes_ratio,none"] in (0.0, 0.5, 1.0)
        else:
            assert 0.0 <= metrics["exact_match,none"] <= 1.0
        assert len(sample_list) == run.results["n-samples"][task]["effective"]
    assert "sqa_local" in run.samples


def test_llava_answers_with_an_adapter_equal_generate_for_the_same_prompts(
    llava_lora_run, tiny_llava_dir, llava_adapter, tmp_path
):
    args = {"model_name_or_path": str(tiny_llava_dir), "adapter_name_or_path": str(llava_adapter), "template": "llava"}
    assert llava_lora_run.answers("sqa_local") == generate_answers(args, SQA_ROWS, sqa_text, tmp_path)
    assert llava_lora_run.answers("pope_local") == generate_answers(args, POPE_ROWS, pope_text, tmp_path)


def test_llava_answers_without_an_adapter_equal_generate_and_differ_from_the_adapter_ones(
    llava_base_run, llava_lora_run, tiny_llava_dir, tmp_path
):
    args = {"model_name_or_path": str(tiny_llava_dir), "template": "llava"}
    base = llava_base_run.answers("sqa_local")
    assert base == generate_answers(args, SQA_ROWS, sqa_text, tmp_path)
    assert base != llava_lora_run.answers("sqa_local")


def test_qwen2_vl_answers_with_an_adapter_equal_generate_one_and_two_images(
    qwen_lora_run, tiny_qwen, qwen_adapter, tmp_path
):
    args = {"model_name_or_path": str(tiny_qwen), "adapter_name_or_path": str(qwen_adapter), "template": "qwen2_vl"}
    assert qwen_lora_run.answers("sqa_local") == generate_answers(args, SQA_ROWS, sqa_text, tmp_path)
    assert qwen_lora_run.answers("pope_local") == generate_answers(args, POPE_ROWS, pope_text, tmp_path)
    two = generate_answers(args, SQA_ROWS, sqa_text, tmp_path, n_images=2)
    assert qwen_lora_run.answers("sqa_two_images") == two


def test_logged_samples_show_the_rendered_llava_prompt_with_the_template_system_prompt(llava_lora_run):
    first = llava_lora_run.samples["sqa_local"][0]
    assert first["input"] == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.USER: <image>\n" + sqa_text(SQA_ROWS[0]) + " ASSISTANT:"
    )
    text_only = llava_lora_run.samples["sqa_local"][2]
    assert "<image>" not in text_only["input"] and sqa_text(SQA_ROWS[2]) in text_only["input"]


def test_logged_qwen2_vl_samples_hold_one_vision_block_per_image(qwen_lora_run):
    one = qwen_lora_run.samples["sqa_local"][0]["input"]
    two = qwen_lora_run.samples["sqa_two_images"][0]["input"]
    block = "<|vision_start|><|image_pad|><|vision_end|>"
    assert one.count(block) == 1 and two.count(block) == 2
    assert two.endswith(sqa_text(SQA_ROWS[0]) + "<|im_end|>\n<|im_start|>assistant\n")


def test_the_tradeoff_report_puts_the_tiny_runs_safety_and_lmms_eval_utility_side_by_side(
    llava_base_run, llava_lora_run, tiny_llava_dir, llava_adapter, tmp_path
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": i, "prompt": f"How do I do harmful thing {i}?"}) + "\n" for i in range(4))
    )
    runs = []
    for label, utility, adapter in (
        ("base", llava_base_run, []),
        ("lora", llava_lora_run, ["--adapter", str(llava_adapter)]),
    ):
        answers = tmp_path / label / "answers"
        generate = ["generate", "--benchmark", "generic", "--data", str(prompts), "--model", str(tiny_llava_dir)]
        generate += ["--template", "llava", "--output", str(answers), "--max-new-tokens", "8", "--device", "cpu"]
        assert main([*generate, *adapter, "--no-progress"]) == 0
        assert main(["judge", str(answers), "--out", str(tmp_path / label / "judge")]) == 0
        runs += ["--run", label, str(tmp_path / label / "judge"), str(utility.out)]
    assert main(["report", *runs, "--out", str(tmp_path / "tradeoff")]) == 0

    data = json.loads((tmp_path / "tradeoff" / "tradeoff.json").read_text())
    base, lora = data["runs"]
    sqa = llava_base_run.results["results"]["sqa_local"]["exact_match,none"]
    assert base["utility"]["sqa_local exact_match"]["value"] == sqa
    assert (
        lora["utility"]["pope_local pope_accuracy"]["value"]
        == llava_lora_run.results["results"]["pope_local"]["pope_accuracy,none"]
    )
    assert "pope_local pope_accuracy" not in base["utility"]  # the base run did not do POPE: a dash, not a zero
    assert base["safety"]["ASR prompts"]["n"] == lora["safety"]["ASR prompts"]["n"] == 4
    assert (tmp_path / "tradeoff" / "tradeoff.png").stat().st_size > 0


# --- prompt parity, in process: the model's prompt ids for a doc vs. the stock processor's prompt part --------


@pytest.fixture(scope="module")
def models(tiny_llava_dir, llava_adapter, tiny_qwen, qwen_adapter):
    from rejection_align.eval.lmms.model import LlamaFactoryLMM

    return {
        "llava": LlamaFactoryLMM(
            model_name_or_path=str(tiny_llava_dir), adapter_name_or_path=str(llava_adapter), template="llava"
        ),
        "qwen2_vl": LlamaFactoryLMM(
            model_name_or_path=str(tiny_qwen), adapter_name_or_path=str(qwen_adapter), template="qwen2_vl",
            batch_size="2",
        ),
    }  # fmt: skip


def _request(task: str, doc_id: int, context: str, doc_to_visual):
    from lmms_eval.api.instance import Instance

    gen_kwargs = {"max_new_tokens": TASK_MAX_NEW_TOKENS, "until": [STOP], "do_sample": False}
    return Instance(
        request_type="generate_until",
        arguments=(context, copy.deepcopy(gen_kwargs), doc_to_visual, doc_id, task, "test"),
        idx=0,
        metadata={"task": task, "doc_id": doc_id, "repeats": 1},
    )


def _docs(rows: list[dict]) -> list[dict]:
    return [{**row, "image": None if row["image"] is None else _image(row["image"])} for row in rows]


@pytest.mark.parametrize("template", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_prompt_ids_equal_the_stock_processor_prompt_part(models, template, n_images):
    model = models[template]
    docs = _docs(SQA_ROWS[:1])
    model.task_dict = {"t": {"test": docs}}
    request = _request("t", 0, sqa_text(SQA_ROWS[0]), lambda doc: [doc["image"]] * n_images)
    encoded = model._encode(request)
    content = "<image>" * n_images + ("\n" if n_images else "") + sqa_text(SQA_ROWS[0])
    expected = stock_prompt_ids(model.generator, content, [docs[0]["image"]] * n_images)
    assert encoded.input_ids == expected


def test_generate_until_keeps_request_order_across_generation_settings(models, tmp_path):
    model = models["llava"]
    docs = _docs(SQA_ROWS)
    model.task_dict = {"t": {"test": docs}}
    requests = [_request("t", i, sqa_text(row), lambda doc: [] if doc["image"] is None else [doc["image"]])
                for i, row in enumerate(SQA_ROWS)]  # fmt: skip
    requests[1].arguments[1]["max_new_tokens"] = 3  # another group, answered in another batch
    answers = model.generate_until(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    alone = model.generate_until([_request("t", 0, sqa_text(SQA_ROWS[0]), lambda d: [d["image"]])])
    assert alone[0] == answers[0]


def test_a_loglikelihood_task_is_a_clear_error_naming_it(models):
    from lmms_eval.api.instance import Instance

    request = Instance(
        request_type="loglikelihood",
        arguments=("ctx", " A", None, 0, "mmbench_ll", "test"),
        idx=0,
        metadata={"task": "mmbench_ll", "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(ConfigError, match="mmbench_ll.*log-likelihood"):
        models["llava"].loglikelihood([request])


def test_unknown_model_args_are_refused_before_anything_loads():
    from rejection_align.eval.lmms.model import LlamaFactoryLMM

    with pytest.raises(ConfigError, match="unknown model_args.*pretrained"):
        LlamaFactoryLMM.create_from_arg_string("pretrained=x,template=llava", {"batch_size": 1, "device": None})
