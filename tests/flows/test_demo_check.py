"""The demo's check (issues 5 and 13), end to end: ``idtprior demo`` on the bundled config (every stage through
``evaluate``, then the report), then the kNN figures of its training records and the paper's orderings on its
evaluation records. About 15 minutes on 2 CPU cores, so marked slow (``make test-all``)."""

import pytest

from idtprior.evaluation.report import paired_tests
from idtprior.stages.evaluate.task import read_evaluation
from idtprior.storage import Workspace

APPEARANCE = ("background", "actor_shape", "actor_colour")
STEPS = (("scratch", "pretrain_ir"), ("pretrain_ir", "pretrain_la_bank"), ("pretrain_la_bank", "pretrain_la"))


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the suite's 600 s cap is for unit tests; the whole demo takes ~15 min on 2 cores
def test_demo_la_with_idt_clusters_beats_ir_and_random_init_on_motion(tmp_path, prefect_engine, capsys):
    from idtprior.cli import main

    assert main(["demo", "--workspace", str(tmp_path / "ws"), "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    ws = Workspace(str(tmp_path / "ws"))
    model = {s: ws.read_record(s, "all").videos["model"] for s in ("pretrain_ir", "pretrain_la", "tune_joint")}
    random_init, ir = model["pretrain_ir"]["knn_init"], model["pretrain_ir"]["knn"]
    la = model["pretrain_la"]["knn"]
    # 72 test videos, 6 motions (chance 0.17), one centre clip per video; measured (README): random 0.15, IR 0.29,
    # LA 0.43
    assert la["label"] >= ir["label"] + 0.1
    assert la["label"] >= random_init["label"] + 0.2
    # LA's gain is motion, not appearance: on no appearance factor is it as far above the random network
    for factor in APPEARANCE:
        assert la[factor] - random_init[factor] < la["label"] - random_init["label"]

    # the paper's tables: the 16-frame finetune and the 5-shot probe of every network, and the report
    results = read_evaluation(ws)
    # joint tuning keeps LA's gain over IR. Read on the evaluation's kNN (5 clips a video: measured joint 0.50, IR
    # 0.29): the training stage's one-clip figure (joint 0.39) sits within 0.01 of a 0.1 margin over IR's 0.29 since
    # the training runs on both cores (it ran on one before, with joint at 0.50 there too)
    knn = {r["network"]: r["knn"]["label"] for r in results if r["protocol"] == "knn" and r["clip_length"] == 16}
    assert knn["tune_joint"] >= knn["pretrain_ir"] + 0.1
    assert knn["pretrain_la"] >= knn["pretrain_ir"] + 0.1
    assert {(r["network"], r["protocol"]) for r in results} >= {
        (n, p) for n in ("scratch", "pretrain_ir", "pretrain_la_bank", "pretrain_la", "tune_joint", "supervised")
        for p in ("finetune", "probe")}
    report = tmp_path / "ws" / "artifacts" / "report"
    assert f"report: {report / 'report.md'}" in out and "report " in out.split("wall time per stage:")[1]
    text = (report / "report.md").read_text()
    assert "Table 1" in text and "Table 2" in text
    assert (report / "clusters_idt.png").stat().st_size > 0 and (report / "clusters_bank.png").stat().st_size > 0

    # The paper's order Scratch < Video IR < Video LA < Video LA + IDT prior on the motion labels, step by step, with
    # paired exact McNemar tests on the same 72 test videos; every step's figures are printed. Measured (README:
    # Evaluation): LA + IDT above Video LA beyond chance for finetuning (28 vs 3, p < 0.0001) and the 5-shot probe
    # (20 vs 7, p = 0.02); the other steps are not separable (finetuning: scratch 17 vs IR 7, p = 0.06; IR 21 vs
    # Video LA 10, p = 0.07; probe: p = 0.84 and 0.66). The check asserts the separable step and that no step is
    # reversed beyond chance.
    tests = {(t["what"], t["a"], t["b"]): t for t in paired_tests(results)
             if t["label_column"] == "label" and t["clip_length"] == 16}
    with capsys.disabled():
        for (what, a, b), t in sorted(tests.items()):
            print(f"{what}: {a} right alone {t['only_a']}, {b} right alone {t['only_b']}, p = {t['p_value']:.3g}")
    for what in ("finetune", "probe 5-shot"):
        for a, b in STEPS:
            t = tests[(what, a, b)]
            assert t["videos"] == 72
            assert not (t["only_a"] > t["only_b"] and t["p_value"] < 0.05), (what, a, b, t)
        t = tests[(what, "pretrain_la_bank", "pretrain_la")]
        assert t["only_b"] > t["only_a"] and t["p_value"] < 0.05, (what, t)
