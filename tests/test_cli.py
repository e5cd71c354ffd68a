"""The `seal` command line: flags generated from the config dataclasses, shared flags, precedence."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from seal_cli import main as seal_main
from seal_cli.dataclass_args import ConfigArgs
from seal_core.errors import ConfigError

# Every flag and positional of each command before its flags were generated (seal-curate c33b3fc).
TODAY_FLAGS = {
    "ingest": ["INPUT", "--out", "--format", "--hh-field", "--max-chars", "--csv-header", "--split", "--config",
               "--set", "--no-progress", "-q", "--quiet"],
    "rank": ["--pool", "--safe", "--model", "--method", "--out", "--epochs", "--max-length", "--config", "--set",
             "--resume", "--no-progress"],
    "select": ["--scores", "--pool", "--top-k", "--top-p", "--min-score", "--out", "--export", "--alpaca-multiturn",
               "--batch-size", "--memory-mb", "--config", "--set", "--no-progress"],
    "inspect": ["SCORES", "--pool", "--labels", "--label-key", "--top", "--bins", "--plot", "--json"],
    "finetune": ["--data", "--model", "--out", "--epochs", "--lr", "--max-length", "--max-samples", "--mix-safe",
                 "--merge", "--config", "--set", "--resume", "--no-progress"],
    "generate": ["--prompts", "--out", "--model", "--adapter", "--max-new-tokens", "--decoding", "--batch-size",
                 "--limit", "--seed", "--config", "--set", "--resume", "--no-progress"],
    "evaluate": ["--candidate", "--baseline", "--harmful-candidate", "--harmful-baseline", "--candidate-name",
                 "--baseline-name", "--out", "--config", "--set", "--judge", "--judge-template", "--harm-template",
                 "--judge-key-env", "--concurrency", "--timeout", "--max-retries", "--judge-max-tokens", "--device",
                 "--dtype", "--batch-size", "--no-resume", "--refusal-method", "--seed", "--n-bootstrap"],
    "run": ["--config", "--set"],
    "demo": ["--run-dir", "--set"],
}
REQUIRED = {
    "ingest": ["INPUT", "--out"],
    "rank": ["--pool", "--out"],
    "select": ["--scores", "--pool", "--out"],
    "inspect": ["SCORES"],
    "finetune": ["--data", "--out"],
    "generate": ["--prompts", "--out"],
    "run": ["--config"],
}
# The smallest command line each stage command accepts.
BASE = {
    "ingest": ["--out", "o", "a.jsonl"],
    "rank": ["--pool", "p", "--out", "o"],
    "select": ["--scores", "s", "--pool", "p", "--out", "o"],
    "finetune": ["--data", "d", "--out", "o"],
    "generate": ["--prompts", "p.jsonl", "--out", "o.jsonl"],
}
GENERATED = ["ingest", "rank", "select", "finetune", "generate"]


def subparser(cmd: str) -> argparse.ArgumentParser:
    parser = seal_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[cmd]


def parse(cmd: str, argv: list[str]) -> argparse.Namespace:
    return seal_main.build_parser().parse_args([cmd, *argv])


def config_of(cmd: str, argv: list[str]):
    args = parse(cmd, argv)
    return importlib.import_module(f"seal_cli.commands.{cmd}").build_config(args), args


def help_entries(capsys, monkeypatch, cmd: str) -> list[str]:
    """The --help text of ``cmd`` split into one string per option (no line wrapping)."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as e:
        seal_main.main([cmd, "--help"])
    assert e.value.code == 0
    entries: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"^  \S", line):
            entries.append(line.strip())
        elif re.match(r"^ {3,}\S", line) and entries:
            entries[-1] += " " + line.strip()
    return entries


def entry_for(entries: list[str], names: tuple[str, ...]) -> str:
    return next(e for e in entries if re.match(re.escape(names[0]) + r"[ ,]", e + " "))


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("cmd", seal_main.COMMANDS)
def test_help_shows_each_default_at_most_once(cmd, capsys, monkeypatch):
    entries = help_entries(capsys, monkeypatch, cmd)
    assert entries
    for entry in entries:
        assert entry.count("(default") <= 1, entry
        assert "(default: None)" not in entry


@pytest.mark.parametrize("cmd", GENERATED)
def test_help_shows_the_dataclass_defaults_and_choices(cmd, capsys, monkeypatch):
    spec = importlib.import_module(f"seal_cli.commands.{cmd}").ARGS
    entries = help_entries(capsys, monkeypatch, cmd)
    defaults = {f.name: f for f in dataclasses.fields(spec.cls)}
    for flag in spec.flags:
        entry = entry_for(entries, flag.names)
        f = defaults[flag.key]
        if f.default not in (None, "", dataclasses.MISSING):
            shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
            assert f"(default: {shown})" in entry
        if "choices" in flag.kwargs:
            assert "{" + ",".join(flag.kwargs["choices"]) + "}" in entry


def test_rank_help_has_no_pasted_defaults(capsys, monkeypatch):
    entries = help_entries(capsys, monkeypatch, "rank")
    assert entry_for(entries, ("--model",)).endswith("(default: smollm2-135m-instruct)")
    assert entry_for(entries, ("--epochs",)).endswith("(default: 3)")
    assert "(default: combined)" in entry_for(entries, ("--method",))
    assert "{combined,seal,seal-penalty,seal-probe,random,loss,relevance,prior,dsir,compliance}" in entry_for(entries, ("--method",))
    assert "(default" not in entry_for(entries, ("--pool",))
    # The nested sections are named as --set keys.
    assert any("lora.KEY" in e and "selector.KEY" in e for e in entries)


def test_help_does_not_import_torch_transformers_or_prefect():
    code = ("import sys; from seal_cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_command_module_is_an_error(monkeypatch):
    monkeypatch.setattr(seal_main, "COMMANDS", [*seal_main.COMMANDS, "no_such_command"])
    with pytest.raises(ModuleNotFoundError):
        seal_main.build_parser()


# ----------------------------------------------------------------------------- today's flags


@pytest.mark.parametrize("cmd", TODAY_FLAGS)
def test_every_flag_of_today_exists_and_required_stay_required(cmd):
    actions = subparser(cmd)._actions
    names = {n: a for a in actions for n in (a.option_strings or [a.metavar])}
    assert set(TODAY_FLAGS[cmd]) <= set(names)
    for name in REQUIRED.get(cmd, []):
        assert names[name].required, name
    for name in set(TODAY_FLAGS[cmd]) - set(REQUIRED.get(cmd, [])):
        assert not names[name].required, name


@pytest.mark.parametrize("cmd", [c for c in REQUIRED if c in BASE])
def test_a_missing_required_flag_exits_2(cmd, capsys):
    argv = BASE[cmd]
    for name in REQUIRED[cmd]:
        if name.startswith("--"):
            i = argv.index(name)
            reduced = argv[:i] + argv[i + 2:]
        else:
            reduced = [a for a in argv if a != "a.jsonl"]
        with pytest.raises(SystemExit) as e:
            parse(cmd, reduced)
        assert e.value.code == 2
    capsys.readouterr()


CASES = [
    ("rank", [], {"pool": "p", "out": "o", "safe": "", "model": "smollm2-135m-instruct", "method": "combined",
                  "epochs": 3, "max_length": 512, "progress": True, "args.resume": False}),
    ("rank", ["--safe", "s", "--model", "m", "--method", "dsir", "--epochs", "2", "--max-length", "64",
              "--no-progress", "--resume"],
     {"safe": "s", "model": "m", "method": "dsir", "epochs": 2, "max_length": 64, "progress": False,
      "args.resume": True}),
    ("rank", ["--set", "selector.update=reference", "--set", "model_lr=2e-4", "--set", "lora.r=8"],
     {"selector.update": "reference", "model_lr": 2e-4, "lora.r": 8}),
    ("finetune", [], {"data": "d", "out": "o", "model": "smollm2-135m-instruct", "epochs": 2, "lr": 1e-5,
                      "max_length": 512, "max_samples": 0, "mix_safe": "", "merge": False, "progress": True,
                      "args.resume": False}),
    ("finetune", ["--model", "m", "--epochs", "1", "--lr", "2e-5", "--max-length", "256", "--max-samples", "10",
                  "--mix-safe", "safe.jsonl", "--merge", "--no-progress", "--resume", "--set", "lora.r=8"],
     {"model": "m", "epochs": 1, "lr": 2e-5, "max_length": 256, "max_samples": 10, "mix_safe": "safe.jsonl",
      "merge": True, "progress": False, "args.resume": True, "lora.r": 8}),
    ("generate", [], {"prompts": "p.jsonl", "out": "o.jsonl", "model": "", "adapter": "", "max_new_tokens": 256,
                      "decoding": "greedy", "batch_size": 8, "limit": 0, "seed": 0, "progress": True,
                      "args.resume": False}),
    ("generate", ["--model", "m", "--adapter", "a", "--max-new-tokens", "8", "--decoding", "paper",
                  "--batch-size", "2", "--limit", "3", "--seed", "4", "--no-progress", "--resume",
                  "--set", "top_p=0.95"],
     {"model": "m", "adapter": "a", "max_new_tokens": 8, "decoding": "paper", "batch_size": 2, "limit": 3,
      "seed": 4, "progress": False, "args.resume": True, "top_p": 0.95}),
    ("ingest", [], {"args.inputs": ["a.jsonl"], "args.out": "o", "args.quiet": False, "format": "auto",
                    "hh_field": "chosen", "max_chars": 200_000, "csv_header": "auto", "split": "train",
                    "progress": True}),
    ("ingest", ["b.jsonl", "--format", "hh", "--hh-field", "rejected", "--max-chars", "100", "--csv-header", "no",
                "--split", "test", "--no-progress", "-q"],
     {"args.inputs": ["a.jsonl", "b.jsonl"], "format": "hh", "hh_field": "rejected", "max_chars": 100,
      "csv_header": "no", "split": "test", "progress": False, "args.quiet": True}),
    ("ingest", ["--quiet", "--set", "max_chars=50000"], {"args.quiet": True, "max_chars": 50000}),
    ("select", ["--top-k", "4"], {"args.scores": "s", "args.pool": "p", "args.out": "o", "top_k": 4,
                                  "top_p": None, "min_score": None, "export": "messages",
                                  "alpaca_multiturn": "reject", "batch_size": 65536, "memory_mb": 512,
                                  "progress": True}),
    ("select", ["--top-p", "0.5", "--export", "alpaca", "--alpaca-multiturn", "history", "--batch-size", "10",
                "--memory-mb", "20", "--no-progress"],
     {"top_k": None, "top_p": 0.5, "export": "alpaca", "alpaca_multiturn": "history", "batch_size": 10,
      "memory_mb": 20, "progress": False}),
    ("select", ["--min-score", "-1.5", "--export", "none"], {"min_score": -1.5, "top_k": None, "export": "none"}),
    ("select", ["--set", "top_k=2"], {"top_k": 2}),
]


def resolve(cfg, args, path: str):
    obj, parts = (args, path.split(".")[1:]) if path.startswith("args.") else (cfg, path.split("."))
    for p in parts:
        obj = getattr(obj, p)
    return obj


@pytest.mark.parametrize("cmd,argv,expected", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_todays_flags_give_todays_config(cmd, argv, expected):
    cfg, args = config_of(cmd, BASE[cmd] + argv)
    assert {k: resolve(cfg, args, k) for k in expected} == expected


def test_inspect_flags():
    args = parse("inspect", ["sc.parquet"])
    assert (args.scores, args.pool, args.labels, args.id_field, args.top, args.bins, args.plot, args.json) == (
        "sc.parquet", None, None, "sample_id", 5, 20, None, None)
    args = parse("inspect", ["sc", "--pool", "p", "--labels", "l.jsonl", "--label-key", "id", "--top", "2",
                             "--bins", "3", "--plot", "h.png", "--json", "s.json"])
    assert (args.pool, args.labels, args.id_field, args.top, args.bins, args.plot, args.json) == (
        "p", "l.jsonl", "id", 2, 3, "h.png", "s.json")


def test_select_modes_are_exclusive_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        parse("select", BASE["select"] + ["--top-k", "3", "--top-p", "0.5"])
    capsys.readouterr()


# ----------------------------------------------------------------------------- precedence


@pytest.mark.parametrize("cmd,key,flag,default", [
    ("rank", "max_length", "--max-length", 512),
    ("finetune", "epochs", "--epochs", 2),
    ("generate", "max_new_tokens", "--max-new-tokens", 256),
    ("ingest", "max_chars", "--max-chars", 200_000),
])
def test_precedence_default_config_flag_set(cmd, key, flag, default, tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"{key}: 11\n")
    base = BASE[cmd]
    assert getattr(config_of(cmd, base)[0], key) == default
    assert getattr(config_of(cmd, base + ["--config", str(yaml_file)])[0], key) == 11
    assert getattr(config_of(cmd, base + ["--config", str(yaml_file), flag, "22"])[0], key) == 22
    argv = base + ["--set", f"{key}=33", "--config", str(yaml_file), flag, "22"]
    assert getattr(config_of(cmd, argv)[0], key) == 33


def test_a_flag_left_out_keeps_the_config_file_value(tmp_path):
    yaml_file = tmp_path / "rank.yaml"
    yaml_file.write_text("model: from-yaml\nprogress: false\nselector: {update: reference}\n")
    cfg, _ = config_of("rank", BASE["rank"] + ["--config", str(yaml_file), "--epochs", "5"])
    assert (cfg.model, cfg.progress, cfg.selector.update, cfg.epochs) == ("from-yaml", False, "reference", 5)


def test_select_config_section_then_set_then_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("select: {top_p: 0.3, batch_size: 7}\nrank: {epochs: 1}\n")
    base = BASE["select"] + ["--config", str(yaml_file)]
    cfg, _ = config_of("select", base)
    assert (cfg.top_p, cfg.batch_size) == (0.3, 7)
    cfg, _ = config_of("select", base + ["--set", "batch_size=9"])
    assert cfg.batch_size == 9
    # In `seal select` a flag wins over --set, as it always has.
    cfg, _ = config_of("select", base + ["--set", "batch_size=9", "--batch-size", "11"])
    assert cfg.batch_size == 11
    # A mode flag replaces the mode of the config file and of --set.
    cfg, _ = config_of("select", base + ["--set", "top_k=2", "--top-k", "3"])
    assert (cfg.mode, cfg.top_k, cfg.top_p) == ("top_k", 3, None)
    cfg, _ = config_of("select", base + ["--set", "top_k=2", "--min-score", "0.5"])
    assert (cfg.mode, cfg.min_score, cfg.top_k) == ("min_score", 0.5, None)


def test_a_bad_set_value_is_a_config_error():
    with pytest.raises(ConfigError, match="max_chars"):
        config_of("ingest", BASE["ingest"] + ["--set", "max_chars=-1"])


# ----------------------------------------------------------------------------- the generator


@dataclass
class Inner:
    width: int = field(default=3, metadata={"help": "Width."})
    style: Literal["a", "b"] = field(default="a", metadata={"help": "Style."})


@dataclass
class Toy:
    name: str = field(default="", metadata={"help": "Name."})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "Mode."})
    rate: Optional[float] = field(default=None, metadata={"help": "Rate, 50% of the time."})
    tags: list[str] = field(default_factory=lambda: ["x", "y"], metadata={"help": "Tags."})
    verbose: bool = field(default=False, metadata={"help": "Talk."})
    out_dir: str = field(default="out", metadata={"help": "Where."})
    inner: Inner = field(default_factory=Inner, metadata={"help": "Inner settings."})
    extra: dict = field(default_factory=dict, metadata={"help": "Anything."})


def toy_parser(spec: ConfigArgs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    spec.add_to(p)
    return p


def test_generator_maps_annotations_to_flags():
    spec = ConfigArgs(Toy, aliases={"out_dir": "--out"})
    p = toy_parser(spec)
    assert spec.values(p.parse_args([])) == {}
    args = p.parse_args(["--name", "n", "--mode", "slow", "--rate", "0.5", "--tags", "a", "b", "--verbose",
                         "--out", "d"])
    assert spec.values(args) == {"name": "n", "mode": "slow", "rate": 0.5, "tags": ["a", "b"], "verbose": True,
                                 "out_dir": "d"}
    assert spec.values(p.parse_args(["--verbose", "--no-verbose"])) == {"verbose": False}
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "medium"])
    with pytest.raises(SystemExit):
        p.parse_args(["--out-dir", "d"])  # the alias replaces the generated name
    assert spec.set_only == ("inner", "extra")


def test_generator_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    text = re.sub(r"\s+", " ", toy_parser(ConfigArgs(Toy)).format_help())
    assert "--mode {fast,slow} Mode. (default: fast)" in text
    assert "Rate, 50% of the time. --tags" in text  # '%' survives argparse's formatting; no default to show
    assert "Tags. (default: x y)" in text and "Talk. (default: false)" in text
    assert "With --set only: inner.KEY, extra." in text


def test_a_new_field_gets_a_flag_with_no_cli_change():
    @dataclass
    class Grown(Toy):
        patience: int = field(default=7, metadata={"help": "Steps to wait."})

    spec = ConfigArgs(Grown)
    assert spec.values(toy_parser(spec).parse_args(["--patience", "9"])) == {"patience": 9}


def test_expand_gives_flags_to_a_nested_section():
    spec = ConfigArgs(Toy, expand=("inner",), aliases={"inner.style": "--style"})
    args = toy_parser(spec).parse_args(["--inner-width", "5", "--style", "b"])
    assert spec.values(args) == {"inner": {"width": 5, "style": "b"}}


def test_exclusive_flags_replace_their_whole_group():
    spec = ConfigArgs(Toy, exclusive=(("name", "rate"),))
    p = toy_parser(spec)
    assert spec.values(p.parse_args(["--rate", "1"])) == {"name": None, "rate": 1.0}
    with pytest.raises(SystemExit):
        p.parse_args(["--rate", "1", "--name", "n"])


def test_declarations_naming_no_field_fail_at_once():
    with pytest.raises(ValueError, match="nam"):
        ConfigArgs(Toy, required=("nam",))
    with pytest.raises(ValueError, match="no_such"):
        ConfigArgs(Toy, aliases={"no_such": "--x"})
    with pytest.raises(ValueError, match="cannot be required"):
        ConfigArgs(Toy, required=("extra",))
