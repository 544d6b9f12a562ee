"""The behaviour pins (``behaviour_pins.json``): per stage and variant, its declared version and the fingerprint of the
code it runs. For the developer whose change moved a fingerprint (``tests/runtime/test_behaviour_pins.py`` fails and
names the stage), the two honest answers:

    python -m idtprior.runtime.pins repin STAGE --reason "why results do not change"   # nothing reruns
    python -m idtprior.runtime.pins bump STAGE                                         # results change

``bump`` wants the stage's ``BEHAVIOUR`` version raised in its task module first (workspaces then recompute that stage
and what follows); it re-pins the fingerprint at the new version and regenerates the stage's golden outputs
(``tests/golden``), which may change only with a bump. ``status`` lists what moved.
"""

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from idtprior.runtime import codeprint

REPO = codeprint.PACKAGE_DIR.parent
GOLDEN_DIR = REPO / "tests" / "golden" / "data"


def golden_file(stage: str) -> Path:
    """The golden outputs of a stage's core (``tests/golden/goldens.py`` writes them)."""
    return GOLDEN_DIR / f"{stage.replace('@', '_at_')}.npz"


def golden_digest(stage: str) -> str | None:
    """sha256 of the stage's golden file (first 16 hex), None where there is none (an installed package)."""
    path = golden_file(stage)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def moved() -> dict[str, str]:
    """Stage -> what differs between its code and its pin (nothing where they agree)."""
    out = {}
    pins = codeprint.pins()
    for stage in codeprint.STAGE_ROOTS:
        pin = pins.get(stage)
        declared = codeprint.behaviour_version(stage)
        if pin is None:
            out[stage] = f"no pin (declared v{declared})"
            continue
        notes = []
        if declared != pin["version"]:
            notes.append(f"declares v{declared}, pinned v{pin['version']}")
        fingerprint = codeprint.code_fingerprint(stage)
        if fingerprint != pin["fingerprint"]:
            notes.append(f"code fingerprint {fingerprint}, pinned {pin['fingerprint']}")
        golden = golden_digest(stage)
        if golden is not None and golden != pin.get("golden"):
            notes.append(f"golden outputs {golden}, pinned {pin.get('golden')}")
        if notes:
            out[stage] = "; ".join(notes)
    return out


def _write(pins: dict) -> None:
    codeprint.PINS_FILE.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    codeprint.pins.cache_clear()


def _today() -> str:
    return datetime.date.today().isoformat()


def repin(stage: str, reason: str) -> dict:
    """Pin the stage's current code at its current version: a change that keeps its results (nothing reruns). Refused
    when the declared version differs from the pin (that is a bump) or the golden outputs changed (only a bump may
    change them)."""
    if not reason.strip():
        raise SystemExit("repin: give --reason: why this change keeps the stage's results")
    pins = codeprint.pins()
    pin = pins[stage]
    declared = codeprint.behaviour_version(stage)
    if declared != pin["version"]:
        raise SystemExit(f"repin {stage}: it declares v{declared} and is pinned at v{pin['version']}: that is a bump "
                         f"(python -m idtprior.runtime.pins bump {stage})")
    if golden_digest(stage) not in (None, pin.get("golden")):
        raise SystemExit(f"repin {stage}: its golden outputs changed: results changed; bump its version")
    fingerprint = codeprint.code_fingerprint(stage)
    if fingerprint == pin["fingerprint"]:
        return pin
    pin["repins"].append({"version": declared, "from": pin["fingerprint"], "to": fingerprint, "reason": reason.strip(),
                          "date": _today()})
    pin["fingerprint"] = fingerprint
    _write(pins)
    return pin


def bump(stage: str, regenerate: bool = True) -> dict:
    """Pin the stage at its newly declared version: its code fingerprint and, where the tests are at hand, its golden
    outputs computed again. Refused unless the declared version is above the pinned one."""
    pins = codeprint.pins()
    pin = pins[stage]
    declared = codeprint.behaviour_version(stage)
    if declared <= pin["version"]:
        raise SystemExit(f"bump {stage}: raise BEHAVIOUR[{stage!r}] in its task module first (declared v{declared}, "
                         f"pinned v{pin['version']}); results that change need a new version")
    script = REPO / "tests" / "golden" / "goldens.py"
    if regenerate and script.is_file():
        subprocess.run([sys.executable, str(script), "write", stage], check=True, cwd=REPO)
    pin.update(version=declared, fingerprint=codeprint.code_fingerprint(stage), golden=golden_digest(stage))
    pin["repins"].append({"version": declared, "bumped": True, "reason": f"v{declared}", "date": _today()})
    _write(pins)
    return pin


def repinned_since(stage: str, code: str) -> list[str]:
    """The reasons of the re-pins made since code fingerprint ``code`` of ``stage`` was pinned (at its version), in
    order; [] when ``code`` is the current pin or unknown."""
    pin = codeprint.pins()[codeprint.variant_of(stage)]
    if not code or code == pin["fingerprint"]:
        return []
    chain = [r for r in pin["repins"] if not r.get("bumped") and r["version"] == pin["version"]]
    starts = [i for i, r in enumerate(chain) if r["from"] == code]
    return [r["reason"] for r in chain[starts[0]:]] if starts else []


def provenance(stage: str, records, now: dict[str, str] | None = None) -> list[str]:
    """What a stage's records say of how they were computed, where it matters today, as lines: records computed by
    code re-pinned since (with the re-pins' reasons: a bad re-pin is undone for exactly these, by bumping the version),
    records made before behaviour versions, and packages whose version differs from this environment's."""
    from idtprior.runtime.environment import differences, environment

    records = [r for r in records if r is not None]
    if not records:
        return []
    now = environment() if now is None else now
    lines = []
    legacy = sum(1 for r in records if not r.behaviour)
    if legacy:
        lines.append(f"{legacy} of {len(records)} records made before behaviour versions (the next run re-keys them "
                     f"in place)")
    reasons: dict[str, int] = {}
    variant = codeprint.variant_of(stage) if stage != "sketches" else "encode"
    for r in records:
        for reason in repinned_since(r.behaviour.partition("/")[0] or variant, r.code) if r.behaviour else []:
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        lines.append(f"{n} of {len(records)} records computed by code re-pinned since: {reason!r}")
    changed: dict[str, set] = {}
    for r in records:
        for package, (then, today) in differences(r.env, now).items():
            changed.setdefault(package, set()).add((then, today))
    for package, pairs in sorted(changed.items()):
        then = ", ".join(sorted({p[0] for p in pairs}))
        lines.append(f"computed with {package} {then}; this environment has {next(iter(pairs))[1]}")
    return lines


def invalidate_repinned(ws, stages: list[str]) -> dict[str, list[str]]:
    """Undo re-pins for a workspace: the records of ``stages`` computed by code re-pinned since are made to match no
    plan (``Workspace.invalidate``), each under its stage's lock, so the next run recomputes exactly those chunks (and
    what depends on them). Returns stage -> the chunks invalidated."""
    from idtprior.storage.lock import stage_lock

    out: dict[str, list[str]] = {}
    for stage in stages:
        records = ws.records(stage)
        stale = {c: r for c, r in records.items()
                 if r.behaviour and repinned_since(r.behaviour.partition("/")[0], r.code)}
        if not stale:
            continue
        with stage_lock(ws, "encode" if stage == "sketches" else stage):
            for chunk, rec in stale.items():
                why = f"computed by code {rec.code}, re-pinned since: " + "; ".join(
                    repinned_since(rec.behaviour.partition("/")[0], rec.code))
                if ws.invalidate(stage, chunk, rec.fingerprint, why):
                    out.setdefault(stage, []).append(chunk)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m idtprior.runtime.pins", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list the stages whose code, version or golden outputs moved from their pin")
    p = sub.add_parser("repin", help="the change keeps results: pin the code as it is now, with a reason")
    p.add_argument("stage", choices=sorted(codeprint.STAGE_ROOTS))
    p.add_argument("--reason", required=True)
    p = sub.add_parser("bump", help="results change: pin the newly declared version and regenerate its goldens")
    p.add_argument("stage", choices=sorted(codeprint.STAGE_ROOTS))
    args = parser.parse_args(argv)
    if args.command == "status":
        found = moved()
        for stage, note in found.items():
            print(f"{stage}: {note}")
        print("every stage agrees with its pin" if not found else f"{len(found)} stages moved")
        return 1 if found else 0
    pin = repin(args.stage, args.reason) if args.command == "repin" else bump(args.stage)
    print(f"{args.stage}: v{pin['version']} code {pin['fingerprint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
