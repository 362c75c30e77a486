"""Nodes of two versions read each other's messages (README "Upgrades and compatibility").

Every peer-facing message has a golden sample in tests/data/wire/ (built by
tests/wire_samples.py; regenerate with `.venv/bin/python tests/wire_samples.py --write` after a
wire change you meant, and commit the files). Here today's readers must:
- parse every committed sample and keep every value in it (a rename would drop one silently);
- ignore a field they do not know, at any level, and read the same message (tolerant reader),
  except in must-understand data (label requirements), which is refused;
- give a field that is missing (an older node's message) its default.
And every peer-facing model class must have a sample, so a new message cannot skip all this.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import pkgutil
import typing
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel

import p2pnode
import tickets
from p2pnode.blobs.protocol import BlobRequest
from p2pnode.gossip import wire
from p2pnode.gossip.envelope import Envelope
from p2pnode.jobs import model
from p2pnode.jobs.heartbeat import Heartbeat
from p2pnode.labels import LabelRequirement
from tests import wire_samples
from tests.wire_samples import SAMPLES, WIRE_DIR, path_of

JSON_SAMPLES = [n for n in SAMPLES if not n.startswith("ticket.") and not SAMPLES[n].binary]
MUST_UNDERSTAND = (LabelRequirement,)
"""Models that refuse unknown fields on purpose: a worker that ignored part of a requirement
would claim a job it cannot honour."""
UNKNOWN = "from_a_newer_node"

Path = tuple[str | int, ...]


def _read(name: str, raw: Any) -> Any:
    return SAMPLES[name].read(json.dumps(raw).encode())


def _golden(name: str) -> Any:
    return json.loads(path_of(name).read_bytes())


def _models(value: Any, raw: Any, path: Path = ()) -> Iterator[tuple[Path, BaseModel]]:
    """Every model inside a parsed message, with the path of its JSON object in `raw`."""
    if isinstance(value, BaseModel) and isinstance(raw, dict):
        yield path, value
        for name in type(value).model_fields:
            if name in raw:
                yield from _models(getattr(value, name), raw[name], (*path, name))
    elif isinstance(value, list | tuple) and isinstance(raw, list):
        for index, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
            yield from _models(item, raw_item, (*path, index))
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in value.items():
            if key in raw:
                yield from _models(item, raw[key], (*path, key))


def _at(raw: Any, path: Path) -> Any:
    for step in path:
        raw = raw[step]
    return raw


def _contains(whole: Any, part: Any) -> bool:
    """`part`'s every value is in `whole` (which may have more fields)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and _contains(whole[key], value) for key, value in part.items()
        )
    if isinstance(part, list):
        return (
            isinstance(whole, list)
            and len(whole) == len(part)
            and all(_contains(w, p) for w, p in zip(whole, part, strict=True))
        )
    return bool(whole == part)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_sample_parses_and_keeps_every_value(name: str) -> None:
    raw = path_of(name).read_bytes()
    message = SAMPLES[name].read(raw)
    if SAMPLES[name].binary:
        assert SAMPLES[name].encode() == raw, f"{name}: the layout moved; bump the gossip ALPN"
    elif name not in JSON_SAMPLES:
        assert tickets.encode(message) == raw.decode().strip()  # one text form per ticket
    else:
        assert _contains(message.model_dump(mode="json"), json.loads(raw)), (
            f"{name}: a field of the sample was dropped or changed; an older peer sends it"
        )


def test_every_golden_file_has_a_reader() -> None:
    """A sample file is never orphaned: an older peer may still send its message."""
    known = {path_of(name) for name in SAMPLES}
    assert sorted(set(WIRE_DIR.iterdir()) - known) == []


def _message_classes() -> set[type]:
    """Every class a peer sends as a message: models with a literal `type` (the protocols'
    frames) or their own gossip `KIND` (envelope payloads), envelopes, blob requests,
    manifests, and ticket kinds."""
    found: set[type] = {Envelope, BlobRequest, model.Manifest, *wire.WIRE_TYPES}
    for module_info in pkgutil.walk_packages(p2pnode.__path__, "p2pnode."):
        if module_info.name.endswith(".__main__"):
            continue  # runs the CLI
        module = importlib.import_module(module_info.name)
        for cls in vars(module).values():
            if not (
                inspect.isclass(cls)
                and issubclass(cls, BaseModel)
                and cls.__module__.startswith("p2pnode.")
            ):
                continue
            kind = "KIND" in vars(cls)
            type_field = cls.model_fields.get("type")
            literal = type_field is not None and typing.get_origin(type_field.annotation) is (
                typing.Literal
            )
            if kind or literal:
                found.add(cls)
    found.update(
        cls
        for cls in vars(tickets).values()
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and "PREFIX" in vars(cls)
    )
    return found


def test_every_peer_facing_model_has_a_sample() -> None:
    sampled = {type(SAMPLES[name].read(path_of(name).read_bytes())) for name in SAMPLES}
    missing = sorted(cls.__qualname__ for cls in _message_classes() - sampled)
    assert missing == [], "add a sample for each to tests/wire_samples.py and run it with --write"


@pytest.mark.parametrize("name", JSON_SAMPLES)
def test_unknown_fields_are_ignored_at_every_level(name: str) -> None:
    """As a newer node would send them: one unknown field in each object that is a model."""
    golden = _golden(name)
    expected = _read(name, golden)
    paths = [(path, type(m)) for path, m in _models(expected, golden)]
    assert paths
    for path, cls in paths:
        raw = copy.deepcopy(golden)
        _at(raw, path)[UNKNOWN] = {"nested": [1, "two"]}
        if issubclass(cls, MUST_UNDERSTAND):
            with pytest.raises(pydantic.ValidationError, match=UNKNOWN):
                _read(name, raw)
        else:
            assert _read(name, raw) == expected, f"{name} at {path}"


@pytest.mark.parametrize("name", JSON_SAMPLES)
def test_missing_optional_fields_get_their_defaults(name: str) -> None:
    """As an older node sends them: each field with a default left out in turn, at every level."""
    golden = _golden(name)
    for path, message in list(_models(_read(name, golden), golden)):
        cls = type(message)
        for field_name, field in cls.model_fields.items():
            if field.is_required() or field_name == "type" or issubclass(cls, MUST_UNDERSTAND):
                continue  # `type` picks the message; a requirement's parts are all original
            raw = copy.deepcopy(golden)
            del _at(raw, path)[field_name]
            parsed = _at_model(_read(name, raw), path)
            if field.default_factory is model.new_request_id:
                assert len(getattr(parsed, field_name)) == 32  # a fresh id
            else:
                assert getattr(parsed, field_name) == field.get_default(
                    call_default_factory=True
                ), f"{name}: {'.'.join(map(str, (*path, field_name)))}"


def _at_model(value: Any, path: Path) -> Any:
    for step in path:
        value = (
            getattr(value, step)
            if isinstance(step, str) and isinstance(value, BaseModel)
            else value[step]
        )
    return value


def test_label_requirements_are_must_understand() -> None:
    """An announcement whose job requires a label condition this version cannot read is refused
    (and the job left to workers that can), not read as a weaker condition."""
    raw = _golden("payload.job.announced")
    raw["job"]["requirements"]["labels"][0]["region"] = "eu"
    with pytest.raises(pydantic.ValidationError):
        _read("payload.job.announced", raw)


def test_heartbeat_offer_of_an_unknown_executor_kind_is_dropped() -> None:
    """A newer node lists every executor kind it has; one this version does not know must not
    make it look absent (its whole heartbeat unreadable)."""
    raw = _golden("payload.node.heartbeat")
    raw["executors"].insert(0, {"kind": "docker", "answers": True})
    heartbeat = _read("payload.node.heartbeat", raw)
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat == _read("payload.node.heartbeat", _golden("payload.node.heartbeat"))
    raw["executors"].insert(0, {"kind": "wasi", "answers": "perhaps"})
    with pytest.raises(pydantic.ValidationError):
        _read("payload.node.heartbeat", raw)  # a known kind is still checked


def test_regeneration_is_one_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(wire_samples, "WIRE_DIR", tmp_path / "wire")
    written = wire_samples.write()
    assert {p.name for p in written} == {path_of(name).name for name in SAMPLES}
    assert all(p.read_bytes() == SAMPLES[n].encode() for p, n in zip(written, SAMPLES, strict=True))


@pytest.mark.parametrize(
    ("name", "field"), [("jobs.claim_request", "instead"), ("jobs.report", "next")]
)
def test_an_unknown_executor_kind_among_alternatives_is_dropped(name: str, field: str) -> None:
    """A newer worker names every kind it runs; a claim or report naming one this version
    cannot grant must still be read (it would cost the worker its claim or the job its report)."""
    raw = _golden(name)
    raw[field].insert(0, "docker")
    assert _read(name, raw) == _read(name, _golden(name))
    raw[field].insert(0, 7)
    with pytest.raises(pydantic.ValidationError):
        _read(name, raw)  # what is not a kind at all still fails
