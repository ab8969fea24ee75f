"""Every code block of the README, CONTRIBUTING.md, CHANGELOG.md and the pages under ``docs/`` is
checked by running it.

The pages follow three conventions, written as HTML comments (invisible once rendered):

- ``<!-- docs-test: setup=demo -->`` anywhere in a page: its blocks run in a fresh folder that
  holds a small finished ``volcam demo`` in ``demo-output/`` (see :func:`demo_folder`). Without
  it a page runs in an empty folder.
- ``<!-- docs-test: run -->`` on the line before a shell block: the block is run with bash in
  the page's folder and must exit with status 0.
- ``<!-- docs-test: python-elsewhere=tests/x/test_y.py -->``: the page's Python blocks are run
  by that test (a guide with a test of its own); here it is checked that the test names the page.

What is checked, per kind of block:

- ``python``: the blocks of a page run in order, in one namespace, in the page's folder.
- ``bash``, ``console``, ``sh``, ``shell``: ``bash -n`` accepts them; every ``volcam`` command
  (also after ``python -m`` or ``torchrun ... -m``) is parsed by volcam's own argument parser;
  ``pip install`` names only extras that ``pyproject.toml`` defines; ``python scripts/x.py``
  names a script that exists and whose ``parse_args`` accepts the arguments; ``python -c``
  code compiles; ``pytest -m`` names declared markers. Blocks marked ``run`` are run (in a
  separate, ``slow`` test).
- ``yaml``: parses; a block whose keys are keys of a run configuration is loaded with
  :func:`volcam.run.load_config` (a partial one on top of a minimal configuration), its
  preprocessing built, and, when it defines ``network_def``, its network and CAM method built.
- ``json``: parses.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOP = ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")
PAGES = [*(ROOT / name for name in TOP), *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
SHELLS = ("bash", "console", "sh", "shell")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$", re.M)  # a comment on a line of its own
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marks: list[str] = field(default_factory=list)  # docs-test markers on the line before it

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (MyST directives such as ``{toctree}`` excluded)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence, info = len(m["indent"]), m["fence"], m["info"].strip()
        body = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        before = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marks = MARKER.findall(before)
        lang = info.split()[0] if info else ""
        if not lang.startswith("{"):
            found.append(Block(page, i + 1, lang, "\n".join(body) + "\n", marks))
        i = j + 1
    return found


def page_marks(page: Path) -> list[str]:
    return MARKER.findall(page.read_text())


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def setup_of(page: Path) -> str | None:
    names = [m.split("=", 1)[1] for m in page_marks(page) if m.startswith("setup=")]
    return names[0] if names else None


def python_elsewhere(page: Path) -> str | None:
    names = [m.split("=", 1)[1] for m in page_marks(page) if m.startswith("python-elsewhere=")]
    return names[0] if names else None


# --------------------------------------------------------------------------- the page's folder


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    """A folder like a clone after ``volcam demo``: the repository's ``configs/``, and
    ``demo-output/`` as the demo leaves it, but small (the synthetic dataset with six training
    and two held-out cases of 40 x 40 x 24 voxels, ``demo.yaml``, and ``model.pt``: the demo's
    network trained for 200 steps, a few seconds, to a held-out Dice above 0.8, so that the
    maps the pages make are those of a network that segments). Made once and copied for every
    page that asks for it; the pages run what they show on it."""
    import torch

    from volcam.demo import demo_config, held_out_dice, make_dataset, train
    from volcam.run import load_config

    root = tmp_path_factory.mktemp("docs-demo")
    shutil.copytree(ROOT / "configs", root / "configs")
    out = root / "demo-output"
    dataset = make_dataset(out / "data", n_train=6, n_test=2, shape=(40, 40, 24), seed=1)
    config = demo_config("demo-output")
    config["device"] = "cpu"
    (out / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with contextlib.chdir(root):
        run_config = load_config("demo-output/demo.yaml")
        network, _, _ = train(run_config, dataset, steps=200, seed=0)
        dice = held_out_dice(network, run_config, dataset)
    assert min(dice.values()) > 0.8, f"the docs' demo network did not learn: held-out Dice {dice}"
    torch.save(network.state_dict(), out / "model.pt")
    return root


@pytest.fixture
def page_folder(request, tmp_path, monkeypatch) -> Path:
    """A fresh working folder for the page given as the test's ``page`` parameter."""
    page = request.node.callspec.params["page"]
    setup = setup_of(page)
    folder = tmp_path / "page"
    if setup == "demo":
        shutil.copytree(request.getfixturevalue("demo_folder"), folder)
    elif setup is None:
        folder.mkdir()
    else:
        pytest.fail(f"{page_id(page)}: unknown docs-test setup {setup!r} (known: demo)")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return folder


# --------------------------------------------------------------------------- python


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_run(page, page_folder):
    code = [b for b in blocks(page) if b.lang == "python"]
    elsewhere = python_elsewhere(page)
    if elsewhere is not None:
        test = ROOT / elsewhere
        assert test.is_file(), f"{page_id(page)} says its Python blocks run in {elsewhere}, which does not exist"
        text = test.read_text()
        assert page.name in text and "```python" in text, f"{elsewhere} must read the Python blocks of {page.name}"
        return
    namespace: dict = {"__name__": "__docs__"}
    for block in code:
        source = "\n" * (block.line) + block.text  # tracebacks give the page's line numbers
        try:
            exec(compile(source, str(block.page), "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the Python block at {block.where()} fails: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- shell


def commands(block: Block) -> list[list[str]]:
    """The simple commands of a shell block, as argument lists (prompts, comments and
    continuation lines handled; ``&&``, ``||``, ``;`` and ``|`` split commands)."""
    lines = block.text.splitlines()
    if block.lang == "console" and any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    text = "\n".join(lines).replace("\\\n", " ")
    out: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&", "(", ")", "$(", "$"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    cleaned = []
    for argv in out:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # NAME=value prefixes
            argv = argv[1:]
        if argv:
            cleaned.append(argv)
    return cleaned


def shell_text(block: Block) -> str:
    lines = block.text.splitlines()
    if block.lang == "console" and any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return "\n".join(lines) + "\n"


def volcam_argv(argv: list[str]) -> list[str] | None:
    """The arguments of a ``volcam`` command line: ``volcam ...``, ``python -m volcam ...``,
    ``torchrun ... -m volcam ...``."""
    if Path(argv[0]).name == "volcam":
        return argv[1:]
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "volcam":
            return argv[i + 2 :]
    return None


def check_volcam(argv: list[str], where: str) -> None:
    from volcam.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit:
        assert exit.code == 0, f"{where}: `volcam {' '.join(argv)}` is refused by volcam's parser: {err.getvalue()}"


def extras() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def markers() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return {m.split(":")[0].strip() for m in tomllib.load(f)["tool"]["pytest"]["ini_options"]["markers"]}


def check_pip(argv: list[str], where: str) -> None:
    if "install" not in argv:
        return
    for arg in argv[argv.index("install") + 1 :]:
        m = re.fullmatch(r"(\.|volcam)\[([\w,-]+)\]", arg)
        if m:
            unknown = set(m[2].split(",")) - extras()
            assert not unknown, f"{where}: `pip install {arg}` names extras pyproject.toml does not define: {unknown}"


def check_script(argv: list[str], where: str) -> None:
    script = ROOT / argv[1]
    assert script.is_file(), f"{where}: {argv[1]} does not exist"
    name = f"_docs_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    parse = getattr(module, "parse_args", None)
    if parse is None:
        assert len(argv) == 2, f"{where}: {argv[1]} takes no arguments (it has no parse_args)"
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv[2:])
    except SystemExit as exit:
        assert exit.code == 0, f"{where}: `{' '.join(argv)}` is refused by the script: {err.getvalue()}"


def check_pytest(argv: list[str], where: str) -> None:
    args = argv[argv.index("pytest") + 1 :]
    for i, arg in enumerate(args[:-1]):
        if arg == "-m":
            words = set(re.findall(r"\w+", args[i + 1])) - {"not", "and", "or"}
            unknown = words - markers()
            assert not unknown, f"{where}: `pytest -m {args[i + 1]}` names undeclared markers {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_shell_blocks_are_valid(page):
    for block in (b for b in blocks(page) if b.lang in SHELLS):
        where = block.where()
        syntax = subprocess.run(["bash", "-n"], input=shell_text(block), text=True, capture_output=True)
        assert syntax.returncode == 0, f"{where}: bash -n: {syntax.stderr}"
        for argv in commands(block):
            vargv = volcam_argv(argv)
            if vargv is not None:
                check_volcam(vargv, where)
            elif argv[0] == "pip" or argv[:3] == ["python", "-m", "pip"]:
                check_pip(argv, where)
            elif argv[0] in ("python", "python3") and len(argv) > 1 and argv[1].startswith("scripts/"):
                check_script(argv, where)
            elif argv[0] in ("python", "python3") and len(argv) > 2 and argv[1] == "-c":
                compile(argv[2], where, "exec")  # at least valid Python
            elif "pytest" in argv[:3]:
                check_pytest(argv, where)


def test_every_command_has_help():
    from volcam.cli import COMMANDS, main

    for name in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
            main([name, "--help"])
        assert exit.value.code == 0 and out.getvalue().startswith(f"usage: volcam {name}")


RUN_PAGES = [p for p in PAGES if any("run" in b.marks for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=page_id)
def test_marked_shell_blocks_run(page, page_folder):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    for block in (b for b in blocks(page) if "run" in b.marks):
        assert block.lang in SHELLS, f"{block.where()}: only shell blocks can be marked run"
        done = subprocess.run(
            ["bash", "-e", "-c", shell_text(block)],
            cwd=page_folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (
            f"{block.where()} exits with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        assert "Traceback" not in done.stderr, f"{block.where()}:\n{done.stderr[-3000:]}"


# --------------------------------------------------------------------------- yaml and json

#: the smallest run configuration: partial blocks of the docs are loaded on top of it
BASE_CONFIG = {
    "network_def": {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
    },
    "checkpoint": "none",
    "cam": {"target_layers": "model.1"},
    "targets": {"classes": [1]},
    "data": {"folder": "scans"},
}


def run_config(content: dict) -> dict:
    """A block's keys laid over :data:`BASE_CONFIG` (sections merged, ``data`` replaced)."""
    from volcam.run.schema import SECTIONS

    merged = copy.deepcopy(BASE_CONFIG)
    if "nnunet" in content:  # an nnU-Net results folder replaces the network and its checkpoint
        del merged["network_def"], merged["checkpoint"]
    for key, value in content.items():
        if key in SECTIONS and key != "data" and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def is_run_config(content) -> bool:
    from volcam.run.schema import TOP_LEVEL

    return isinstance(content, dict) and bool(content) and all(k in TOP_LEVEL for k in content)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_yaml_and_json_blocks_load(page, page_folder):
    from volcam.run import load_config

    for block in blocks(page):
        where = block.where()
        if block.lang == "json":
            json.loads(block.text)
        if block.lang not in ("yaml", "yml"):
            continue
        content = yaml.safe_load(block.text)
        if not is_run_config(content):
            continue
        try:
            config = load_config(run_config(content))
            if "preprocessing" in content:
                config.build_preprocessing()
            if "network_def" in content:
                config.build_cam(config.build_network(load_weights=False))
        except Exception as err:
            raise AssertionError(f"the configuration at {where} does not load: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- what the docs must cover


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# --- the README's test command, verbatim ---") + 1]
    readme = [b for b in blocks(ROOT / "README.md") if b.lang in SHELLS]
    assert any(command in b.text.splitlines() for b in readme), f"the README must show CI's test command: {command}"


def test_every_method_module_has_a_page():
    import volcam

    # private modules are the engine's parts; the registry is documented on the index page itself
    stems = (p.stem for p in (ROOT / "volcam" / "methods").glob("*.py"))
    modules = sorted(s for s in stems if not s.startswith("_") and s != "registry")
    assert ":members: get_method, register_method" in (DOCS / "methods" / "index.md").read_text()
    index = (DOCS / "methods" / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}(.*?)```", index, re.S)[1].split()
    for stem in modules:
        page = DOCS / "methods" / f"{stem}.md"
        assert page.is_file(), f"volcam/methods/{stem}.py has no page docs/methods/{stem}.md"
        assert f".. automodule:: volcam.methods.{stem}" in page.read_text()
        assert stem in toctree, f"docs/methods/{stem}.md is not in the toctree of docs/methods/index.md"
    # the table of methods names every registered method with its class
    rows = dict(re.findall(r"^\| `([^`]+)` \| \{class\}`~volcam\.methods\.\w+\.(\w+)`", index, re.M))
    registry = {name: cls.__name__ for name, cls in {**volcam.METHODS, **volcam.ATTENTION_METHODS}.items()}
    assert rows == registry


def test_config_reference_names_every_key():
    from volcam.run.schema import SECTIONS, TOP_LEVEL

    page = DOCS / "guide" / "config.md"
    named: set[str] = set()
    for block in blocks(page):
        if block.lang == "yaml":
            content = yaml.safe_load(block.text) or {}
            for key, value in content.items():
                named.add(key)
                if key in SECTIONS and isinstance(value, dict):
                    named.update(f"{key}.{k}" for k in value)
    wanted = set(TOP_LEVEL) | {f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys}
    assert not wanted - named, f"{page_id(page)} does not show these keys: {sorted(wanted - named)}"


def test_indented_blocks_of_docstrings_become_literal_blocks():
    """The docs build shows the house style's indented formulas and examples as code (docs/conf.py)."""
    spec = importlib.util.spec_from_file_location("_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    lines = [
        "The weight of a channel:",
        "",
        "    w[b, k] = mean over S of dy/dA[b, k, ...]",
        "",
        "        indented further inside the block",
        "",
        "Example",
        "",
        "    cam = volcam.GradCAM(model, layer)",
        "",
        "- an item",
        "",
        "  - a nested item",
        "",
        "- another item",
        "",
        "  its second paragraph",
        "",
        "Already a literal block::",
        "",
        "    x = 1",
    ]
    out = conf.literal_blocks(lines)
    assert out[0] == "The weight of a channel::" and out[6] == "Example ::"
    changed = {i for i, (a, b) in enumerate(zip(lines, out)) if a != b}
    assert changed == {0, 6}  # code lines, lists and existing literal blocks are left alone


def test_readme_links_lead_to_files():
    """The README is read on its own (outside the Sphinx build, which checks the pages' links)."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to the documentation"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
