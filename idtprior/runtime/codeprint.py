"""Behaviour versions and code fingerprints of the stages.

A stage's cache key holds its declared BEHAVIOUR VERSION (``BEHAVIOUR`` beside its chunk task, in its stage's
module of ``idtprior.stages``),
never its source text: a comment, a docstring, a rename or a function moved to another module reruns nothing. What
keeps a version honest is the CODE FINGERPRINT, pinned per stage in ``behaviour_pins.json``: a default test fails
when the code a stage runs changes and its pin does not, and the two honest answers are ``python -m
idtprior.runtime.pins bump STAGE`` (results change: bump the version, workspaces recompute that stage and what follows)
or ``python -m idtprior.runtime.pins repin STAGE --reason ...`` (behaviour preserved: nothing reruns; the reason is kept).

A stage's code is found statically (``ast`` over the source files: nothing imported, nothing run) from its roots, the
chunk task the stage runs:

- in the stage layer (``idtprior.stages``), definition by definition: the root, and every function, class or
  constant of a stage module that it names, followed name by name. A stage module also holds the stage's plan, flow
  and pictures: a definition the chunk task does not name is not part of the stage's code;
- in the algorithm cores (``idtprior.video``, ``idtprior.encoding``, ``idtprior.models``, ``idtprior.evaluation``),
  module by module: each core module a task definition names, with every core module it imports anywhere in its
  source, transitively. A C source file a core module names and compiles (``video/idt/kernels.py``: ``"_kernels.c"``
  beside it) is part of it. Whole modules, because cores call each other through objects and methods that a static
  walk of names cannot follow.

The fingerprint is NORMALISED: each definition is hashed as its syntax tree with docstrings, comments and formatting
removed, and under its own name, not its module's, with import statements left out; so a tidy edit, and a definition
moved between modules of the closure, leave it unchanged. The C source is hashed without comments and white space.

Storage code that shapes results (``SHAPING``: ``storage/frames.py``, where frames are cut off and stored) is followed
definition by definition as the task layer is. The rest is plumbing and stays out: ``idtprior.config`` (settings are
in the keys through each stage's config hash), the rest of ``idtprior.storage``, ``idtprior.runtime`` (the chunk loop, keys,
records), the launchers (``idtprior.flows``),
and third-party packages (their versions are recorded with each result instead: ``idtprior.runtime.environment``).
"""

import ast
import copy
import hashlib
import importlib
import json
import re
import threading
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

PACKAGE = "idtprior"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CORES = ("idtprior.video", "idtprior.encoding", "idtprior.models", "idtprior.evaluation")
TASKS = "idtprior.stages"
PLUMBING: tuple[str, ...] = ()  # modules of the stage layer that are plumbing (none: runtime is outside it)
SHAPING = ("idtprior.storage.frames",)
"""Storage modules whose definitions shape results (how frames are cut off, stored and read back): followed name by
name, as the task layer is, wherever a stage's code names them."""
_C_SOURCE = re.compile(r"""["']([A-Za-z_]\w*)\.c["']""")  # a C file named in a module's source: "_kernels.c"

# The chunk task each stage runs ("module:name"); the training stages share one task.
STAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "ingest": ("idtprior.stages.ingest:ingest_chunk",),
    "decode": ("idtprior.stages.decode:decode_chunk",),
    "decode@jpeg": ("idtprior.stages.decode:decode_chunk_jpeg",),  # decode.codec: jpeg (as idt@torch below)
    "detect": ("idtprior.stages.detect:detect_chunk",),
    "idt": ("idtprior.stages.idt:idt_sample_chunk",),
    "fit_codebook": ("idtprior.stages.fit_codebook:fit_codebook_task",),
    "encode": ("idtprior.stages.encode:encode_chunk",),
    # the torch backend of IDT (idt.backend: torch) runs its own chunk tasks, with their own code: an edit of the
    # batched extractor reruns no workspace that extracts with the CPU backend, and the reverse
    "idt@torch": ("idtprior.stages.idt:idt_sample_chunk_torch",),
    "encode@torch": ("idtprior.stages.encode:encode_chunk_torch",),
    "cluster": ("idtprior.stages.cluster:cluster_task",),
    "pretrain": ("idtprior.stages.pretrain.task:train_stage_task",),
    "evaluate": ("idtprior.stages.evaluate.task:evaluate_task",),
}
STAGE_ALIASES = {"pretrain_ir": "pretrain", "pretrain_la": "pretrain", "tune_joint": "pretrain",
                 "pretrain_la_bank": "pretrain", "supervised": "pretrain"}


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` of this package; None outside it (stdlib, third-party)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    # a C source beside the modules (video/idt/_kernels.c, compiled by kernels.py) is known by its file too
    for suffix in (".py", ".c"):
        if name != PACKAGE and base.with_name(base.name + suffix).is_file():
            return base.with_name(base.name + suffix)
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def module_source(name: str) -> str:
    """The source text of module ``name``: the only place sources are read (tests replace it to simulate an edit)."""
    path = module_file(name)
    if path is None:
        raise KeyError(f"module {name!r} is not a source file of the {PACKAGE} package")
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=512)
def _parse(source: str) -> ast.Module:
    return ast.parse(source)


@dataclass
class _Module:
    name: str
    source: str
    tree: ast.Module
    defs: dict[str, ast.AST]  # top-level function, class and assigned names -> their statement
    imports: dict[str, tuple[str, str | None]]  # top-level bound name -> (module, attribute or None for a module)


def _is_package(name: str) -> bool:
    path = module_file(name)
    return path is not None and path.name == "__init__.py"


def _top_level(body: list[ast.stmt]):
    """Statements at module level, descending into if / try / with blocks but not into definitions."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _bindings(current: str, node: ast.Import | ast.ImportFrom) -> dict[str, tuple[str, str | None]]:
    """Names an import statement binds -> (absolute module, attribute or None)."""
    if isinstance(node, ast.Import):
        # `import a.b` binds `a` (the chain a.b.x is resolved where it is used); `import a.b as c` binds the module a.b
        return {(a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0], None)
                for a in node.names}
    base = node.module or ""
    if node.level:
        package = current if _is_package(current) else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    return {(a.asname or a.name): (base, a.name) for a in node.names if a.name != "*"}


def _load(name: str) -> _Module:
    return _load_source(name, module_source(name))


@lru_cache(maxsize=512)
def _load_source(name: str, source: str) -> _Module:
    """A module's definitions and imports, cached by its text (only an edited module is read again)."""
    if module_file(name).suffix == ".c":  # hashed as text; it imports nothing of the package
        return _Module(name, source, ast.Module(body=[], type_ignores=[]), {}, {})
    tree = _parse(source)
    defs: dict[str, ast.AST] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for n in ast.walk(target):
                    if isinstance(n, ast.Name):
                        defs[n.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.update(_bindings(name, node))
    return _Module(name, source, tree, defs, imports)


class _Walker:
    """One closure computation; modules are read once each."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module] = {}

    def module(self, name: str) -> _Module:
        if name not in self._modules:
            self._modules[name] = _load(name)
        return self._modules[name]

    def resolve(self, module: str, attr: str | None, depth: int = 0) -> tuple[str, str | None] | None:
        """Where ``module.attr`` is defined: (module, top-level name), or (module, None) when it is a module itself;
        None outside the package. Re-exports (a package ``__init__`` importing a name) are followed to the
        definition, so ``from idtprior.encoding import kmeans`` lands in ``encoding/kmeans.py``, not in every module
        the package imports."""
        if module_file(module) is None:
            return None
        if attr is None:
            return module, None
        info = self.module(module)
        if attr in info.defs:
            return module, attr
        if attr in info.imports and depth < 20:
            return self.resolve(*info.imports[attr], depth=depth + 1)
        if module_file(f"{module}.{attr}") is not None:
            return f"{module}.{attr}", None
        return module, None  # bound some other way: the whole module, to be safe

    def follow(self, target: tuple[str, str | None] | None, chain: list[str]) -> tuple[str, str | None] | None:
        """Resolve attribute accesses ``target.a.b`` while ``target`` is a module."""
        for attr in chain:
            if target is None or target[1] is not None:
                break
            target = self.resolve(target[0], attr)
        return target


def _kind(module: str) -> str:
    if module in PLUMBING:
        return "plumbing"
    if module.startswith(TASKS + ".") or module in SHAPING:
        return "task"
    if any(module == c or module.startswith(c + ".") for c in CORES):
        return "core"
    return "plumbing"


def _segment(info: _Module, node: ast.AST) -> str:
    """A definition's source lines, decorators included."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "\n".join(info.source.splitlines()[start - 1:node.end_lineno])


@lru_cache(maxsize=4096)
def _names_used(module: str, source: str, name: str) -> tuple[dict, tuple[tuple[str, tuple[str, ...]], ...]]:
    """What definition ``name`` of a module binds by its own imports, and the names it uses as (base name, attribute
    chain) pairs; cached by source."""
    node = _load_source(module, source).defs[name]
    local = {}
    for n in ast.walk(node):  # a function-local import binds its names inside the definition
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            local.update(_bindings(module, n))
    used = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            used.append((n.id, ()))
        elif isinstance(n, ast.Attribute):
            chain, base = [], n
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                used.append((base.id, tuple(chain[::-1])))
    return local, tuple(used)


def _references(walker: _Walker, info: _Module, name: str):
    """Targets of the names a task-layer definition uses: (module, name) definitions and (module, None) modules."""
    local, used = _names_used(info.name, info.source, name)

    def lookup(name: str):
        if name in local:
            return walker.resolve(*local[name])
        if name in info.defs:
            return info.name, name
        if name in info.imports:
            return walker.resolve(*info.imports[name])
        return None  # a local variable, a parameter or a builtin

    for base, chain in used:
        yield walker.follow(lookup(base), list(chain)) if chain else lookup(base)


@lru_cache(maxsize=512)
def _imports_anywhere(module: str, source: str) -> tuple[tuple[str, ...], tuple[tuple[str, str | None], ...]]:
    """Every import of a module, function-local ones too: the full dotted modules of ``import a.b`` and the
    (module, attribute) targets of ``from ... import``; cached by source."""
    modules, bound = [], []
    for node in ast.walk(_parse(source)):
        if isinstance(node, ast.Import):  # the full dotted module, not just the name it binds
            modules.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            bound.extend(_bindings(module, node).values())
    return tuple(modules), tuple(bound)


def stage_sources(stage: str) -> dict[str, str]:
    """Everything a stage's results depend on in this package's code: ``"module:name"`` (a task-layer definition)
    or ``"module"`` (a whole core module) -> its source text. See the module docstring for the rules."""
    roots = STAGE_ROOTS.get(STAGE_ALIASES.get(stage, stage))
    if roots is None:
        raise KeyError(f"stage {stage!r} has no code roots; known: {sorted([*STAGE_ROOTS, *STAGE_ALIASES])}")
    walker = _Walker()
    parts: dict[str, str] = {}
    todo: list[tuple[str, str | None]] = [tuple(r.split(":")) for r in roots]
    while todo:
        module, name = todo.pop()
        kind = _kind(module)
        key = module if name is None or kind == "core" else f"{module}:{name}"
        if kind == "plumbing" or key in parts:
            continue
        info = walker.module(module)
        if kind == "core":
            parts[key] = info.source
            # a C source beside the module that it names (kernels.py compiles "_kernels.c") is part of its code
            package = module if _is_package(module) else module.rpartition(".")[0]
            for stem in _C_SOURCE.findall(info.source):
                if module_file(f"{package}.{stem}") is not None:
                    todo.append((f"{package}.{stem}", None))
            is_c = module_file(module).suffix == ".c"  # a C source imports nothing of the package
            modules, bound = ((), ()) if is_c else _imports_anywhere(module, info.source)
            todo.extend((m, None) for m in modules if module_file(m) is not None)
            for target in bound:
                found = walker.resolve(*target)
                if found is not None and _kind(found[0]) == "core":
                    todo.append((found[0], None))
        elif name is not None:  # a task-layer definition
            node = info.defs.get(name)
            if node is None:
                raise KeyError(f"stage {stage}: {module} defines no {name!r} (a root or a name it uses)")
            parts[key] = _segment(info, node)
            todo.extend(t for t in _references(walker, info, name) if t is not None and t != (module, name))
        # a task module named as a whole (not one of its definitions) carries no code of its own here
    return parts


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """A copy of ``tree`` with every module, class and function docstring removed."""
    tree = copy.deepcopy(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _dump(node: ast.AST) -> str:
    return ast.dump(_without_docstrings(node), include_attributes=False)


_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_C_SPACE = re.compile(r"\s*([^\w\s])\s*")


def _normal_c(source: str) -> str:
    """C source without comments, and without white space but where it separates two words."""
    return _C_SPACE.sub(r"\1", " ".join(_C_COMMENT.sub(" ", source).split()))


@lru_cache(maxsize=512)
def _named_statements(name: str, source: str, is_c: bool) -> tuple[tuple[str, str], ...]:
    """A core module as (definition name, normalised text) pairs: imports left out (they only bind names), other
    top-level statements under their own text. Cached by source: only an edited module is normalised again."""
    if is_c:
        return ((f"{name.rpartition('.')[2]}.c", _normal_c(source)),)
    out = []
    for node in _without_docstrings(_parse(source)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            label = node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            label = ",".join(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        else:
            label = ""
        out.append((label, ast.dump(node, include_attributes=False)))
    return tuple(out)


@lru_cache(maxsize=2048)
def _normal_definition(source: str, name: str) -> str:
    node = next(n for n in _top_level(_parse(source).body)
                if getattr(n, "name", None) == name or name in _assigned(n))
    return _dump(node)


def _assigned(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def normalised_parts(stage: str) -> list[tuple[str, str]]:
    """What ``code_fingerprint`` hashes: the stage's code (``stage_sources``) as sorted (definition name, normalised
    text) pairs, with no module names."""
    walker = _Walker()
    parts = []
    for key in stage_sources(stage):
        module, _, name = key.partition(":")
        info = walker.module(module)
        if name:
            parts.append((name, _normal_definition(info.source, name)))
        else:
            parts.extend(_named_statements(module, info.source, module_file(module).suffix == ".c"))
    return sorted(parts)


_PARSING = threading.Lock()  # CPython 3.11's parser is not safe in threads ("AST constructor recursion depth mismatch")


def code_fingerprint(stage: str) -> str:
    """Hash of the stage's normalised code (``normalised_parts``), read now."""
    h = hashlib.sha256()
    with _PARSING:
        parts = normalised_parts(stage)
    for name, text in parts:
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]


def variant_of(stage: str) -> str:
    """The stage (or variant, ``decode@jpeg``) whose code a stage name runs: the training stages share ``pretrain``."""
    variant = STAGE_ALIASES.get(stage, stage)
    if variant not in STAGE_ROOTS:
        raise KeyError(f"stage {stage!r} has no code roots; known: {sorted([*STAGE_ROOTS, *STAGE_ALIASES])}")
    return variant


def behaviour_version(stage: str) -> int:
    """The behaviour version a stage declares beside its chunk task (``BEHAVIOUR`` of the root's task module)."""
    variant = variant_of(stage)
    module = importlib.import_module(STAGE_ROOTS[variant][0].split(":")[0])
    declared = getattr(module, "BEHAVIOUR", {})
    if variant not in declared:
        raise KeyError(f"{module.__name__} declares no behaviour version for {variant!r} (BEHAVIOUR: {declared})")
    return int(declared[variant])


PINS_FILE = PACKAGE_DIR / "behaviour_pins.json"


@cache
def pins() -> dict[str, dict]:
    """The pin file: per stage and variant, its ``version``, the ``fingerprint`` of its code at that version (after
    any behaviour-preserving re-pins, listed in ``repins`` with their reasons) and ``legacy_code``, the source-text
    fingerprint keys held before behaviour versions (``idtprior.runtime.keys``: workspaces made then are re-keyed)."""
    return json.loads(PINS_FILE.read_text(encoding="utf-8"))


def code_key(stage: str) -> str:
    """What a chunk key holds of a stage's code: ``<variant>/v<version>``; under the legacy scheme
    (``keyscheme.legacy_keys``), the source fingerprint keys held before behaviour versions."""
    from idtprior import keyscheme

    variant = variant_of(stage)
    if keyscheme.legacy():
        return pins()[variant]["legacy_code"]
    return f"{variant}/v{behaviour_version(variant)}"


@cache
def loaded_code(stage: str) -> str:
    """The code fingerprint of ``stage`` for this process, computed once (the first time a result of it is committed
    here): stored with each record, out of its key, so ``idtprior status`` can list the results computed by code
    re-pinned since. ``loaded_code.cache_clear()`` recomputes."""
    return code_fingerprint(variant_of(stage))
