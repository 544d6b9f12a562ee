"""Code fingerprints: an edit of a function changes the code fingerprint of exactly the stages that use it; plumbing
(config, storage, the shared task helpers) is in none; a comment, docstring or formatting edit and a definition moved
between modules change none. Edits are simulated by serving an edited source text for one module through
``codeprint.module_source``; the package files are not touched."""

import ast
import dataclasses

import pytest

from idtprior.runtime import codeprint
from idtprior.runtime.codeprint import STAGE_ROOTS, code_fingerprint, stage_sources

STAGES = sorted(STAGE_ROOTS)
# the GMM's users: fitting the codebook, and the Fisher encoding's statistics (after either IDT backend)
ALGO = {"fit_codebook", "encode", "encode@torch"}
IDT = {"idt", "encode", "idt@torch", "encode@torch"}  # the CPU extractor's core: the torch backend builds on it


def edit_function(source: str, function: str) -> str:
    """``source`` with one more statement at the end of the body of the (first) function named ``function``."""
    node = next((n for n in ast.walk(ast.parse(source))
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function), None)
    if node is None:
        pytest.fail(f"no function {function!r} in the module any more: update this test's table")
    lines = source.splitlines()
    indent = " " * node.body[0].col_offset
    lines.insert(node.end_lineno, f"{indent}_edited = None  # a simulated edit")
    edited = "\n".join(lines) + "\n"
    ast.parse(edited)
    return edited


def changed_stages(monkeypatch, module: str, function: str) -> set[str]:
    """The stages whose code fingerprint changes when ``module.function`` is edited."""
    before = {s: code_fingerprint(s) for s in STAGES}
    real = codeprint.module_source
    edited = edit_function(real(module), function)
    monkeypatch.setattr(codeprint, "module_source", lambda name: edited if name == module else real(name))
    after = {s: code_fingerprint(s) for s in STAGES}
    monkeypatch.setattr(codeprint, "module_source", real)
    return {s for s in STAGES if before[s] != after[s]}


@pytest.mark.parametrize("module, function, stages", [
    # the functions issue 11 names
    ("idtprior.video.idt.extract", "iter_idt", IDT),
    ("idtprior.encoding.fisher", "_gradients", {"encode", "encode@torch"}),
    ("idtprior.encoding.fisher", "normalize_fisher", {"encode", "encode@torch"}),
    ("idtprior.encoding.codebook", "project", ALGO),
    ("idtprior.encoding.gmm", "fit_gmm", ALGO),
    # K-means: the cluster stage, the GMM's initialisation (gmm.py imports it), LA's clustering of the memory bank,
    # the evaluation's K-means of a network's embeddings (NMI / purity)
    ("idtprior.encoding.kmeans", "kmeans_plusplus", {*ALGO, "cluster", "pretrain", "evaluate"}),
    # the IDT core's other modules
    ("idtprior.video.idt.camera", "estimate_homography", IDT),
    ("idtprior.video.idt.flow", "median_flow", IDT),
    # the frames' JPEG codec is the JPEG decode's alone: zstd workspaces keep their decode and training keys
    ("idtprior.video.framecodec", "encode_frames", {"decode@jpeg"}),
    ("idtprior.stages.decode", "decode_one", {"decode"}),
    ("idtprior.video.io", "iter_frames", {"ingest", "decode", "decode@jpeg", "detect", *IDT}),
    # the torch backend is its own stages' alone: an edit reruns no workspace that extracts on the CPU
    ("idtprior.video.idt.torch_extract", "extract_idt_batch", {"idt@torch", "encode@torch"}),
    ("idtprior.video.idt.torch_flow", "poly_expansion", {"idt@torch", "encode@torch"}),
    ("idtprior.stages.idt", "batch_idt", {"idt@torch", "encode@torch"}),
    ("idtprior.stages.idt", "sample_batch", {"idt@torch"}),
    ("idtprior.stages.encode", "encode_batch", {"encode@torch"}),
    # a stage module's definitions are the code of the stages that run them, and nothing else's
    ("idtprior.stages.cluster", "cluster_task", {"cluster"}),
    ("idtprior.stages.encode", "encode_one", {"encode"}),
    ("idtprior.stages.fit_codebook", "codebook_params", {"fit_codebook"}),
    ("idtprior.stages.fit_codebook", "read_codebook", {"encode", "encode@torch"}),
    # a stage's plan, flow and pictures live beside its task and are not part of its code
    ("idtprior.stages.encode", "plan_encode", set()),
    ("idtprior.stages.encode", "encode_flow", set()),
    ("idtprior.stages.idt", "idt_markdown", set()),
    ("idtprior.stages.idt", "read_sample", {"fit_codebook"}),
    ("idtprior.stages.idt", "sample_one", {"idt"}),
    ("idtprior.stages.idt", "video_rows", {"idt", "encode"}),
    ("idtprior.stages.idt", "idt_params", IDT),
    ("idtprior.stages.detect", "chunk_boxes", IDT),
    # evaluate loads encoders through models.checkpoints, which needs the network and not the training objectives
    ("idtprior.models.checkpoints", "load_encoder", {"pretrain", "evaluate"}),
    ("idtprior.models.losses", "la_loss", {"pretrain"}),
    # the evaluation core is evaluate's alone
    ("idtprior.evaluation.finetune", "finetune", {"evaluate"}),
    ("idtprior.evaluation.probe", "few_shot_indices", {"evaluate"}),
    # the frame store's writer cuts videos off and stores their frames: decode's code (and the readers training's)
    ("idtprior.storage.frames", "write_frames", {"decode", "decode@jpeg"}),
    # plumbing: settings are covered by the config hashes; storage and the chunk loop do not change results
    ("idtprior.config.base", "config_hash", set()),
    # how a core's parameters are built from its section: plumbing too (every built field is in the idt keys)
    ("idtprior.config.base", "core_params", set()),
    ("idtprior.config", "load_config", set()),
    ("idtprior.storage.workspace", "commit", set()),
    ("idtprior.storage.fingerprint", "hash_json", set()),
    ("idtprior.runtime.worker", "run_chunk", set()),
    ("idtprior.runtime.keys", "stamp", set()),
    ("idtprior.stages.common", "run_stage", set()),
])
def test_an_edit_changes_the_code_of_exactly_the_stages_that_use_it(monkeypatch, module, function, stages):
    assert changed_stages(monkeypatch, module, function) == stages


def test_the_stage_code_sets():
    """Which modules each stage hashes whole (at least the ones it uses today, and none of another core's), and that a
    stage's definitions leave the other stages' out."""
    cores = {s: {k for k in stage_sources(s) if ":" not in k} for s in STAGES}
    idt_core = {f"idtprior.video.idt.{m}"
                for m in ("extract", "camera", "flow", "descriptors", "params", "textformat", "kernels", "_kernels")}
    book = {f"idtprior.encoding.{m}" for m in ("codebook", "gmm", "kmeans", "sketch", "backend")}
    models = {f"idtprior.models.{m}" for m in ("clustering", "data", "lightning", "losses", "memory_bank", "resnet3d")}

    def within(stage, *prefixes):
        return all(m.startswith(prefixes) for m in cores[stage])

    assert cores["ingest"] == cores["decode"] == {"idtprior.video.io"}
    assert cores["decode@jpeg"] == {"idtprior.video.io", "idtprior.video.framecodec"}
    assert cores["detect"] >= {"idtprior.video.io", "idtprior.video.detect", "idtprior.video.idt.textformat"}
    assert cores["idt"] >= {"idtprior.video.io", *idt_core} and within("idt", "idtprior.video.")
    assert cores["fit_codebook"] >= book and within("fit_codebook", "idtprior.encoding.")
    assert "idtprior.encoding.fisher" not in cores["fit_codebook"]
    assert cores["encode"] == cores["idt"] | cores["fit_codebook"] | {"idtprior.encoding.fisher"}
    # the torch backend's stages: the CPU extractor's core (which it builds on; not the text format: imported rows go
    # through the CPU tasks) and its own modules; the CPU stages hash none of them
    torch_core = {f"idtprior.video.idt.torch_{m}"
                  for m in ("extract", "flow", "descriptors", "sampling", "tracks", "camera")}
    assert cores["idt@torch"] >= {"idtprior.video.io", *idt_core, *torch_core} - {"idtprior.video.idt.textformat"}
    assert within("idt@torch", "idtprior.video.")
    assert cores["encode@torch"] == cores["idt@torch"] | cores["fit_codebook"] | {"idtprior.encoding.fisher"}
    assert not any(".torch_" in m for m in cores["idt"] | cores["encode"])
    assert cores["cluster"] >= {"idtprior.encoding.kmeans", "idtprior.encoding.backend"}
    assert not cores["cluster"] & {"idtprior.encoding.gmm", "idtprior.encoding.codebook", "idtprior.encoding.fisher"}
    assert cores["pretrain"] >= models | {"idtprior.encoding.kmeans"}
    assert within("pretrain", "idtprior.models.", "idtprior.encoding.")
    tasks = {s: {k for k in stage_sources(s) if k.startswith("idtprior.stages.") and ":" in k
                 and not k.startswith("idtprior.stages.common:")} for s in STAGES}
    assert "idtprior.stages.cluster:cluster_task" in tasks["cluster"]
    assert not tasks["cluster"] & (tasks["encode"] | tasks["fit_codebook"])
    # no stage hashes plumbing or a package's re-exports
    assert not any(k.startswith(("idtprior.config", "idtprior.storage.workspace", "idtprior.runtime",
                                 "idtprior.testing", "idtprior.flows", "idtprior.stages.registry"))
                   or k in ("idtprior.encoding", "idtprior.models", "idtprior.video.idt")
                   for s in STAGES for k in stage_sources(s))


def test_an_edit_of_the_compiled_kernels_c_source_changes_the_idt_stages(monkeypatch):
    """The C source the extractor compiles (kernels.py names it) is part of its code: an edit there reruns its users."""
    name = "idtprior.video.idt._kernels"
    assert codeprint.module_file(name).name == "_kernels.c"
    before = {s: code_fingerprint(s) for s in STAGES}
    real = codeprint.module_source
    edited = real(name).replace("m[1] = (r4 + r5) * r6;", "m[1] = (r5 + r4) * r6;")
    assert edited != real(name)
    monkeypatch.setattr(codeprint, "module_source", lambda n: edited if n == name else real(n))
    assert {s for s in STAGES if code_fingerprint(s) != before[s]} == IDT


def test_keys_hold_the_declared_behaviour_version_not_the_code():
    from idtprior.keyscheme import legacy_keys
    from idtprior.stages import decode
    from idtprior.stages.pretrain import task as pretrain

    assert codeprint.code_key("decode") == f"decode/v{decode.BEHAVIOUR['decode']}"
    assert codeprint.code_key("decode@jpeg") == f"decode@jpeg/v{decode.BEHAVIOUR['decode@jpeg']}"
    # the training stages, the baselines' too, run one task
    assert {codeprint.code_key(s) for s in ("pretrain_ir", "tune_joint", "pretrain_la_bank", "supervised")} == {
        f"pretrain/v{pretrain.BEHAVIOUR['pretrain']}"}
    with legacy_keys():  # the upgrade: the source fingerprints keys held before behaviour versions
        assert codeprint.code_key("decode") == codeprint.pins()["decode"]["legacy_code"] == "dd565df5694a8b43"
    with pytest.raises(KeyError, match="stage 'nonexistent' has no code roots"):
        code_fingerprint("nonexistent")
    with pytest.raises(KeyError, match="stage 'nonexistent' has no code roots"):
        codeprint.code_key("nonexistent")


def fingerprints_with(monkeypatch, edits: dict[str, str]) -> dict[str, str]:
    real = codeprint.module_source
    monkeypatch.setattr(codeprint, "module_source", lambda name: edits.get(name, real(name)))
    try:
        return {s: code_fingerprint(s) for s in STAGES}
    finally:
        monkeypatch.setattr(codeprint, "module_source", real)


def reformatted(source: str) -> str:
    """``source`` laid out anew (``ast.unparse``: other line breaks, quotes, parentheses; no comments), with the first
    docstring reworded and a comment added."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            node.body[0].value.value = "Reworded. " + node.body[0].value.value
            break
    return "# a comment\n" + ast.unparse(tree) + "\n"


CODE_MODULES = sorted({k.partition(":")[0] for s in STAGES for k in stage_sources(s)} - {"idtprior.video.idt._kernels"})


@pytest.mark.parametrize("module", CODE_MODULES)
def test_any_module_laid_out_anew_with_a_reworded_docstring_moves_no_fingerprint(monkeypatch, module):
    before = {s: code_fingerprint(s) for s in STAGES}
    edited = reformatted(codeprint.module_source(module))
    assert edited != codeprint.module_source(module)
    assert fingerprints_with(monkeypatch, {module: edited}) == before


@pytest.mark.parametrize("module", ["idtprior.video.io", "idtprior.encoding.gmm", "idtprior.encoding.kmeans",
                                    "idtprior.stages.encode", "idtprior.video.idt._kernels"])
def test_comments_docstrings_and_formatting_move_no_fingerprint(monkeypatch, module):
    """The edits that reran every stage of a workspace before behaviour versions (two comments and a docstring word)
    and reformatting: the normalised fingerprints do not move, so no pin has to be touched for them."""
    before = {s: code_fingerprint(s) for s in STAGES}
    source = codeprint.module_source(module)
    if module.endswith("_kernels"):
        edited = "/* a comment */\n" + source.replace(";", " ;  // tidy\n", 3)
    else:
        tree = ast.parse(source)
        lines = source.splitlines()
        docs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(n)]
        doc = docs[0].body[0]
        lines[doc.lineno - 1] = lines[doc.lineno - 1].replace('"""', '"""Reworded. ', 1)
        edited = "# a new comment at the top\n" + "\n\n".join(lines) + "\n# and one at the end\n"
        assert ast.dump(ast.parse(edited)) != ast.dump(tree)  # the docstring did change
    assert edited != source
    assert fingerprints_with(monkeypatch, {module: edited}) == before


def test_a_function_moved_between_core_modules_moves_no_fingerprint(monkeypatch):
    """``sketch.py``'s public function moved into ``codebook.py`` (both in the code of every stage that uses it, its
    callers importing it by name)."""
    before = {s: code_fingerprint(s) for s in STAGES}
    sketch, codebook = codeprint.module_source("idtprior.encoding.sketch"), codeprint.module_source(
        "idtprior.encoding.codebook")
    tree = ast.parse(sketch)
    name = next(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = sketch.splitlines()
    moved = "\n".join(lines[node.lineno - 1 - len(node.decorator_list):node.end_lineno])
    rest = "\n".join(lines[:node.lineno - 1 - len(node.decorator_list)] + lines[node.end_lineno:])
    edits = {"idtprior.encoding.sketch": rest + f"\nfrom idtprior.encoding.codebook import {name}  # noqa\n",
             "idtprior.encoding.codebook": codebook + "\n\n" + moved + "\n"}
    after = fingerprints_with(monkeypatch, edits)
    users = {s for s in STAGES if "idtprior.encoding.sketch" in stage_sources(s)}
    assert users and all("idtprior.encoding.codebook" in stage_sources(s) for s in users)
    assert after == before


def test_the_idt_keys_hold_every_idt_params_field():
    from idtprior.config.stages import IDTConfig
    from idtprior.stages.idt import params_key
    from idtprior.video.idt import IDTParams

    key = params_key(IDTConfig(max_side=160, feature_detector="sift"))
    assert set(key) == {f.name for f in dataclasses.fields(IDTParams)}
    assert key == dataclasses.asdict(IDTParams(max_side=160, feature_detector="sift"))
    assert (key["warp_flow"], key["max_dis"], key["min_var"]) == (IDTParams.warp_flow, IDTParams.max_dis,
                                                                   IDTParams.min_var)
