"""Keys: how a chunk's key is built from its inputs, settings and code (``chunk_fingerprint``), the stamp a record
gets when committed, Prefect's cache key from the record. The upgrade of workspaces keyed before behaviour versions is
``runtime.upgrade``; which key of an upstream record a downstream key holds, and the legacy
scheme itself, are ``idtprior.keyscheme`` (below the config, which reads it)."""


from prefect.context import TaskRunContext

from idtprior.storage import ChunkRecord, Workspace, hash_json


def chunk_fingerprint(stage: str, chunk: str, inputs: dict[str, str], config_hash: str, code: str) -> str:
    """Fingerprint of a chunk's work: its videos' input fingerprints, the stage config and the stage's code
    behaviour version (``codeprint.code_key``)."""
    return hash_json({"stage": stage, "chunk": chunk, "inputs": inputs, "config": config_hash, "code": code})


def stamp(record: ChunkRecord, variant: str) -> ChunkRecord:
    """Set what a record says of how it was computed, out of its key: the behaviour version its key holds, the code
    fingerprint this process loaded for ``variant`` (a stage, or ``decode@jpeg``...) and the package versions."""
    from idtprior.runtime.codeprint import code_key, loaded_code
    from idtprior.runtime.environment import environment

    record.behaviour, record.code, record.env = code_key(variant), loaded_code(variant), environment()
    return record


def warm_stamps(stage: str) -> None:
    """Compute, in the calling thread, what ``stamp`` computes for every code variant of ``stage`` (once per process,
    tens of milliseconds each), so the chunk tasks' threads never parse sources. CPython 3.11's ``ast.parse`` is not
    safe in threads ("AST constructor recursion depth mismatch": a chunk's first commit, parsing its stage's code in
    a task thread while another thread parsed, failed the chunk in the SLURM drill), and ``codeprint``'s lock
    covers only its own parsing."""
    from idtprior.runtime.codeprint import STAGE_ROOTS, loaded_code, variant_of
    from idtprior.runtime.environment import environment

    try:
        base = variant_of(stage)
    except KeyError:  # a stage without code roots (no record of its own is stamped here)
        return
    for variant in STAGE_ROOTS:
        if variant.split("@")[0] == base:
            loaded_code(variant)
    environment()


def cache_key_from_record(context: TaskRunContext, parameters: dict) -> str:
    """Prefect cache key of a chunk task: its stage, chunk and fingerprint.

    The workspace record stays the single source of truth: the flow submits a chunk whose record is missing or stale
    with ``refresh_cache=True`` (see ``needs_refresh``), so a cached result never stands in for deleted outputs.
    """
    return f"idtprior-{parameters['stage']}-{parameters['chunk']}-{parameters['fingerprint']}"


def needs_refresh(ws: Workspace, stage: str, chunk: str, fingerprint: str) -> bool:
    rec = ws.read_record(stage, chunk)
    return rec is None or rec.fingerprint != fingerprint
