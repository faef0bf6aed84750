"""One list of stages: dvc.yaml, the CLI and the dvc.yaml code-deps check all follow facepipe.stages.STAGES."""

import importlib

import typer
import yaml

from facepipe.cli import app
from facepipe.stages import STAGE_MODULES, STAGES
from tests.conftest import ROOT


def test_dvc_yaml_has_exactly_the_stages_in_pipeline_order():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert tuple(doc["stages"]) == STAGES


def test_each_stage_is_a_cli_command_listed_first_in_pipeline_order_and_a_module_with_run():
    commands = list(typer.main.get_command(app).commands)
    assert tuple(commands[: len(STAGES)]) == STAGES
    for module in STAGE_MODULES.values():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "run", None) or getattr(mod, "build_example", None)), module


def test_the_dvc_deps_check_reads_the_same_list():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import dvc_deps

    assert dvc_deps.STAGE_MODULES is STAGE_MODULES
