"""Worker labels (`--label gpu=yes`) and the label requirements a job places on its worker
(`--require gpu=yes`, `--require arch!=arm64`, `--require ssd`).

Low in the layers (pydantic only) because settings, heartbeats, job specs and the CLI all parse
them: each parses once, with these types, at its edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

MAX_LABELS = 32
"""Labels one node may carry; a heartbeat stays small."""
MAX_REQUIREMENTS = 16
"""Label requirements one job may carry; a job summary stays small."""

LabelKey = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
]
"""1-63 characters: letters, digits and `._/-`, starting and ending with a letter or digit."""
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{0,63}$")]
"""0-63 characters: letters, digits and `._-`."""
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]

_labels: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` items as validated labels; ValueError names the first bad one."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} is not KEY=VALUE")
        if key in pairs:
            raise ValueError(f"label {key!r} given twice")
        pairs[key] = value
    return _checked(pairs)


def labels_from_env(value: object) -> object:
    """`k=v,k2=v2` (the P2PNODE_LABELS form) as labels; anything else is left to validation."""
    if isinstance(value, str):
        return parse_labels(item.strip() for item in value.split(",") if item.strip())
    return value


def _checked(pairs: Mapping[str, str]) -> dict[str, str]:
    try:
        return _labels.validate_python(dict(pairs))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = f"label {error['loc'][0]!r}: " if error["loc"] else ""
        raise ValueError(
            f"{where}keys are 1-63 of A-Z a-z 0-9 . _ / - (a letter or digit at each end), "
            f"values up to 63 of A-Z a-z 0-9 . _ -, at most {MAX_LABELS} labels"
        ) from None


class LabelRequirement(BaseModel):
    """One condition on a worker's labels: `key=value`, `key!=value` (absent counts as different)
    or bare `key` (present, any value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: LabelKey
    op: Literal["=", "!=", "present"] = "present"
    value: LabelValue | None = None

    @model_validator(mode="after")
    def _value_iff_compared(self) -> LabelRequirement:
        if (self.op == "present") != (self.value is None):
            raise ValueError("`=` and `!=` take a value; `present` takes none")
        return self

    @classmethod
    def parse(cls, text: str) -> LabelRequirement:
        """`KEY=VALUE`, `KEY!=VALUE` or `KEY`; ValueError says what is wrong."""
        key, op, value = text, "present", None
        for sep in ("!=", "="):
            if sep in text:
                key, _, value = text.partition(sep)
                op = sep
                break
        try:
            return cls.model_validate({"key": key, "op": op, "value": value})
        except ValidationError:
            raise ValueError(
                f"requirement {text!r} is not KEY=VALUE, KEY!=VALUE or KEY (keys 1-63 of "
                "A-Z a-z 0-9 . _ / -, values up to 63 of A-Z a-z 0-9 . _ -)"
            ) from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "present":
            return self.key in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value

    def __str__(self) -> str:
        return self.key if self.op == "present" else f"{self.key}{self.op}{self.value}"


def satisfies(labels: Mapping[str, str], requirements: Iterable[LabelRequirement]) -> bool:
    return all(r.matches(labels) for r in requirements)


def format_labels(labels: Mapping[str, str]) -> str:
    """`k=v,k2=v2`, the form `P2PNODE_LABELS` takes; `-` for none."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
