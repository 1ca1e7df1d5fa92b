"""One-line messages for what `r1-lightning` rejects: the cause first, where it came from, what to do.

jsonargparse reports a bad config value as usage text and a nested "Union subtypes" dump, and an
error raised by a constructor (a missing data file, a model that is not there) comes out wrapped in
the same dump. The CLI parses with `exit_on_error=False`, so the parser raises its `ArgumentError`
instead of printing; `describe_parse_error` reads the chain of exceptions behind it (each level
says which key or class it was checking) and `describe_failure` finds the cause of a run that failed
on bad input. Both return `None` when they do not recognize the error, and the caller re-raises it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import traceback
from pathlib import Path

import yaml

from r1_lightning.data.readers import DataFormatError

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_SUBCOMMAND_REJECTS = re.compile(r"Subcommand '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)", re.IGNORECASE)
_CLASS_REPR = re.compile(r"<class '(?:builtins\.)?([\w.]+)'>")

class UsageError(Exception):
    """Bad input the command reports in one line, as is (the message names the option and the fix)."""


class SubcommandParser(argparse.ArgumentParser):
    """argparse for the subcommands outside LightningCLI (quickstart, sweep), held to its rules: an
    option is never matched by a prefix of its name, and a mistake raises `UsageError` (one line,
    naming the closest option) instead of printing the usage text."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        unknown = _UNRECOGNIZED.match(message)
        raise self.unknown_option(unknown[1].split("=", 1)[0]) if unknown else UsageError(message)

    def long_options(self) -> list[str]:
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]

    def unknown_option(self, flag: str) -> UsageError:
        """The one-line refusal of `flag`, naming the closest option of this subcommand."""
        return UsageError(f"{flag}: no such option of `{self.prog}`{did_you_mean(flag, self.long_options())}")


def exception_chain(error: BaseException) -> list[BaseException]:
    """`error`, then what caused it, down to the root (`__cause__`, else an unsuppressed `__context__`)."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n", 1)[0]


def flag_values(argv: list[str], *flags: str) -> list[str]:
    """The values of `flag VALUE` / `flag=VALUE` on a command line, in the order given."""
    values = []
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        if name in flags and equals:
            values.append(value)
        elif arg in flags and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values


def _yaml_line(node: yaml.Node, keys: list[str]) -> int | None:
    """The 1-based line of the key `keys` (one name per level) under `node`; any item of a list may
    hold the rest of the path."""
    if not keys:
        return None
    if isinstance(node, yaml.SequenceNode):
        return next((line for item in node.value if (line := _yaml_line(item, keys))), None)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == keys[0]:
                return key_node.start_mark.line + 1 if len(keys) == 1 else _yaml_line(value_node, keys[1:])
    return None


def locate_option(option: str, argv: list[str]) -> str | None:
    """Where `option` (e.g. `model.init_args.learning_rate`) was set: the command-line flag that set it
    (`--model.learning_rate`), or `file:line` in the last config file that sets it (later files
    override earlier ones)."""
    def plain(name: str) -> str:
        return name.replace(".init_args.", ".").removesuffix(".class_path")

    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and plain(flag[2:]) == plain(option):
            return flag
    for path in reversed(flag_values(argv, "--config", "-c")):
        try:
            root = yaml.compose(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        line = _yaml_line(root, option.split(".")) if root is not None else None
        if line is not None:
            return f"{path}:{line}"
    return None


def _yaml_syntax_error(argv: list[str]) -> str | None:
    """`file:line: invalid YAML: ...` for the first config file that does not parse."""
    for path in flag_values(argv, "--config", "-c"):
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.MarkedYAMLError as error:
            line = error.problem_mark.line + 1 if error.problem_mark else "?"
            return f"{path}:{line}: invalid YAML: {error.problem}"
        except (OSError, yaml.YAMLError):
            continue
    return None


def did_you_mean(name: str, candidates: list[str], cutoff: float = 0.6) -> str:
    """` (did you mean X?)` for the candidate closest to `name`, if one is at least `cutoff` alike; else ""."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def _init_parameters(class_path: str) -> list[str]:
    """The constructor arguments of `class_path` (and of its bases while a constructor passes
    `**kwargs` on), or [] when it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for base in cls.__mro__:
        parameters = inspect.signature(base.__init__).parameters.values()
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def _expected(message: str) -> str:
    """jsonargparse's `Expected a <class 'float'>. Got value: abc` as `expected a float, got 'abc'`."""
    message = re.sub(r"\ba ([aeiou])", r"an \1", _CLASS_REPR.sub(r"\1", message))
    if ". Got value: " in message:
        head, value = message.split(". Got value: ", 1)
        message = f"{head}, got {value!r}"
    return message[:1].lower() + message[1:]


def describe_parse_error(error: BaseException, argv: list[str]) -> str:
    """One line for a jsonargparse parse error: `where: option: what was wrong`."""
    keys: list[str] = []
    class_path, in_class, problem = None, False, None
    previous = None
    for cause in exception_chain(error):
        line = _first_line(cause)
        if line == previous:  # the same error re-raised one level up
            continue
        previous = line
        if match := _PARSER_KEY.match(line):
            keys += (["init_args"] if in_class else []) + match[1].split(".")
            in_class = False
        elif match := _CLASS_PATH.match(line):
            class_path, in_class = match[1], True
        elif match := _NOT_ACCEPTED.match(line):
            keys += (["init_args"] if in_class else []) + [match[1]]
            suggestion = did_you_mean(match[1], _init_parameters(class_path or ""))
            problem = f"no such option of {class_path or 'this class'}{suggestion}"
        elif match := _SUBCOMMAND_REJECTS.match(line):
            keys = match[2].split(".")
            parsers = [c.subcommand_parser for c in exception_chain(error) if hasattr(c, "subcommand_parser")]
            options = list(parsers[0].get_defaults().keys()) if parsers else []
            problem = f"no such option of `{match[1]}`{did_you_mean(match[2], options)}"
        elif match := _UNRECOGNIZED.match(line):
            flag = match[1].split("=", 1)[0]
            keys = [flag.lstrip("-")]
            options = next((c.known_options for c in exception_chain(error) if hasattr(c, "known_options")), [])
            problem = f"no such option{did_you_mean(flag, options)}"
    root = exception_chain(error)[-1]
    if isinstance(root, yaml.YAMLError) and (syntax := _yaml_syntax_error(argv)):
        return syntax
    if problem is None and in_class and isinstance(root, (ImportError, AttributeError)):
        keys.append("class_path")
        problem = f"cannot import {class_path!r} ({root})"
    if problem is None:
        problem = _expected(_first_line(root))
    option = ".".join(keys)
    return _located(option, problem, argv) if option else problem


def _located(option: str, problem: str, argv: list[str]) -> str:
    """`problem` led by where `option` was set: `--flag: problem`, `file:line: option: problem`, or
    `option: problem` when neither the command line nor a config file sets it (a default)."""
    where = locate_option(option, argv)
    if where is None:
        return f"{option}: {problem}"
    return f"{where}: {problem}" if where.startswith("--") else f"{where}: {option}: {problem}"


def locate_value(message: str, argv: list[str]) -> str | None:
    """Where a value that `message` quotes ('...') was set: `--flag`, or `file:line: key` in the
    last config file that sets it. For errors raised by a constructor, which name the value they
    refused but not the option it came from."""
    quoted = set(re.findall(r"'([^']+)'", message))
    for index, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        value = value if equals else (argv[index + 1] if index + 1 < len(argv) else "")
        if name.startswith("--") and value in quoted:
            return name
    for path in reversed(flag_values(argv, "--config", "-c")):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, start=1):
            key, colon, value = line.strip().removeprefix("- ").partition(":")
            if colon and value.strip().strip("'\"") in quoted:
                return f"{path}:{number}: {key}"
    return None


# Optional packages: the option that needs each, the extra that installs it, and what to do without it.
OPTIONAL_PACKAGES = {
    "vllm": ("model.init_args.engine", "vllm",
             ("on a CUDA machine; without vLLM, generate with the policy itself: "
              "--model.init_args.engine r1_lightning.rollout.HFEngine")),
    "wandb": ("trainer.logger", "wandb", "or log to CSV only: leave WandbLogger out of trainer.logger"),
    "tensorboard": ("trainer.logger", "tensorboard",
                    "or log to CSV only: leave TensorBoardLogger out of trainer.logger"),
}
_OPTION_ADVICE = re.compile(r"--(model|data|trainer)\.")  # a refusal that says which option to change


def _missing_optional_package(chain: list[BaseException], argv: list[str]) -> str | None:
    """`option: needs PACKAGE, not installed: pip install ...` when an optional package is missing."""
    for cause in chain:
        if not isinstance(cause, ImportError):
            continue
        names = [cause.name] if cause.name else re.findall(r"\w+", str(cause))
        package = next((name for name in names if name in OPTIONAL_PACKAGES), None)
        if package is not None:
            option, extra, instead = OPTIONAL_PACKAGES[package]
            return _located(option, f"needs {package}, which is not installed: pip install -e \".[{extra}]\" "
                                     f"({instead})", argv)
    return None


def _raised_by(error: BaseException, *package: str) -> bool:
    """Whether the innermost frame of `error`'s traceback is in the installed package `package`
    (e.g. `("transformers",)`, `("r1_lightning",)`)."""
    frames = traceback.extract_tb(error.__traceback__)
    parts = Path(frames[-1].filename).parts if frames else ()
    return any(parts[i:i + len(package)] == package for i in range(len(parts)))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _checkpoint_unreadable(error: BaseException) -> bool:
    """Whether `error` came out of Lightning reading a `--ckpt_path`: `torch.load` failed (not a torch
    file, or a truncated one), or the file loaded but lacks a Lightning checkpoint's keys (its
    migration step found no version)."""
    frames = traceback.extract_tb(error.__traceback__)
    for index, frame in enumerate(frames):
        if Path(frame.filename).parts[-2:] == ("torch", "serialization.py"):
            return index > 0 and "lightning" in Path(frames[index - 1].filename).parts
    parts = Path(frames[-1].filename).parts if frames else ()
    return isinstance(error, KeyError) and "lightning" in parts and "migration" in parts


def _raised_while_instantiating(error: BaseException) -> bool:
    """Whether jsonargparse raised `error` while building a class from the config (it wraps what the
    constructor raised)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and "jsonargparse" in Path(frames[-1].filename).parts


def describe_failure(error: BaseException, argv: list[str]) -> str | None:
    """One line for a run that stopped on bad input; None for anything else, which deserves its
    traceback. Bad input is: a corrupt checkpoint; an optional package the config needs and is not
    installed; a missing model or data file (`ModelNotFoundError` is a `FileNotFoundError`), a model
    folder without weights, a malformed data line; options a constructor rejected (its `ValueError`,
    which jsonargparse wraps); Lightning's `MisconfigurationException` (a GPU asked for on a machine
    without one); and our own refusals that say which option to change (`--model.init_args...`)."""
    chain = exception_chain(error)
    if any(_checkpoint_unreadable(cause) for cause in chain):
        ckpt = (flag_values(argv, "--ckpt_path") or ["given as ckpt_path"])[-1]
        return f"checkpoint {ckpt} is corrupt or not a Lightning checkpoint"
    if message := _missing_optional_package(chain, argv):
        return message
    root = chain[-1]
    if isinstance(root, (FileNotFoundError, DataFormatError)):
        return str(root)
    for cause in chain:
        if isinstance(cause, OSError) and _raised_by(cause, "transformers") and "no file named" in str(cause):
            return _located("model.init_args.model_name_or_path", f"{_one_line(cause)} (a model folder needs "
                            f"its weights: a folder written by save_pretrained, such as a run's "
                            f"checkpoints/last_hf)", argv)
        if type(cause).__name__ == "MisconfigurationException":
            if "gpu backend" in str(cause).lower():
                return _located("trainer.accelerator", f"{_one_line(cause)} This machine has no CUDA GPU: "
                                f"--trainer.accelerator cpu", argv)
            return _one_line(cause)
        if _raised_by(cause, "r1_lightning") and _OPTION_ADVICE.search(str(cause)):
            return _one_line(cause)
    if _raised_while_instantiating(error):
        refusal = next((c for c in chain if isinstance(c, (ValueError, OSError)) and not _raised_by(c, "jsonargparse")),
                       None)
        if refusal is not None:
            where = locate_value(str(refusal), argv)
            return f"{where}: {_one_line(refusal)}" if where else _one_line(refusal)
    return None
