"""Bad configs give one message naming the key and the value, exit status 2 and no traceback: on the command line
(``idtprior run``) and on the UI's path (``resolve_config`` with the run form's overrides). Nothing here starts a flow:
every one of them is refused before."""

from pathlib import Path

import pytest
import yaml

from idtprior.cli import main
from idtprior.config import PipelineConfig
from idtprior.config.base import ConfigError
from idtprior.flows.deployments import resolve_config
from idtprior.stages.ingest import plan_ingest
from idtprior.storage import Workspace

BAD = {  # YAML text -> what the one line must say (the key and the value)
    "ingest: {num_chunks: many}\n": ["key 'ingest.num_chunks'", "(value 'many')"],
    "stages: [ingest, decod]\n": ["key 'stages': unknown stage(s) ['decod']", "(value ['ingest', 'decod'])"],
    "stages: ingest\n": ["key 'stages'", "(value 'ingest')"],
    "decode: {short_side: -1}\n": ["key 'decode.short_side'", "greater than or equal to 16", "(value -1)"],
    "ingest: {num_chunks: -4}\n": ["key 'ingest.num_chunks'", "(value -4)"],
    "idt: {seed: -3}\n": ["key 'idt.seed'", "(value -3)"],
    "dask: {n_workers: 1.5}\n": ["key 'dask.n_workers'", "(value 1.5)"],
    "ingest: [1, 2]\n": ["key 'ingest'", "(value [1, 2])"],
    "ingest: {allowed_roots: [videos]}\n": ["key 'ingest.allowed_roots'", "['videos'] must be absolute paths"],
    "ingest: {allowed_roots: []}\n": ["key 'ingest.allowed_roots'", "(value [])"],
    "ingest: {sorce: x}\n": ["unknown key 'ingest.sorce' (value 'x')"],
    "[1, 2]\n": ["top level must be a mapping", "[1, 2]"],
    "ingest: {num_chunks: 4\n": [("not valid YAML: line 2, column 1: expected ',' or '}', but got '<stream end>' "
                                   "(while parsing a flow mapping at line 1, column 9)")],
}


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"idtprior {argv[0]}: error: ")
    return lines[0]


@pytest.mark.parametrize("text", list(BAD))
def test_a_bad_config_is_one_line_naming_key_and_value(tmp_path, capsys, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = _one_line(capsys, ["run", str(path), "--workspace", str(tmp_path / "ws")])
    assert str(path) in line
    for part in BAD[text]:
        assert part in line


def test_a_bad_stage_on_the_command_line_is_one_line_before_any_run(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("stages: [ingest]\n")
    line = _one_line(capsys, ["run", str(config), "--workspace", str(tmp_path / "ws"), "--stages", "ingest,decod"])
    assert "unknown stage(s) ['decod']" in line
    line = _one_line(capsys, ["run", str(config), "--workspace", str(tmp_path / "ws"), "--from", "decode"])
    assert "--from decode: not one of the selected stages ['ingest']" in line
    line = _one_line(capsys, ["demo", "--workspace", str(tmp_path / "ws"), "--data", str(tmp_path / "data"),
                              "--stages", "cluster,tune"])
    assert "unknown stage(s) ['tune']" in line
    assert not (tmp_path / "data").exists()  # refused before the demo videos are rendered


def test_a_workspace_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    config = tmp_path / "c.yaml"
    config.write_text(f"workspace: {taken}\nstages: [ingest]\n")
    line = _one_line(capsys, ["run", str(config)])
    assert f"key 'workspace': {taken} is a file, not a folder (value '{taken}')" in line
    config.write_text("stages: [ingest]\n")
    line = _one_line(capsys, ["run", str(config), "--workspace", str(taken / "ws")])
    assert f"{taken} is a file, not a folder (it would be inside {taken})" in line
    line = _one_line(capsys, ["status", str(taken)])  # a command that takes the workspace as it is
    assert str(taken) in line
    assert not list(tmp_path.glob("taken*/**"))  # nothing was created


def test_the_run_form_overrides_are_refused_naming_key_and_value(tmp_path):
    """The UI's path: the same checks, through the run form's dotted overrides (a flow turns the ConfigError into
    its one-message Failed state)."""
    config = tmp_path / "c.yaml"
    config.write_text("stages: [ingest]\n")
    taken = tmp_path / "taken"
    taken.write_text("x")
    cases = [("stages", ["ingest", "nope"], "key 'stages': unknown stage(s) ['nope']"),
             ("decode.short_side", -5, "key 'decode.short_side'"),
             ("ingest.num_chunks", "lots", "(value 'lots')"),
             ("workspace", str(taken), f"{taken} is a file, not a folder"),
             ("ingest.allowed_roots", ["rel"], "['rel'] must be absolute paths"),
             ("ingest.nope", 1, "unknown key 'ingest.nope' (value 1)")]
    for key, value, said in cases:
        with pytest.raises(ConfigError) as e:
            resolve_config(str(config), str(tmp_path / "ws"), overrides={key: value})
        assert said in str(e.value) and "\n" not in str(e.value)


def test_the_command_lines_set_is_refused_as_the_run_form_is(tmp_path, capsys):
    """``idtprior run CONFIG --set KEY=VALUE``: the run form's overrides on the command line, refused with the same one
    line (the key and the value), before anything is created; a ``--set`` that is not KEY=VALUE is named too."""
    config = tmp_path / "c.yaml"
    config.write_text("stages: [ingest]\n")
    ws = tmp_path / "ws"
    cases = [("stages=[ingest, nope]", "key 'stages': unknown stage(s) ['nope']"),
             ("decode.short_side=-5", "key 'decode.short_side'"),
             ("ingest.num_chunks=lots", "(value 'lots')"),
             ("ingest.nope=1", "unknown key 'ingest.nope' (value 1)"),
             ("pretrain_la.epoch=5", "unknown key 'pretrain_la.epoch' (value 5)"),
             ("decode.short_side.x=1", "key 'decode.short_side.x' (value 1): decode.short_side is a setting"),
             ("pretrain_la.epochs", "--set 'pretrain_la.epochs': expected KEY=VALUE"),
             ("=5", "--set '=5': expected KEY=VALUE")]
    for assignment, said in cases:
        line = _one_line(capsys, ["run", str(config), "--workspace", str(ws), "--set", assignment])
        assert said in line, (assignment, line)
        with pytest.raises(ConfigError) as e:  # the UI's path says the same where the form can express it
            if "=" in assignment.strip("="):
                key, value = assignment.split("=", 1)
                resolve_config(str(config), str(ws), overrides={key: yaml.safe_load(value)})
                raise AssertionError(f"the run form took {assignment}")
            raise ConfigError(said)
        assert said in str(e.value)
    line = _one_line(capsys, ["demo", "--workspace", str(ws), "--data", str(tmp_path / "data"),
                              "--set", "demo.frames=few"])
    assert "key 'demo.frames'" in line and "(value 'few')" in line
    assert not ws.exists() and not (tmp_path / "data").exists()  # nothing was created


def test_set_values_are_read_as_yaml_and_the_last_one_wins():
    from idtprior.presets import apply_overrides, parse_assignments

    got = parse_assignments(["pretrain_la.epochs=5", "ingest.num_chunks=16", "stages=[ingest, decode]",
                             "evaluate.device=cpu", "ingest.labels_file=null", "pretrain_la.epochs=7", "a.b="])
    assert got == {"pretrain_la.epochs": 7, "ingest.num_chunks": 16, "stages": ["ingest", "decode"],
                   "evaluate.device": "cpu", "ingest.labels_file": None, "a.b": ""}
    cfg = PipelineConfig(workspace="/tmp/ws")
    cli = apply_overrides(cfg, parse_assignments(["pretrain_la.epochs=5", "ingest.num_chunks=16"]))
    form = apply_overrides(cfg, {"pretrain_la.epochs": 5, "ingest.num_chunks": 16})  # the UI form's JSON
    assert cli == form and (cli.pretrain_la.epochs, cli.ingest.num_chunks) == (5, 16)
    assert cli.model_dump() != cfg.model_dump()


@pytest.mark.usefixtures("prefect_engine")
def test_a_run_with_set_uses_the_values_set(tmp_path):
    from idtprior.runtime.runs import CONFIG_FILE, remembered_config
    from idtprior_testutils import write_moving_square_videos

    write_moving_square_videos(tmp_path / "videos", 4, frames=8)
    config = tmp_path / "c.yaml"
    config.write_text(f"stages: [ingest]\ningest: {{source: {tmp_path / 'videos'}, num_chunks: 2}}\n")
    ws = tmp_path / "ws"
    assert main(["run", str(config), "--workspace", str(ws), "--set", "ingest.num_chunks=3",
                 "--set", "pretrain_la.epochs=5"]) == 0
    assert Workspace(str(ws)).num_chunks() == 3
    remembered = remembered_config(str(ws))  # the run's config, as the workspace's config.yaml keeps it
    assert (remembered.ingest.num_chunks, remembered.pretrain_la.epochs) == (3, 5), (ws / CONFIG_FILE).read_text()


def test_allowed_roots_refuse_a_source_or_labels_file_outside(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    for folder in (inside, outside):
        folder.mkdir()
        (folder / "list.txt").write_text("a.mp4\n")
        (folder / "labels.csv").write_text("video_id,label\na,x\n")
    (inside / "escape.txt").symlink_to(outside / "list.txt")
    ws = Workspace(str(tmp_path / "ws"))

    def plan(**ingest):
        cfg = PipelineConfig.model_validate({"workspace": ws.url, "ingest": {"allowed_roots": [str(inside)],
                                                                             **ingest}})
        return plan_ingest(cfg, ws, remember=False)

    (only,) = plan(source=str(inside / "list.txt"), labels_file=str(inside / "labels.csv")).values()
    assert {v: (x["path"], x["label"]) for v, x in only["videos"].items()} == {"a": (str(inside / "a.mp4"), "x")}
    for key, value in (("source", outside / "list.txt"), ("source", inside / "escape.txt"),
                       ("source", inside / ".." / "outside" / "list.txt")):
        with pytest.raises(ConfigError, match=rf"ingest.{key} '{value}' is outside ingest.allowed_roots"):
            plan(**{key: str(value)})
    with pytest.raises(ConfigError, match=r"ingest.labels_file '.*outside/labels.csv' is outside"):
        plan(source=str(inside / "list.txt"), labels_file=str(outside / "labels.csv"))
    assert Path(ws.url).is_dir()
    # a list inside whose lines point outside: each such video refused by the stage's own plan, the rest kept
    (inside / "mixed.txt").write_text(f"a.mp4\n../outside/b.mp4\n{outside / 'c.mp4'}\n")
    refused = {v: x.get("refused", "") for chunk in plan(source=str(inside / "mixed.txt")).values()
               for v, x in chunk["videos"].items()}
    assert refused["a"] == "" and all("outside ingest.allowed_roots" in refused[v] for v in refused if v != "a")
    assert len(refused) == 3


@pytest.mark.slow  # a fresh interpreter importing Prefect: ~4 s
def test_an_unreachable_prefect_server_is_one_line_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text(f"workspace: {tmp_path / 'ws'}\nstages: [ingest]\ningest: {{source: {tmp_path}}}\n")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_CLIENT_MAX_RETRIES": "0"}
    out = subprocess.run([sys.executable, "-m", "idtprior.cli", "run", str(config)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "the Prefect server at http://127.0.0.1:9/api (PREFECT_API_URL) cannot be reached" in out.stderr
