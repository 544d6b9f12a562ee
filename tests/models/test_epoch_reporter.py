"""EpochReporter: each finished epoch's loss, lr and kNN monitor, live, equal to what the run's logs keep."""

import pickle

import numpy as np
import pytest

from idtprior.models import train
from idtprior.models.training import EpochReporter
from idtprior.stages.pretrain.task import _loss_history, epoch_rows
from idtprior_testutils import knn_reference


def test_reporter_hands_over_each_epoch_as_the_logs_keep_it_across_a_continued_run(squares, tiny_params, tmp_path):
    source, labels = squares
    rows: list[dict] = []
    # 1 epoch, then the same run set to 2 epochs: it continues (epoch 2 only)
    train(tiny_params(epochs=1), source, out_dir=tmp_path, labels_for_eval=labels, export_embeddings=False,
          loggers=[EpochReporter(rows.append)])
    assert [r["epoch"] for r in rows] == [1]
    result = train(tiny_params(epochs=2), source, out_dir=tmp_path, labels_for_eval=labels, export_embeddings=False,
                   loggers=[EpochReporter(rows.append)])
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows == epoch_rows(tmp_path)  # the live rows are the logs' rows
    assert [r["loss"] for r in rows] == _loss_history(tmp_path)  # and their loss is the record's loss_per_epoch
    # the module logs lr at the epoch's end, after the epoch's scheduler step: milestone (1,) halves it from there
    assert [r["lr"] for r in rows] == pytest.approx([0.015, 0.015])
    # the last epoch's kNN, against a brute-force float64 reference on the bank the run saved
    params = tiny_params(epochs=2)
    want = knn_reference(np.load(result.bank), np.asarray(labels), k=params.knn_k, tau=params.tau)
    assert rows[-1]["knn_acc"] == pytest.approx(want, abs=1e-6)


def test_a_copy_sent_to_other_processes_reports_nothing():
    rows: list[dict] = []
    copy = pickle.loads(pickle.dumps(EpochReporter(rows.append)))
    assert copy.report is None
    copy.log_metrics({"loss_epoch": 1.0, "epoch": 0})
    assert rows == []
