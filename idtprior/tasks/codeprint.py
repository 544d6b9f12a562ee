"""Code fingerprints of the stages: a stage's cache key changes when the code that computes its results changes, and
only then.

A stage's code is found statically (``ast`` over the source files: nothing imported, nothing run) from its roots, the
chunk task the stage runs:

- in the task layer (``idtprior.tasks``), definition by definition: the root, and every function, class or constant
  of a task module that it names, followed name by name. One task module can serve several stages
  (``tasks/encode.py`` holds fit_codebook, encode and cluster); hashing it whole would rerun K-means for an edit of
  the Fisher encoding;
- in the algorithm cores (``idtprior.video``, ``idtprior.encoding``, ``idtprior.models``), module by module: each core
  module a task definition names is hashed whole, with every core module it imports anywhere in its source (a
  function-local import too: ``gmm.py`` imports ``kmeans.py`` to initialise the GMM), transitively. A C source file a
  core module names and compiles (``video/idt/kernels.py``: ``"_kernels.c"`` beside it) is hashed with it. Whole modules,
  because cores call each other through objects and methods that a static walk of names cannot follow; the price is
  a rerun of a stage for an edit in a module it imports but does not call.

The rest is plumbing and stays out: ``idtprior.config`` (the settings are in the keys through each stage's config hash,
and a new field of one stage must not invalidate every other stage's results), ``idtprior.storage``,
``idtprior.tasks.common``, the flows, and third-party packages.
"""

import ast
import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

PACKAGE = "idtprior"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CORES = ("idtprior.video", "idtprior.encoding", "idtprior.models", "idtprior.evaluation")
TASKS = "idtprior.tasks"
PLUMBING = ("idtprior.tasks.common", "idtprior.tasks.codeprint")
_C_SOURCE = re.compile(r"""["']([A-Za-z_]\w*)\.c["']""")  # a C file named in a module's source: "_kernels.c"

# The chunk task each stage runs ("module:name"); the training stages share one task.
STAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "ingest": ("idtprior.tasks.ingest:ingest_chunk",),
    "decode": ("idtprior.tasks.decode:decode_chunk",),
    "decode@jpeg": ("idtprior.tasks.decode:decode_chunk_jpeg",),  # decode.codec: jpeg (as idt@torch below)
    "detect": ("idtprior.tasks.detect:detect_chunk",),
    "idt": ("idtprior.tasks.idt:idt_sample_chunk",),
    "fit_codebook": ("idtprior.tasks.encode:fit_codebook_task",),
    "encode": ("idtprior.tasks.encode:encode_chunk",),
    # the torch backend of IDT (idt.backend: torch) runs its own chunk tasks, with their own code: an edit of the
    # batched extractor reruns no workspace that extracts with the CPU backend, and the reverse
    "idt@torch": ("idtprior.tasks.idt:idt_sample_chunk_torch",),
    "encode@torch": ("idtprior.tasks.encode:encode_chunk_torch",),
    "cluster": ("idtprior.tasks.encode:cluster_task",),
    "pretrain": ("idtprior.tasks.pretrain:train_stage_task",),
    "evaluate": ("idtprior.tasks.evaluate:evaluate_task",),
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
    source = module_source(name)
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
    if module.startswith(TASKS + "."):
        return "task"
    if any(module == c or module.startswith(c + ".") for c in CORES):
        return "core"
    return "plumbing"


def _segment(info: _Module, node: ast.AST) -> str:
    """A definition's source lines, decorators included."""
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "\n".join(info.source.splitlines()[start - 1:node.end_lineno])


def _references(walker: _Walker, info: _Module, node: ast.AST):
    """Targets of the names a task-layer definition uses: (module, name) definitions and (module, None) modules."""
    local = {}
    for n in ast.walk(node):  # a function-local import binds its names inside the definition
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            local.update(_bindings(info.name, n))

    def lookup(name: str):
        if name in local:
            return walker.resolve(*local[name])
        if name in info.defs:
            return info.name, name
        if name in info.imports:
            return walker.resolve(*info.imports[name])
        return None  # a local variable, a parameter or a builtin

    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            yield lookup(n.id)
        elif isinstance(n, ast.Attribute):
            chain, base = [], n
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                yield walker.follow(lookup(base.id), chain[::-1])


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
            for node in ast.walk(info.tree):  # every import, function-local ones too
                if isinstance(node, ast.Import):  # the full dotted module, not just the name it binds
                    todo.extend((a.name, None) for a in node.names if module_file(a.name) is not None)
                elif isinstance(node, ast.ImportFrom):
                    for target in _bindings(module, node).values():
                        found = walker.resolve(*target)
                        if found is not None and _kind(found[0]) == "core":
                            todo.append((found[0], None))
        elif name is not None:  # a task-layer definition
            node = info.defs.get(name)
            if node is None:
                raise KeyError(f"stage {stage}: {module} defines no {name!r} (a root or a name it uses)")
            parts[key] = _segment(info, node)
            todo.extend(t for t in _references(walker, info, node) if t is not None and t != (module, name))
        # a task module named as a whole (not one of its definitions) carries no code of its own here
    return parts


def code_fingerprint(stage: str) -> str:
    """Hash of ``stage_sources(stage)``, read now."""
    h = hashlib.sha256()
    for key, text in sorted(stage_sources(stage).items()):
        h.update(key.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]


@cache
def stage_code(stage: str) -> str:
    """The code fingerprint of ``stage`` for this process, computed once (when its task module is imported, so it
    describes the code the process loaded, not whatever is on disk later). ``stage_code.cache_clear()`` recomputes."""
    return code_fingerprint(stage)
