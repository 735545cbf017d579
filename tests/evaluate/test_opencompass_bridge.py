"""The OpenCompass config middo writes and the checks and run around it (:mod:`middo.evaluate.opencompass_bridge`)."""

import json
import sys

import pytest

from middo.config import PAPER_OPENCOMPASS_DATASETS, OpenCompassConfig
from middo.errors import MiddoError
from middo.evaluate.opencompass_bridge import (
    PAPER_CONFIGS,
    check_config,
    check_python,
    check_tokenizer,
    evaluate_opencompass,
    render_config,
    resolve_datasets,
    stream,
)

# ---- the config OpenCompass runs ----


def _config(limit=0, backend="vllm", model="models/round_3"):
    datasets = resolve_datasets(PAPER_OPENCOMPASS_DATASETS)
    return render_config(model, "middo_round_3", datasets, backend, 4096, 16, 2, limit)


def test_config_imports_the_eight_paper_datasets_and_the_paper_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _config()
    compile(text, "opencompass_config.py", "exec")
    for name, (folder, variable) in PAPER_CONFIGS.items():
        assert f"from opencompass.configs.datasets.{folder}.{name} import {variable} as {name}\n" in text
    assert set(PAPER_CONFIGS) == set(PAPER_OPENCOMPASS_DATASETS)
    assert "type=VLLMwithChatTemplate," in text and "from opencompass.models import VLLMwithChatTemplate" in text
    assert f"path={str(tmp_path / 'models' / 'round_3')!r}," in text  # absolute: OpenCompass runs elsewhere
    assert "abbr='middo_round_3'," in text
    assert "max_out_len=4096," in text and "batch_size=16," in text
    assert "generation_kwargs=dict(temperature=0)," in text
    assert "model_kwargs=dict(tensor_parallel_size=2)," in text and "run_cfg=dict(num_gpus=2)," in text
    assert "summarizer = dict(summary_groups=mmlu_summary_groups)" in text
    assert "test_range" not in text  # limit 0: every item


def test_config_limit_slices_every_dataset_and_hf_backend_is_greedy():
    text = _config(limit=5, backend="hf")
    compile(text, "opencompass_config.py", "exec")
    assert "for _dataset in datasets:\n    _dataset['reader_cfg']['test_range'] = '[0:5]'\n" in text
    assert "type=HuggingFacewithChatTemplate," in text and "generation_kwargs=dict(do_sample=False)," in text
    assert "tensor_parallel_size" not in text and "run_cfg=dict(num_gpus=2)," in text


def test_datasets_resolve_in_the_users_opencompass(tmp_path):
    configs = tmp_path / "opencompass" / "configs" / "datasets"
    (configs / "gsm8k").mkdir(parents=True)
    (configs / "gsm8k" / "gsm8k_gen_1d7fe4.py").write_text("gsm8k_datasets = []\n")
    (configs / "ARC_c").mkdir()
    # the form of OpenCompass's short configs (configs/datasets/gsm8k/gsm8k_gen.py): a read_base import
    (configs / "ARC_c" / "ARC_c_gen.py").write_text(
        "from mmengine.config import read_base\nwith read_base():\n    from .ARC_c_gen_1e0de5 import ARC_c_datasets\n"
    )
    found = resolve_datasets(["gsm8k_gen_1d7fe4", "ARC_c_gen"], configs)
    assert [(d.module, d.variables) for d in found] == [
        ("opencompass.configs.datasets.gsm8k.gsm8k_gen_1d7fe4", ("gsm8k_datasets",)),
        ("opencompass.configs.datasets.ARC_c.ARC_c_gen", ("ARC_c_datasets",)),
    ]
    with pytest.raises(MiddoError) as err:
        resolve_datasets(["math_gen_265cce", "nope_gen"], configs)
    assert "'math_gen_265cce' is not in your OpenCompass" in str(err.value)
    assert "'nope_gen' matches 0 configs" in str(err.value)  # both problems in one error
    with pytest.raises(MiddoError, match="not one of the paper's eight"):
        resolve_datasets(["ARC_c_gen"])
    with pytest.raises(MiddoError, match="eval.opencompass.datasets: empty"):
        resolve_datasets([], configs)


# ---- running it in the user's env ----


def _evaluate(tmp_path, config):
    return evaluate_opencompass(
        model_path=tmp_path, limit=0, out_path=tmp_path / "eval.json", seed=1, bootstrap=100, config=config, round_=1
    )


def test_python_unset_or_missing_names_the_param(tmp_path):
    with pytest.raises(MiddoError, match="eval.opencompass.python: not set"):
        check_python("")
    missing = tmp_path / "oc-env" / "bin" / "python"
    with pytest.raises(MiddoError, match=r"eval.opencompass.python: .*oc-env/bin/python does not exist"):
        _evaluate(tmp_path, OpenCompassConfig(python=str(missing)))


def test_a_python_without_opencompass_says_how_to_install_it(tmp_path):
    # this project's own env: it never has opencompass (it would downgrade numpy)
    with pytest.raises(MiddoError) as err:
        _evaluate(tmp_path, OpenCompassConfig(python=sys.executable))
    message = str(err.value)
    assert message.startswith(f"eval.opencompass.python: {sys.executable} cannot import opencompass")
    assert "No module named 'opencompass'" in message and "-m pip install opencompass" in message
    assert not (tmp_path / "eval.json").exists()


def test_a_transformers_5_tokenizer_fails_early_in_a_transformers_4_env(tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))  # as transformers 5 saves it
    with pytest.raises(MiddoError, match="tokenizer_class 'TokenizersBackend'.* transformers 4.57.6 of your"):
        check_tokenizer(tmp_path, "4.57.6")
    check_tokenizer(tmp_path, "5.2.0")
    config.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))  # both load this one
    check_tokenizer(tmp_path, "4.57.6")


def test_a_config_transformers_4_would_misread_fails_early_naming_the_keys(tmp_path):
    from transformers import LlamaConfig

    from middo.checkpoint_config import make_config_portable

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    scaling["original_max_position_embeddings"] = 8192
    llama31 = LlamaConfig(hidden_size=16, num_attention_heads=2, rope_theta=5e5, rope_scaling=scaling)
    llama31.save_pretrained(tmp_path)  # transformers 5 writes rope_parameters only
    with pytest.raises(MiddoError) as err:
        check_config(tmp_path, "4.57.6")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: the transformers 4.57.6 of your OpenCompass env")
    assert "rope_theta: transformers 4 reads 10000.0 (absent, so its default), rope_parameters say 500000.0" in message
    assert "rope_scaling: transformers 4 reads null" in message and "-m middo.checkpoint_config" in message
    check_config(tmp_path, "5.2.0")  # transformers 5 reads rope_parameters
    assert make_config_portable(tmp_path)
    check_config(tmp_path, "4.57.6")


def test_a_failing_command_raises_with_its_last_lines(tmp_path, capsys):
    script = "import sys\nfor i in range(60): print('line', i)\nsys.exit(3)"
    with pytest.raises(MiddoError) as err:
        stream([sys.executable, "-c", script], cwd=tmp_path)
    message = str(err.value)
    assert "exited with 3" in message and message.endswith("line 59")
    assert "line 19" not in message  # only the tail
    assert "line 0\n" in capsys.readouterr().out  # the output was streamed as it came
