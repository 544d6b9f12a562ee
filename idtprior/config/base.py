"""What every section of the config shares: ``ConfigError``, the key rules of a setting (how it enters its stage's
cache key), and ``Section``, the frozen pydantic model each section is (its ``config_hash``, ``core_params``)."""

import dataclasses
import hashlib
import json

from pydantic import BaseModel, ConfigDict

from idtprior import keyscheme


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key and the value."""


KEY_RULES = ("yes", "no", "default", "if:<field>=<value>")
"""How a setting enters its stage's cache key, declared on the field (``json_schema_extra={"key": rule}``; none:
"yes"). "no": it decides how the work runs, not what it computes (a device, a batch of independent videos); "default":
a setting added after workspaces existed, left out of the key while it has its default so their keys hold; "if:f=v":
keyed only while field ``f`` has value ``v`` (the JPEG quality with the JPEG codec)."""


def key(rule: str) -> dict:
    """``Field(..., json_schema_extra=key("no"))``: the field's key rule (``KEY_RULES``)."""
    if rule not in KEY_RULES[:3] and not (rule.startswith("if:") and "=" in rule):
        raise ValueError(f"key rule {rule!r}: expected one of {list(KEY_RULES)}")
    return {"key": rule}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """A stable hash of this section's values that change results: part of every cache key of the stage it
        configures (``key_rule`` says which)."""
        blob = json.dumps(self.model_dump(mode="json", exclude=set(self.unkeyed())), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def key_rule(cls, name: str) -> str:
        """The declared key rule of field ``name`` (``KEY_RULES``)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("key", "yes") if isinstance(extra, dict) else "yes"

    def core_params(self, cls):
        """The core's parameters (the dataclass ``cls``: ``IDTParams``, ``DetectParams``) from this section: every
        field of ``cls`` that the section declares, by name; the core's defaults for the rest. The one place a
        setting passes from the config to a core, so each is declared once (here) and checked once (by the core)."""
        names = {f.name for f in dataclasses.fields(cls)} & set(type(self).model_fields)
        return cls(**{n: getattr(self, n) for n in sorted(names)})

    def unkeyed(self) -> frozenset[str]:
        """The fields ``config_hash`` leaves out with these values, by their key rules; under the legacy key scheme
        (``idtprior.keyscheme``) without the settings that legacy keys still hashed."""
        out = set()
        for name, info in type(self).model_fields.items():
            rule = self.key_rule(name)
            if rule == "no" or (rule == "default" and getattr(self, name) == info.default):
                out.add(name)
            elif rule.startswith("if:"):
                other, _, value = rule[3:].partition("=")
                if str(getattr(self, other)) != value:
                    out.add(name)
        if keyscheme.legacy():
            out -= keyscheme.LEGACY_KEYED.get(type(self).__name__, frozenset())
        return frozenset(out)
