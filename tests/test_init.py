"""`rill init NAME`, end to end in real subprocesses: the project it creates validates and passes its own
tests at once, offline (the live case runs the real local model), and it never writes where it must not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rillflow.runtime.compiler import load_flow

ROOT = Path(__file__).resolve().parents[1]
SCAFFOLD = ROOT / "runtime" / "scaffold"
PROJECT_FILES = {".env.example", ".gitignore", "README.md", "corpus/overview.md", "corpus/plans.md", "corpus/troubleshooting.md",
                 "flows/demo.yaml", "flows/demo.tests.yaml"}


def rill(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RILL_", "OTEL_"))}  # the developer's settings stay out
    env["RILL_STATE_DIR"] = str(cwd / ".rill")
    return subprocess.run([sys.executable, "-m", "rillflow.runtime.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_init_creates_a_project_that_validates_and_passes_its_own_tests(tmp_path: Path) -> None:
    done = rill("init", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    project = tmp_path / "demo"
    assert files_under(project) == PROJECT_FILES
    assert all(f"  {name}" in done.stdout for name in PROJECT_FILES)
    assert "cd demo" in done.stdout and "rill test flows/" in done.stdout
    for path in project.rglob("*"):
        if path.is_file():
            assert "rill-init-name" not in path.read_text(encoding="utf-8"), f"placeholder left in {path}"
    assert "name: demo\n" in (project / "flows" / "demo.yaml").read_text(encoding="utf-8")
    assert ".rill/" in (project / ".gitignore").read_text(encoding="utf-8").splitlines()

    validated = rill("validate", "flows/", cwd=project)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "flows/demo.yaml: ok (6 nodes)" in validated.stderr

    # The real run: offline cases replay nothing (overrides stand in), the live case ingests corpus/ and runs Gemma 270M.
    tested = rill("test", "flows/", "--json", "report.json", cwd=project, timeout=280)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "6 passed in" in tested.stdout
    report = json.loads((project / "report.json").read_text(encoding="utf-8"))
    assert report["summary"] == {**report["summary"], "passed": 6, "failed": 0, "error": 0, "skipped": 0, "total": 6}
    modes = sorted(case["mode"] for case in report["cases"])
    assert modes == ["live", *["replay"] * 5]
    live = next(case for case in report["cases"] if case["mode"] == "live")
    assert live["outcome"]["status"] == "ok" and live["outcome"]["output_tokens"] > 0
    assert not (project / "flows" / "demo.cassettes").exists()  # no case needs a recording
    assert (project / ".rill" / "qdrant").is_dir()  # the collection lives in the project's state folder, not beside the flow


def test_dir_names_the_folder_and_name_names_the_flow(tmp_path: Path) -> None:
    done = rill("init", "support-bot", "--dir", "site", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {"flows/support-bot.yaml", "flows/support-bot.tests.yaml"} <= files_under(tmp_path / "site")
    assert load_flow(tmp_path / "site" / "flows" / "support-bot.yaml").name == "support-bot"
    assert "cd site" in done.stdout


def test_an_empty_folder_is_used_without_force(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    done = rill("init", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path / "demo") == PROJECT_FILES


@pytest.mark.parametrize(("name", "hint"), [
    ("Demo", "try 'demo'"),
    ("my.project", "try 'my-project'"),
    ("../escape", "try 'escape'"),
    ("a" * 65, f"try '{'a' * 64}'"),
    ("9lives", None),
    ("", None),
])
def test_an_invalid_name_is_refused_with_the_rule_and_nothing_is_written(tmp_path: Path, name: str, hint: str | None) -> None:
    done = rill("init", name, cwd=tmp_path)
    assert done.returncode == 2
    assert f"error: '{name}' is not a valid project name: use a lower-case letter, then lower-case letters, digits" in done.stderr
    if hint is None:
        assert "try '" not in done.stderr
    else:
        assert f"; {hint}\n" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_folder_is_refused_and_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("mine", encoding="utf-8")
    done = rill("init", "demo", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: demo is not empty: choose another folder with --dir, or pass --force" in done.stderr
    assert files_under(tmp_path / "demo") == {"notes.txt"}
    assert done.stdout == ""


def test_force_writes_into_a_non_empty_folder_replacing_only_the_scaffolds_files(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    (project / "flows").mkdir(parents=True)
    (project / "notes.txt").write_text("mine", encoding="utf-8")
    (project / "flows" / "demo.yaml").write_text("broken: [", encoding="utf-8")
    done = rill("init", "demo", "--force", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert files_under(project) == PROJECT_FILES | {"notes.txt"}
    assert (project / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert load_flow(project / "flows" / "demo.yaml").name == "demo"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "demo").write_text("a file", encoding="utf-8")
    done = rill("init", "demo", "--force", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: demo exists and is not a folder" in done.stderr
    assert (tmp_path / "demo").read_text(encoding="utf-8") == "a file"


def test_the_templates_are_a_valid_project_as_they_are() -> None:
    # The placeholder is a valid flow name, so `rill validate runtime/scaffold` passes and editors can check the templates.
    plan = load_flow(SCAFFOLD / "flows" / "rill-init-name.yaml")
    assert plan.name == "rill-init-name"
    assert set(plan.nodes) == {"screen", "search", "prompt", "answer", "checked", "no_answer"}


def _source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for folder in ("runtime", "nodes", "ui") for p in (ROOT / folder).glob("*.py"))


def test_env_example_documents_every_setting_rillflow_reads_and_no_other() -> None:
    documented = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (SCAFFOLD / "dot-env.example").read_text(encoding="utf-8"), re.M))
    source = _source_text()
    flow_refs = set(re.findall(r"\$\{env\.([A-Z0-9_]+)\}", (SCAFFOLD / "flows" / "rill-init-name.yaml").read_text(encoding="utf-8")))
    # Real: read by rillflow's code, by the flow template (its remote model), or by the OpenTelemetry SDK (OTEL_*).
    unknown = {name for name in documented if name not in source and name not in flow_refs and not name.startswith("OTEL_")}
    assert unknown == set()
    read = set(re.findall(r"\b(RILL_[A-Z0-9_]*[A-Z0-9])\b", source)) - {"RILL_SERVE_CONFIG"}  # internal: serve hands it to its workers
    assert read - documented == set(), "document the new setting in runtime/scaffold/dot-env.example"
    assert flow_refs <= documented
