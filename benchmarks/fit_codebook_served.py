"""fit_codebook on the demo, three ways in one run: the fit alone in this process (the baseline), the stage run by
the CLI (``idtprior run ... --stages fit_codebook``: Prefect, the stage's lock and records), and the stage run from
its deployment by ``idtprior serve`` against a real ``prefect server`` (as the UI runs it). Prints each time as a ratio
to the baseline and the longest silence between the served run's progress lines (issue 36: 2 min 49 s served against
4.2 s in the README's demo, with no line in between).

    python benchmarks/fit_codebook_served.py [--videos-per-class N] [--keep DIR]

The demo is rendered and run up to its IDT sample first (a few minutes on 2 cores), against the benchmark's own
server. Each way fits on its own copy of that workspace, from the same sample: the same codebook comes out of all
three (checked).
"""

import argparse
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "server"))
from server_process import BIN, Proc, ServerProcess, free_port  # noqa: E402

from idtprior.config import load_config  # noqa: E402
from idtprior.encoding.codebook import fit_codebook_with_report  # noqa: E402
from idtprior.stages.fit_codebook import codebook_params, read_codebook  # noqa: E402
from idtprior.stages.idt import read_sample  # noqa: E402
from idtprior.storage import Workspace  # noqa: E402


def cli(server: ServerProcess, args: list[str], log: Path, timeout_s: float = 1800) -> float:
    """``idtprior ARGS`` against the server; its wall seconds."""
    t0 = time.monotonic()
    proc = Proc([str(BIN / "idtprior"), *args], log, server.env())
    try:
        proc.popen.wait(timeout_s)
    finally:
        proc.stop()
    if proc.popen.returncode != 0:
        raise SystemExit(f"idtprior {' '.join(args)} failed ({proc.popen.returncode}):\n{log.read_text()[-3000:]}")
    return time.monotonic() - t0


def run_seconds(run: dict) -> float:
    start, end = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_time", "end_time"))
    return (end - start).total_seconds()


def progress_gaps(logs: str) -> list[float]:
    """Seconds between the fit's progress lines (``... [N s]``, the stage's own clock), start to end."""
    marks = [float(m) for m in re.findall(r"fit_codebook: .*\[(\d+) s\]", logs)]
    return list(np.diff([0.0, *marks])) if marks else []


def statistics_product(report, k: int, n: int = 4096, repeats: int = 20) -> None:
    """The E-step's float32 statistics product on one chunk of each block's size, as it was before issue 36 (one
    product against the (n, 2D) concatenation) and as it is (two (K, n) @ (n, D) products), with the fit's iteration
    count, at the demo's block size and K, at a concat codebook's D (200), and at K = 256."""
    rng = np.random.default_rng(0)
    sizes = sorted({(report[0].pca_dim, k), (200, k), (report[0].pca_dim, 256)})  # the demo's; a concat PCA's; K 256
    for d, k in sizes:
        x = rng.standard_normal((n, d)).astype(np.float32)
        g = rng.random((n, k)).astype(np.float32)
        g /= g.sum(1, keepdims=True)
        times = {}

        def before(g=g, x=x):
            return g.T @ np.concatenate([x, x * x], 1)

        def now(g=g, x=x):
            return np.concatenate([g.T @ x, g.T @ (x * x)], 1)

        for name, product in (("one product, concatenated (before)", before), ("two products (now)", now)):
            product()
            t0 = time.perf_counter()
            for _ in range(repeats):
                product()
            times[name] = (time.perf_counter() - t0) / repeats
        was, is_ = times.values()
        print(f"  the float32 E-step statistics of a {n} x {d} chunk, K={k}: {was * 1e3:.2f} ms before, "
              f"{is_ * 1e3:.2f} ms now ({was / is_:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos-per-class", type=int, help="demo videos per class (default: the demo preset's)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="fit-codebook-served-"))
    root.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(root / "prefect-home", free_port())
    server.home.mkdir(exist_ok=True)
    server.start()
    serve = None
    try:
        ws = root / "ws"
        more = ["--set", f"demo.videos_per_class={args.videos_per_class}"] if args.videos_per_class else []
        prep = cli(server, ["demo", "--workspace", str(ws), "--data", str(root / "demo-data"), "--stages",
                            "ingest,decode,idt", *more], root / "prep.log")
        print(f"the demo up to its IDT sample: {prep:.0f} s")
        config = ws / "config.yaml"
        cfg = load_config(config)
        copies = {way: root / f"ws-{way}" for way in ("cli", "served")}
        for dest in copies.values():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(ws, dest)

        # the baseline: the fit alone, in this process, on the same sample
        sample = read_sample(Workspace(str(ws)))
        t0 = time.perf_counter()
        book, report = fit_codebook_with_report(sample[:, 10:], codebook_params(cfg.codebook))
        direct = time.perf_counter() - t0
        print(f"sample: {len(sample)} rows; the fit alone, in this process: {direct:.2f} s (1.00x)")
        iters = sum(len(r.log_likelihood) for r in report)
        print(f"  {len(report)} blocks, {iters} EM iterations in all ({direct / max(iters, 1) * 1000:.0f} ms each "
              f"with PCA and the initialisation)")
        statistics_product(report, cfg.codebook.gmm_components)

        # the stage from the CLI: Prefect, the lock, the records
        cli_s = cli(server, ["run", str(config), "--workspace", str(copies["cli"]), "--stages", "fit_codebook"],
                    root / "cli.log")
        cli_run = server.post("/flow_runs/filter", {"flow_runs": {"name": {"any_": ["ws-cli: fit_codebook"]}}})
        cli_stage = run_seconds(cli_run[0]) if cli_run else float("nan")
        print(f"the stage by `idtprior run`: {cli_stage:.2f} s as a flow run ({cli_stage / direct:.2f}x), "
              f"{cli_s:.1f} s for the command")

        # the stage from its deployment, by `idtprior serve`, as the UI runs it
        serve = Proc([str(BIN / "idtprior"), "serve"], root / "serve.log", server.env())
        deadline = time.monotonic() + 120
        while True:
            try:
                deployment = server.deployment("idtprior-fit-codebook", "cpu")
                break
            except AssertionError:
                if time.monotonic() > deadline or not serve.alive():
                    raise SystemExit(f"serve registered no deployment:\n{serve.log.read_text()[-3000:]}") from None
                time.sleep(1)
        run = server.run_deployment_like_the_ui(deployment, {"workspace": str(copies["served"])})
        run = server.wait_flow_run(run["id"], 1800, [serve])
        if run["state_type"] != "COMPLETED":
            raise SystemExit(f"served run {run['state_type']}: {run['state']['message']}\n{server.logs(run['id'])}")
        served = run_seconds(run)
        gaps = progress_gaps(server.logs(run["id"]))
        print(f"the stage from its deployment, served: {served:.2f} s as a flow run ({served / direct:.2f}x); "
              f"{len(gaps)} progress lines, the longest silence {max(gaps, default=float('nan')):.0f} s")

        for way, dest in copies.items():
            got = read_codebook(Workspace(str(dest)))
            same = all(np.array_equal(a.gmm.means, b.gmm.means) for a, b in zip(got.blocks, book.blocks))
            print(f"{way}: the same codebook as the fit alone: {same}")
    finally:
        if serve is not None:
            serve.stop()
        server.stop()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
